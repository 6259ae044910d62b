"""The audit's view of one server round (read by the report model and the per-site sections)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from privacy.audit._format import fmt_num

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
    #: why the round has no held-out evaluation (a secure sum aborted or did not decode)
    eval_unavailable: str | None = None

    def eval_text(self) -> str:
        """Return the round's held-out loss as a report cell, or why there is none."""
        if self.eval_unavailable is not None:
            return f"n/a: {self.eval_unavailable}"
        return fmt_num(self.eval_loss)
