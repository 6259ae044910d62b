"""Progress events of a run: one structured log line per stage, read back by the display.

The ServerApp's log lines stream to ``confide simulate`` and ``confide server`` through
``flwr run --stream``. :class:`ProgressGrid` wraps the run's :class:`~flwr.serverapp.Grid`
and logs, for every message exchange, one line ``progress {json}`` when the messages go out
and one each time replies come in: the round (the message's ``group_id``), the stage (its
message type), how many sites were asked and how many replied. Nothing per site is logged
(no names, no payloads): only counts. :func:`parse_event` turns such a line back into a dict.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["EVENT_TAG", "ProgressGrid", "parse_event", "stage_label"]

logger = logging.getLogger(__name__)

#: first word of an event's log message; the rest of the line is one JSON object
EVENT_TAG = "progress"

#: how each message type reads on the display
_LABELS = {
    "train": "train",
    "evaluate": "evaluate",
    "query.hello": "hello",
    "query.secagg_advertise": "secagg: keys",
    "query.secagg_share": "secagg: shares",
    "train.secagg": "train (masked)",
    "query.secagg_unmask": "secagg: unmask",
}


def stage_label(message_type: str) -> str:
    """Name a stage (a Flower message type) as the display shows it."""
    return _LABELS.get(message_type, message_type)


def parse_event(line: str) -> dict[str, Any] | None:
    """Return the event a log line carries, or ``None`` for any other line."""
    tag = f" {EVENT_TAG} {{"
    at = line.find(tag)
    if at < 0:
        return None
    try:
        doc = json.loads(line[at + len(tag) - 1:])
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or type(doc.get("round")) is not int:
        return None
    return doc


def _emit(round_num: int, stage: str, *, sites: int, replied: int) -> None:
    logger.info("%s %s", EVENT_TAG, json.dumps(
        {"round": round_num, "stage": stage, "sites": sites, "replied": replied},
        sort_keys=True))


def _round_of(msg: Message) -> int:
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        return -1


class ProgressGrid(Grid):
    """A :class:`Grid` that logs a progress event per exchange and delegates everything else."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        #: message id -> (round, message type) of the messages pushed and not yet answered
        self._pending: dict[str, tuple[int, str]] = {}
        #: (round, message type) -> [sites asked, replies seen]
        self._counts: dict[tuple[int, str], list[int]] = {}

    def set_run(self, run: Any) -> None:
        """Delegate to the wrapped grid."""
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        """The wrapped grid's run."""
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """Delegate to the wrapped grid."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self.inner.get_node_ids()

    def _sent(self, messages: list[Message]) -> list[tuple[int, str]]:
        groups: dict[tuple[int, str], int] = {}
        for m in messages:
            key = (_round_of(m), str(m.metadata.message_type))
            groups[key] = groups.get(key, 0) + 1
        for key, n in groups.items():
            self._counts[key] = [n, 0]
            _emit(key[0], key[1], sites=n, replied=0)
        return list(groups)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push, then log one event per (round, stage) sent."""
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        for m, mid in zip(messages, ids):
            self._pending[mid] = (_round_of(m), str(m.metadata.message_type))
        self._sent(messages)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull, then log one event per (round, stage) that got new replies."""
        replies = list(self.inner.pull_messages(message_ids))
        changed: set[tuple[int, str]] = set()
        for r in replies:
            key = self._pending.pop(str(r.metadata.reply_to_message_id), None)
            if key is not None and key in self._counts:
                self._counts[key][1] += 1
                changed.add(key)
        for key in sorted(changed):
            sites, replied = self._counts[key]
            _emit(key[0], key[1], sites=sites, replied=replied)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Exchange through the wrapped grid, with an event before and one after."""
        messages = list(messages)
        keys = self._sent(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        for key in keys:
            got = len(replies) if len(keys) == 1 else sum(
                1 for r in replies if (_round_of(r), str(r.metadata.message_type)) == key)
            self._counts[key][1] = got
            _emit(key[0], key[1], sites=self._counts[key][0], replied=got)
        return replies
