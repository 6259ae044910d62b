"""The audit's view of one server round (read by the report model and the per-site sections)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["AggregateRound"]


@dataclass(frozen=True)
class AggregateRound:
    """One server round: who was in the (secure) aggregate and whether it was released."""

    round: int
    sampled: tuple[str, ...]
    contributed: tuple[str, ...]
    declined: Mapping[str, str]
    failed: Mapping[str, str]
    dropped: tuple[str, ...]
    threshold: int | None
    released: bool | None
    eval_loss: float | None
    eval_perplexity: float | None
