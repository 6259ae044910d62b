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
from server.site_level_dp import Admission

__all__ = ["EVALUATE", "SCALE_BITS", "TRAIN", "Outcome", "RoundAborted", "SecureRound",
           "codec_scale"]


#: One site's clipped, weighted delta spans 2^SCALE_BITS grid steps per coordinate.
SCALE_BITS = 40

Outcome = tuple[dict[str, np.ndarray] | None, dict[str, Any]]

#: what a secure round sums: a training input (delta + weight) or an evaluation's stats
TRAIN, EVALUATE = "train", "evaluate"


def codec_scale(clip: float, max_weight: float) -> float:
    """Grid step: a site's clipped, weighted coordinate spans 2^SCALE_BITS steps."""
    return clip * max_weight / float(1 << SCALE_BITS)


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
    server: ServerSession | None = None
    #: nodes whose masked input the server holds (their weights are inside the sum)
    inputs: set[int] = field(default_factory=set)
    admission: Admission | None = None

    @property
    def session(self) -> ServerSession:
        """Return the round's server session; error if setup has not opened it yet."""
        if self.server is None:
            raise RuntimeError("secure-aggregation stage run before setup")
        return self.server
