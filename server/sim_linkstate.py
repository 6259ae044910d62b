"""Flower's in-memory link state, made to find a node's messages without scanning all of them.

In simulation, Flower 1.39's engine (``flwr/server/superlink/fleet/vce/vce_api.py``,
``add_messages_to_queue``) asks the in-memory link state every 0.1 s, for *every* virtual node
in turn, for that node's next undelivered message; ``InMemoryLinkState.get_message_ins`` answers
by walking the whole message store, checking each stored message's expiry and federation on
the way. While a stage's messages are out, that is nodes x messages checks per sweep: measured
on 2 cores, 0.12 s per sweep at 100 sites, 0.84 s at 300 (about 9 µs a pair), so from a few
hundred sites on one of the cores does nothing else, in the very process that runs the
ServerApp and hands messages to the Ray actors.

:func:`install` replaces that method with one that keeps, per node, the ids of the messages
stored for it (in the order they were stored), so a node's question costs its own messages
only. The answer is the same: the same messages in the same order, each checked by Flower's
own ``_check_stored_messages`` before it is returned and marked delivered; messages for other
nodes are checked when they are pulled or asked for, as before. It is installed only on the
Flower line it was written against (1.39), and only in the process that holds the simulation's
link state: a deployed coordinator's ServerApp never touches this class.
"""

from __future__ import annotations

import logging
from typing import Any

from protocol.object_pulls import FLOWER_SERIES

__all__ = ["install", "installed"]

logger = logging.getLogger(__name__)

#: attribute of a link state holding its per-node index: node id -> {message id: None}
_INDEX = "_confide_node_index"
_PATCHED = "_confide_indexed"


def _index(state: Any) -> dict[int, dict[str, None]]:
    """Return the state's per-node index, built from its store on first use (under its lock)."""
    index: dict[int, dict[str, None]] | None = getattr(state, _INDEX, None)
    if index is None:
        index = {}
        for msg_id, msg in state.message_ins_store.items():
            index.setdefault(int(msg.metadata.dst_node_id), {})[msg_id] = None
        setattr(state, _INDEX, index)
    return index


def _store_message_ins(original: Any) -> Any:
    def store_message_ins(self: Any, message: Any) -> str | None:
        with self.lock:
            message_id = original(self, message)
            if message_id:
                dst = int(message.metadata.dst_node_id)
                _index(self).setdefault(dst, {})[str(message_id)] = None
        return message_id  # type: ignore[no-any-return]

    store_message_ins.__doc__ = original.__doc__
    return store_message_ins


def _get_message_ins(now: Any) -> Any:
    def get_message_ins(self: Any, node_id: int, limit: int | None, *,
                        run_id: int | None = None) -> list[Any]:
        """Get the node's messages that have not been delivered yet (Flower's semantics)."""
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found: list[Any] = []
        with self.lock:
            ids = _index(self).get(node_id, {})
            for msg_id in list(ids):
                self._check_stored_messages({msg_id})
                msg = self.message_ins_store.get(msg_id)
                if msg is None:  # delivered and answered, expired or deleted: forget it
                    del ids[msg_id]
                    continue
                if ((run_id is None or msg.metadata.run_id == run_id)
                        and msg.metadata.delivered_at == ""):
                    found.append(msg)
                if limit and len(found) == limit:
                    break
        delivered_at = now().isoformat()
        for msg in found:
            msg.metadata.delivered_at = delivered_at
        return found

    return get_message_ins


def installed() -> bool:
    """Whether :func:`install` has replaced the method in this process."""
    try:
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    except ImportError:  # pragma: no cover - another Flower layout
        return False
    return bool(getattr(InMemoryLinkState, _PATCHED, False))


def install() -> bool:
    """Index the in-memory link state's messages by node; return whether it is installed.

    Does nothing (and returns False) on a Flower other than 1.39, whose link state this was
    checked against; idempotent.
    """
    import flwr

    if not str(getattr(flwr, "__version__", "")).startswith(FLOWER_SERIES):
        logger.debug("flwr %s: the in-memory link state is left as it is",
                     getattr(flwr, "__version__", "?"))
        return False
    from flwr.server.superlink.linkstate import in_memory_linkstate as mod

    cls = mod.InMemoryLinkState
    if getattr(cls, _PATCHED, False):
        return True
    if not all(hasattr(cls, name) for name in ("get_message_ins", "store_message_ins",
                                                "_check_stored_messages")):
        return False  # pragma: no cover - not the 1.39 class
    cls.store_message_ins = _store_message_ins(cls.store_message_ins)  # type: ignore[method-assign]
    from flwr.supercore.date import now  # what the class itself stamps deliveries with

    cls.get_message_ins = _get_message_ins(now)  # type: ignore[method-assign]
    setattr(cls, _PATCHED, True)
    return True
