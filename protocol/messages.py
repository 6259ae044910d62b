"""Message kinds and record keys exchanged between the ServerApp and the ClientApp."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = [
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "PROTOCOL_VERSION",
    "STATUS_DECLINED",
    "STATUS_OK",
    "record_to_state",
    "state_to_record",
]

PROTOCOL_VERSION = 1

# RecordDict keys
ARRAYS = "arrays"  # ArrayRecord: global adapter (to sites) or adapter delta (from sites)
CONFIG = "config"  # ConfigRecord: the round's instructions, or a site's status reply
METRICS = "metrics"  # MetricRecord: num-examples, losses, epsilon

STATUS_OK = "ok"
STATUS_DECLINED = "declined"


def state_to_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Adapter tensors -> ArrayRecord (sorted names, float32)."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(state[k], dtype=np.float32)) for k in sorted(state)}
    )


def record_to_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> adapter tensors (numpy arrays, dtype as sent)."""
    return {k: record[k].numpy() for k in record}
