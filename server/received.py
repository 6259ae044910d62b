"""What the coordinator received: one ``received.jsonl`` line per reply (``record-received``).

Off by default. With ``record-received = true`` in the run config (``[run]`` of
``server.toml``, or ``confide server --record-received``) the round driver appends, for
every reply it pulls, before parsing it::

    {"round": 3, "message_type": "train.secagg", "node_id": 1234,
     "records": {"config": {"kind": "ConfigRecord", "values": {"site": "bank", ...}},
                 "metrics": {"kind": "MetricRecord", "values": {"epsilon": 2.1}},
                 "secagg-arrays": {"kind": "ArrayRecord",
                                   "arrays": {"masked": {"dtype": "uint32", "shape": [9]}}}}}

Config and metric values are written in full (bytes as their length and SHA-256), arrays
only as name, dtype and shape; an error reply as ``"error": {"code", "reason"}``. It is what
a privacy officer reads to check that nothing per-site reached the coordinator in the clear.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

__all__ = ["describe_reply"]


def _value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()}
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # JSON has no NaN / inf
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v


def _record(rec: Any) -> dict[str, Any]:
    kind = type(rec).__name__
    if isinstance(rec, ArrayRecord):
        return {"kind": kind, "arrays": {str(k): {"dtype": str(a.dtype), "shape": list(a.shape)}
                                         for k, a in rec.items()}}
    if isinstance(rec, (ConfigRecord, MetricRecord)):
        return {"kind": kind, "values": {str(k): _value(v) for k, v in rec.items()}}
    keys = sorted(str(k) for k in rec) if isinstance(rec, Mapping) else []
    return {"kind": kind, "keys": keys}


def describe_reply(msg: Message, *, round_num: int) -> dict[str, Any]:
    """Return the ``received.jsonl`` line of one reply (never raises on a malformed one)."""
    row: dict[str, Any] = {"round": int(round_num)}
    try:
        row["message_type"] = str(msg.metadata.message_type)
        row["node_id"] = int(msg.metadata.src_node_id)
    except Exception as exc:  # noqa: BLE001 - a malformed reply is still recorded
        row["metadata_error"] = type(exc).__name__
    try:
        if msg.has_error():
            row["error"] = {"code": int(msg.error.code), "reason": str(msg.error.reason)}
            return row
        row["records"] = {str(name): _record(rec) for name, rec in msg.content.items()}
    except Exception as exc:  # noqa: BLE001 - the content could not be read
        row["content_error"] = type(exc).__name__
    return row
