"""What one secure round has established so far, handed from stage to stage.

:class:`SecureRound` is the state :class:`server.secure.SecureAggregator` passes between its
stages; :class:`RoundAborted` stops a round with the reason its participation row records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privacy.ddg import DDGParams
from privacy.secagg import ServerSession
from protocol.codec import Manifest
from protocol.ring import auto_modulus_bits, grid_scale
from protocol.secure_stats import EvalTotals
from server.site_level_dp import Admission

__all__ = ["EVALUATE", "TRAIN", "Outcome", "RoundAborted", "SecureRound", "plan_ring"]

Outcome = tuple[dict[str, np.ndarray] | None, dict[str, Any]]

#: what a secure round sums: a training input (delta + weight) or an evaluation's stats
TRAIN, EVALUATE = "train", "evaluate"


def plan_ring(*, n_sites: int, clip: float, max_weight: float, dim: int,
              bits: int = 0) -> tuple[int, float]:
    """Return the round's ring k and grid step s (without site-level DP).

    k is ``bits`` when the run asks for one (``secagg-bits``), else what the round needs
    (:func:`protocol.ring.auto_modulus_bits`: at most 32); s is the finest grid the ring
    holds for ``n_sites`` without a wrap (:func:`protocol.ring.grid_scale`).
    """
    k = bits or auto_modulus_bits(n_sites=n_sites, max_weight=max_weight, dim=dim)
    return k, grid_scale(n_sites=n_sites, clip_norm=clip, max_weight=max_weight,
                         modulus_bits=k)


class RoundAborted(Exception):
    """The round stops here; nothing is released (``reason`` goes to participation)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class SecureRound:
    """What one secure round has established so far, handed from stage to stage."""

    num: int
    state: Mapping[str, np.ndarray]
    names: dict[int, str]
    cohort: list[int]
    manifest: Manifest
    part: dict[str, Any]
    attempt: int = 0
    kind: str = TRAIN
    plan: DDGParams | None = None
    #: grid step of the round's codec (set by setup; 0 until then)
    scale: float = 0.0
    server: ServerSession | None = None
    #: nodes whose masked input the server holds (their weights are inside the sum)
    inputs: set[int] = field(default_factory=set)
    admission: Admission | None = None
    #: a training round whose inputs end in the held-out stats of the adapter sent
    #: (``evaluate-received``); their decoded totals once released
    evaluate: bool = False
    eval_totals: EvalTotals | None = None

    @property
    def session(self) -> ServerSession:
        """Return the round's server session; error if setup has not opened it yet."""
        if self.server is None:
            raise RuntimeError("secure-aggregation stage run before setup")
        return self.server
