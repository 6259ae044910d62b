"""Plain (unmasked) example-weighted aggregation of adapter deltas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protocol.adapter import AdapterError

__all__ = ["apply_delta", "weighted_mean"]


def weighted_mean(
    deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """``sum_i w_i * delta_i / sum_i w_i`` per tensor (float64 accumulation)."""
    if not deltas:
        raise AdapterError("nothing to aggregate")
    if len(deltas) != len(weights):
        raise AdapterError(f"{len(deltas)} deltas but {len(weights)} weights")
    if any(w <= 0 for w in weights):
        raise AdapterError(f"weights must be > 0, got {list(weights)}")
    keys = sorted(deltas[0])
    for d in deltas[1:]:
        if sorted(d) != keys:
            raise AdapterError("deltas do not share the same tensor names")
    total = float(sum(weights))
    out: dict[str, np.ndarray] = {}
    for k in keys:
        acc = np.zeros(deltas[0][k].shape, dtype=np.float64)
        for d, w in zip(deltas, weights):
            acc += float(w) * d[k].astype(np.float64)
        out[k] = (acc / total).astype(np.float32)
    return out


def apply_delta(
    state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Return the new global adapter: ``state + delta`` on the tensors ``delta`` names."""
    unknown = sorted(set(delta) - set(state))
    if unknown:
        raise AdapterError(f"aggregate names tensors the adapter does not have: {unknown[:5]}")
    out = {k: v.copy() for k, v in state.items()}
    for k, d in delta.items():
        out[k] = (state[k].astype(np.float32) + d.astype(np.float32)).astype(np.float32)
    return out
