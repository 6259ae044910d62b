"""Record codecs of the messages between the ServerApp and the ClientApp.

The names they use (record keys, fields, statuses) are defined in :mod:`protocol.wire`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocol.wire import Field, Key

__all__ = [
    "MAX_LAYOUT_BYTES",
    "PACKED_DATA",
    "PACKED_LAYOUT",
    "RecordError",
    "get_payload",
    "put_payload",
    "record_to_state",
    "reply_content",
    "state_to_record",
    "status_record",
]


def status_record(site: str, status: str, reason: str = "",
                  ledger_summary: tuple[str, str] | None = None) -> ConfigRecord:
    """Build a reply's status record (``Key.CONFIG``), with the signed ledger summary if any."""
    rec: dict[str, Any] = {Field.STATUS: status, Field.SITE: site, Field.REASON: reason}
    if ledger_summary is not None:
        rec[Field.LEDGER_SUMMARY], rec[Field.LEDGER_SIGNATURE] = ledger_summary
    return ConfigRecord(rec)


def reply_content(*, site: str, status: str, reason: str = "",
                  metrics: Mapping[str, Any] | None = None, arrays: ArrayRecord | None = None,
                  payload: Mapping[str, Any] | None = None,
                  ledger_summary: tuple[str, str] | None = None) -> RecordDict:
    """Build the content of a site's reply: status, and metrics / arrays / payload when given."""
    content = RecordDict({Key.CONFIG: status_record(site, status, reason, ledger_summary)})
    if metrics:
        content[Key.METRICS] = MetricRecord(dict(metrics))
    if arrays is not None:
        content[Key.ARRAYS] = arrays
    if payload is not None:
        put_payload(content, payload)
    return content


#: ArrayRecord keys of an adapter on the wire: every tensor in one float32 buffer, and the
#: buffer's layout (JSON, as bytes). Flower moves each Array as its own object, pulled and
#: pushed one request at a time on every hop (coordinator, SuperLink, SuperNode, ClientApp):
#: a real model's 120 LoRA tensors cost ~1.7 s a message, one buffer a few ms.
PACKED_DATA, PACKED_LAYOUT = "adapter", "adapter-layout"
#: the most layout text a record may carry
MAX_LAYOUT_BYTES = 8 << 20


class RecordError(ValueError):
    """An adapter record on the wire is malformed (the message names the key and the value)."""


def state_to_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Adapter tensors -> ArrayRecord: one float32 buffer and its layout (sorted names)."""
    names = sorted(state)
    tensors = [np.asarray(state[k], dtype=np.float32, order="C") for k in names]
    layout = json.dumps({"names": names, "shapes": [list(t.shape) for t in tensors]},
                        separators=(",", ":")).encode()
    flat = np.concatenate([t.ravel() for t in tensors]) if tensors else np.zeros(0, np.float32)
    return ArrayRecord({PACKED_DATA: Array(flat),
                        PACKED_LAYOUT: Array(np.frombuffer(layout, dtype=np.uint8).copy())})


def _layout(record: ArrayRecord) -> tuple[list[str], list[tuple[int, ...]]]:
    raw = record[PACKED_LAYOUT].numpy()
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_LAYOUT_BYTES:
        raise RecordError(f"`{PACKED_LAYOUT}` must be at most {MAX_LAYOUT_BYTES} bytes of "
                          f"uint8, got {raw.dtype} of shape {raw.shape}")
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"`{PACKED_LAYOUT}` is not JSON: {exc}") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    shapes = doc.get("shapes") if isinstance(doc, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RecordError(f"`{PACKED_LAYOUT}`.names must be a list of strings, got "
                          f"{str(names)[:200]}")
    if len(set(names)) != len(names):
        raise RecordError(f"`{PACKED_LAYOUT}`.names repeats a name")
    if not isinstance(shapes, list) or len(shapes) != len(names) or not all(
            isinstance(sh, list) and all(type(d) is int and d >= 0 for d in sh)
            for sh in shapes):
        raise RecordError(f"`{PACKED_LAYOUT}`.shapes must be one list of non-negative "
                          f"integers per name, got {str(shapes)[:200]}")
    return names, [tuple(sh) for sh in shapes]


def record_to_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> adapter tensors (numpy arrays).

    The packed form :func:`state_to_record` writes is checked (layout, sizes, float32); a
    record of one Array per tensor (dtype as sent) is read as it is. Shapes and names are
    checked against the model by the caller (``protocol.adapter.check_state``).
    """
    keys = set(record)
    if PACKED_DATA not in keys and PACKED_LAYOUT not in keys:
        return {k: record[k].numpy() for k in record}
    if keys != {PACKED_DATA, PACKED_LAYOUT}:
        raise RecordError(f"a packed adapter record holds `{PACKED_DATA}` and "
                          f"`{PACKED_LAYOUT}` only, got {sorted(keys)[:10]}")
    names, shapes = _layout(record)
    flat = record[PACKED_DATA].numpy()
    if flat.dtype != np.float32 or flat.ndim != 1:
        raise RecordError(f"`{PACKED_DATA}` must be a 1-D float32 buffer, got {flat.dtype} of "
                          f"shape {flat.shape}")
    sizes = [math.prod(sh) for sh in shapes]  # Python ints: no overflow
    if sum(sizes) != flat.size:
        raise RecordError(f"`{PACKED_LAYOUT}` describes {sum(sizes)} values, `{PACKED_DATA}` "
                          f"holds {flat.size}")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape, size in zip(names, shapes, sizes, strict=True):
        out[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return out


# --- secure-aggregation payloads ------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise TypeError(f"cannot put {type(value).__name__} in a secure-aggregation payload")


#: Payload values are ints, strs, bytes or lists of them; anything nested deeper is refused.
_MAX_DEPTH = 4
#: Largest payload text accepted (the masked vector travels in an ArrayRecord, not here).
MAX_PAYLOAD_CHARS = 64 << 20


def _from_jsonable(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("secure-aggregation payload is nested too deeply")
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ValueError("malformed secure-aggregation payload field")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:  # binascii.Error
            raise ValueError("malformed secure-aggregation payload field") from None
    if isinstance(value, list):
        return [_from_jsonable(v, depth + 1) for v in value]
    return value


def put_payload(content: RecordDict, payload: Mapping[str, Any]) -> RecordDict:
    """Store a secure-aggregation payload (bytes, ints, lists, numpy arrays) in ``content``."""
    plain = {k: _jsonable(v) for k, v in payload.items() if not isinstance(v, np.ndarray)}
    arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
    content[Key.SECAGG] = ConfigRecord({Field.PAYLOAD: json.dumps(plain, sort_keys=True)})
    if arrays:
        content[Key.SECAGG_ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                              for k, v in arrays.items()})
    return content


def get_payload(content: RecordDict) -> dict[str, Any]:
    """Inverse of :func:`put_payload`; a missing or malformed payload raises ``ValueError``."""
    if Key.SECAGG not in content:
        raise ValueError("message carries no secure-aggregation payload")
    raw: Any = content[Key.SECAGG][Field.PAYLOAD]
    if not isinstance(raw, str) or len(raw) > MAX_PAYLOAD_CHARS:
        raise ValueError("secure-aggregation payload must be a JSON string of at most 64 MiB")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"secure-aggregation payload is not JSON: {exc.msg}") from None
    except RecursionError:  # e.g. 100,000 nested brackets from a malicious peer
        raise ValueError("secure-aggregation payload is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("secure-aggregation payload must be an object")
    out = {k: _from_jsonable(v) for k, v in doc.items()}
    if Key.SECAGG_ARRAYS in content:
        rec: Any = content[Key.SECAGG_ARRAYS]
        out.update({k: rec[k].numpy() for k in rec})
    return out
