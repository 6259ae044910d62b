"""What a site's reply holds, parsed once: :class:`SiteReply` and :func:`parse_reply`.

:func:`parse_reply` never raises: a malformed reply (an error in its records, a metric of the
wrong type, a payload nested too deep or too large) becomes a failed reply with a reason
naming what was wrong, so one site can drop out of a round but never fail the run.
:func:`content_bytes` counts the payload bytes a reply carries (the metrics' ``bytes_received``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message

from protocol.messages import get_payload, record_to_state
from protocol.wire import Field, Key, Metric, Reason, Status

__all__ = ["SiteReply", "content_bytes", "parse_reply"]


@dataclass
class SiteReply:
    """One site's answer to a train or evaluate message."""

    node_id: int
    site: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = None
    reason: str = ""
    payload: dict[str, Any] | None = None
    #: the site's signed ledger summary ``(JSON, hex signature)``, when it sent one
    ledger_summary: tuple[str, str] | None = None


#: metrics that count something: an int >= 0; every other metric is a finite number
_COUNTS = (Metric.NUM_EXAMPLES, Metric.NUM_TOKENS, Metric.STEPS)
_MAX_REASON = 600


def _metrics_problem(metrics: Mapping[str, Any]) -> str | None:
    """Say what is wrong with a reply's metrics, or return None."""
    for key, value in metrics.items():
        if key in _COUNTS:
            if type(value) is not int or value < 0:
                return f"metric `{key}` must be an integer >= 0, got {value!r:.80}"
        elif (not isinstance(value, (int, float)) or isinstance(value, bool)
              or not math.isfinite(value)):
            return f"metric `{key}` must be a finite number, got {value!r:.80}"
    return None


def _parse(msg: Message) -> SiteReply:
    node = int(msg.metadata.src_node_id)
    if msg.has_error():
        return SiteReply(node, f"node-{node}", Status.FAILED,
                         reason=str(msg.error.reason)[-_MAX_REASON:])
    content = msg.content
    status: Any = content.get(Key.CONFIG, {})
    site = status.get(Field.SITE, f"node-{node}")
    if not isinstance(site, str):
        return SiteReply(node, f"node-{node}", Status.FAILED,
                         reason=f"{Reason.MALFORMED_REPLY}: `{Field.SITE}` is not a string")
    metrics = dict(content[Key.METRICS]) if Key.METRICS in content else {}
    problem = _metrics_problem(metrics)
    if problem is not None:
        return SiteReply(node, site, Status.FAILED, reason=f"{Reason.MALFORMED_REPLY}: {problem}")
    arrays = record_to_state(content.array_records[Key.ARRAYS]) \
        if Key.ARRAYS in content.array_records else None
    payload = None
    if Key.SECAGG in content:
        try:
            payload = get_payload(content)
        except ValueError as exc:
            return SiteReply(node, site, Status.FAILED,
                             reason=f"malformed secure-aggregation payload: {exc}")
    summary = None
    if Field.LEDGER_SUMMARY in status and Field.LEDGER_SIGNATURE in status:
        summary = (str(status[Field.LEDGER_SUMMARY]), str(status[Field.LEDGER_SIGNATURE]))
    return SiteReply(node, site, str(status.get(Field.STATUS, "")), metrics, arrays,
                     str(status.get(Field.REASON, ""))[:_MAX_REASON], payload, summary)


def parse_reply(msg: Message) -> SiteReply:
    """Parse a site's reply as a :class:`SiteReply`.

    A malformed reply is a failed one, never an exception (the reason names the error's type
    and message).
    """
    try:
        return _parse(msg)
    except Exception as exc:  # noqa: BLE001 - whatever a site sent, the run goes on
        try:
            node = int(msg.metadata.src_node_id)
        except Exception:  # noqa: BLE001
            node = -1
        return SiteReply(node, f"node-{node}", Status.FAILED,
                         reason=f"{Reason.MALFORMED_REPLY} ({type(exc).__name__}: "
                                f"{str(exc)[:200]})")


def content_bytes(msg: Message) -> int:
    """Payload bytes a reply carries: tensor data plus string / bytes config values."""
    if msg.has_error():
        return 0
    total = 0
    for rec in msg.content.values():
        for value in rec.values():
            data = getattr(value, "data", None)
            if isinstance(data, bytes):  # an Array
                total += len(data)
            elif isinstance(value, (bytes, str)):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in value)
            else:
                total += 8
    return total
