"""In-process transport for tests: the ServerApp's messages go straight to the ClientApp.

:class:`LoopbackGrid` stands in for Flower's ``Grid`` (the methods the round driver uses:
``get_node_ids``, ``push_messages`` / ``pull_messages``, and ``send_and_receive``, which the
push goes through so that a test grid can tamper with one exchange there): each message is
handed to the real ClientApp with the destination node's own :class:`Context`, which persists
across messages as Flower's does. An exception in a handler
becomes an error reply, as the SuperNode would send. No model or protocol code is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from privacy.secagg import generate_identity_key, identity_private_bytes
from privacy.secagg.keys import identity_public_bytes
from protocol.io import atomic_write_bytes, atomic_write_json

__all__ = ["LoopbackGrid", "enrol", "server_identity"]


class LoopbackGrid:
    """Deliver each message to ``app`` in this process, one node context per node id."""

    def __init__(self, app: ClientApp, node_configs: Mapping[int, Mapping[str, Any]],
                 run_config: Mapping[str, Any], run_id: int = 1) -> None:
        self.app = app
        self.contexts = {n: Context(run_id=run_id, node_id=n, node_config=dict(nc),
                                    state=RecordDict(), run_config=dict(run_config))
                         for n, nc in node_configs.items()}
        self.sent: list[str] = []  # message types, in order
        self._pushed = 0
        self._replies: dict[str, Message] = {}  # message id -> its reply, not yet pulled

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver the messages now; their replies wait to be pulled by message id."""
        messages = list(messages)
        ids: dict[int, str] = {}
        for m in messages:
            self._pushed += 1
            m.metadata.__dict__["_message_id"] = ids[m.metadata.dst_node_id] = \
                f"loopback-{self._pushed}"
        for r in self.send_and_receive(messages):
            mid = ids.get(r.metadata.src_node_id)
            if mid is not None:  # a test grid may have rebuilt the message it sent
                r.metadata.__dict__["_reply_to_message_id"] = mid
                self._replies[mid] = r
        return list(ids.values())

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg.metadata.message_type)
            try:
                replies.append(self.app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception as exc:  # noqa: BLE001 - what the SuperNode reports
                replies.append(Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"),
                                       reply_to=msg))
        return replies


@contextmanager
def server_identity(run_id: int = 1) -> Iterator[None]:
    """Set the task identity Flower gives a ServerApp process (messages need it)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def enrol(state_dirs: Mapping[str, Path], enrolment: Path) -> None:
    """Write an identity key into each site's state directory, and the enrolment list."""
    from client.identity import IDENTITY_FILE

    doc = {}
    for name, state_dir in state_dirs.items():
        key = generate_identity_key()
        atomic_write_bytes(state_dir / IDENTITY_FILE, identity_private_bytes(key), mode=0o600)
        doc[name] = identity_public_bytes(key).hex()
    atomic_write_json(enrolment, doc)
