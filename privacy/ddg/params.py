"""Parameters of one round of the distributed discrete Gaussian, and their calibration.

Given the clip C, the delta's length, the ring Z/2^k, the number of sites that may
contribute at most (``max_contributors``), the calibration cohort ``t`` and the aggregate
noise multiplier z (noise standard deviation ``z C`` in the sum when ``t`` sites add theirs),
:func:`plan_site_level_round` picks the grid step γ so that nothing wraps mod 2^k:

* signal: each site's rounded vector has L2 norm <= Δ₂ <= C/γ + √d (conditional rounding
  enforces it), so every coordinate of the sum of ``n`` of them is at most ``n (C/γ + √d)``;
* noise: the sum of the sites' discrete Gaussians is sub-Gaussian with variance parameter
  ``n σ²`` (CKS 2020, Prop. 23), so with probability >= 1 - :data:`WRAP_BETA` no coordinate
  exceeds ``sqrt(2 ln(2 d / β_w)) √n σ`` (union bound over the d coordinates);

and the sum of both must stay below ``2^(k-2)``: half the centred range, so the server can
also *detect* a wrap (a decoded coordinate beyond the bound) and refuse the aggregate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from privacy.ddg.accounting import (
    SiteLevelDPRound,
    rounded_l1_bound,
    rounded_l2_bound,
    site_level_epsilon,
)
from privacy.ddg.rotation import padded_dim
from protocol.wire import SiteLevelDPKey

__all__ = [
    "DEFAULT_BETA",
    "MAX_BITS",
    "MIN_BITS",
    "WRAP_BETA",
    "DDGParams",
    "calibrate_site_noise",
    "plan_site_level_round",
]

logger = logging.getLogger(__name__)

#: Conditional rounding's β (KLS 2021 use e^-0.5): only sets Δ₂; the bound itself is hard.
DEFAULT_BETA = math.exp(-0.5)
#: Probability that the noise tail makes any coordinate of the sum leave the no-wrap range.
WRAP_BETA = 2.0**-40
MIN_BITS, MAX_BITS = 16, 52
_Z_MAX = 1e4


@dataclass(frozen=True)
class DDGParams:
    """Everything a site needs to encode and the server to decode one round.

    Attributes
    ----------
    clip : float
        L2 bound C on the site's delta (real units).
    dim : int
        Length of the flattened delta; ``padded`` is the next power of two.
    modulus_bits : int
        k: vectors live in Z/2^k.
    gamma : float
        Grid step: one integer unit stands for ``gamma`` in the rotated delta.
    local_sigma : float
        σ of each site's discrete Gaussian, in grid units (0: no noise).
    cohort : int
        Calibration cohort t: ``t`` surviving sites put ``t σ²`` in the sum.
    max_contributors : int
        Sites that may contribute at most (the no-wrap bound holds for that many).
    beta : float
        Conditional rounding's β.
    rotation_seed : str
        64 hex characters: the public seed of the shared rotation.
    """

    clip: float
    dim: int
    modulus_bits: int
    gamma: float
    local_sigma: float
    cohort: int
    max_contributors: int
    beta: float
    rotation_seed: str

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"`{name}` must be {rule}, got {getattr(self, name)!r}")

        if not (math.isfinite(self.clip) and self.clip > 0):
            raise bad("clip", "finite and > 0")
        if type(self.dim) is not int or self.dim < 1:
            raise bad("dim", "an int >= 1")
        if type(self.modulus_bits) is not int or not MIN_BITS <= self.modulus_bits <= MAX_BITS:
            raise bad("modulus_bits", f"an int in [{MIN_BITS}, {MAX_BITS}]")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise bad("gamma", "finite and > 0")
        if not (math.isfinite(self.local_sigma) and self.local_sigma >= 0):
            raise bad("local_sigma", "finite and >= 0")
        if type(self.cohort) is not int or self.cohort < 1:
            raise bad("cohort", "an int >= 1")
        if type(self.max_contributors) is not int or self.max_contributors < 1:
            raise bad("max_contributors", "an int >= 1")
        if not 0.0 < self.beta < 1.0:
            raise bad("beta", "in (0, 1)")
        try:
            ok = len(bytes.fromhex(self.rotation_seed)) == 32
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise bad("rotation_seed", "64 hex characters")
        if self.signal_bound() + self.noise_bound() > 2.0 ** (self.modulus_bits - 2):
            raise ValueError(
                f"Z/2^{self.modulus_bits} cannot hold {self.max_contributors} sites at "
                f"gamma={self.gamma:.3g}: raise `modulus_bits` or the grid step")

    @property
    def padded(self) -> int:
        """Noised length: the next power of two >= ``dim``."""
        return padded_dim(self.dim)

    @property
    def l2_sensitivity(self) -> float:
        """Δ₂ in grid units: the norm bound conditional rounding enforces."""
        return rounded_l2_bound(self.clip / self.gamma, self.padded, self.beta)

    @property
    def released_l2_bound(self) -> float:
        """L2 norm bound of one site's released vector in real units: ``Δ₂ γ``.

        Conditional rounding lets a vector of norm C grow to Δ₂ grid units; the rotation
        back is orthonormal, so one site moves the decoded sum by up to ``Δ₂ γ`` >= C. The
        central mode's sensitivity (its server noise covers rounded vectors, not C-clipped
        ones).
        """
        return self.l2_sensitivity * self.gamma

    @property
    def l1_sensitivity(self) -> float:
        """Δ₁ in grid units."""
        return rounded_l1_bound(self.l2_sensitivity, self.padded)

    def signal_bound(self) -> float:
        """Max |coordinate| of the sum of ``max_contributors`` rounded vectors (grid units)."""
        return self.max_contributors * self.l2_sensitivity

    def noise_bound(self) -> float:
        """|coordinate| of the summed noise is below this with prob >= 1 - WRAP_BETA."""
        tail = math.sqrt(2.0 * math.log(2.0 * self.padded / WRAP_BETA))
        return tail * math.sqrt(self.max_contributors) * self.local_sigma + 1.0

    def aggregate_noise_variance(self, contributors: int) -> float:
        """Per-coordinate variance parameter of the noise in the sum, real units."""
        return contributors * (self.local_sigma * self.gamma) ** 2

    def round_record(self, contributors: int) -> SiteLevelDPRound:
        """Return the accountant's view of a round in which ``contributors`` sites are summed."""
        return SiteLevelDPRound(mode="distributed", contributors=contributors,
                           sigma=self.local_sigma, l2_sensitivity=self.l2_sensitivity,
                           l1_sensitivity=self.l1_sensitivity, dim=self.padded)

    def to_config(self) -> dict[str, Any]:
        """Kebab-case keys for the round's ConfigRecord (all bool-free scalars)."""
        return {SiteLevelDPKey.CLIP: self.clip, SiteLevelDPKey.DIM: self.dim,
                SiteLevelDPKey.BITS: self.modulus_bits, SiteLevelDPKey.GAMMA: self.gamma,
                SiteLevelDPKey.LOCAL_SIGMA: self.local_sigma, SiteLevelDPKey.COHORT: self.cohort,
                SiteLevelDPKey.MAX_CONTRIBUTORS: self.max_contributors,
                SiteLevelDPKey.BETA: self.beta, SiteLevelDPKey.ROTATION_SEED: self.rotation_seed}

    @classmethod
    def from_config(cls, cfg: Any) -> DDGParams:
        """Parse :meth:`to_config` output (a ConfigRecord or mapping); validated."""
        try:
            return cls(clip=float(cfg[SiteLevelDPKey.CLIP]), dim=int(cfg[SiteLevelDPKey.DIM]),
                       modulus_bits=int(cfg[SiteLevelDPKey.BITS]),
                       gamma=float(cfg[SiteLevelDPKey.GAMMA]),
                       local_sigma=float(cfg[SiteLevelDPKey.LOCAL_SIGMA]),
                       cohort=int(cfg[SiteLevelDPKey.COHORT]),
                       max_contributors=int(cfg[SiteLevelDPKey.MAX_CONTRIBUTORS]),
                       beta=float(cfg[SiteLevelDPKey.BETA]),
                       rotation_seed=str(cfg[SiteLevelDPKey.ROTATION_SEED]))
        except KeyError as exc:
            raise ValueError(f"site-level-DP round config lacks {exc}") from None


def plan_site_level_round(*, clip: float, dim: int, modulus_bits: int,
                          noise_multiplier: float, cohort: int, max_contributors: int,
                          rotation_seed: str, beta: float = DEFAULT_BETA) -> DDGParams:
    """Return the finest grid for which ``max_contributors`` sites cannot wrap mod 2^k.

    ``noise_multiplier`` z: the sum of ``cohort`` sites' noise has standard deviation
    ``z * clip`` per coordinate (real units); each site adds ``(z clip / γ)² / cohort``.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"`noise_multiplier` must be finite and >= 0, got {noise_multiplier!r}")
    if type(max_contributors) is not int or type(cohort) is not int or cohort < 1 or \
            max_contributors < cohort:
        raise ValueError(f"need 1 <= cohort <= max_contributors, got cohort={cohort!r}, "
                         f"max_contributors={max_contributors!r}")
    d = padded_dim(dim)
    n = max_contributors
    tail = math.sqrt(2.0 * math.log(2.0 * d / WRAP_BETA))
    room = 2.0 ** (modulus_bits - 2) - n * math.sqrt(d) - 2.0
    if room < 2.0 ** (modulus_bits - 3):
        raise ValueError(f"`modulus_bits` {modulus_bits} is too small for {n} sites of "
                         f"dimension {d}")
    numerator = n * clip + math.sqrt(n / cohort) * noise_multiplier * clip * tail
    gamma = numerator / room
    local = noise_multiplier * clip / gamma / math.sqrt(cohort)
    return DDGParams(clip=clip, dim=dim, modulus_bits=modulus_bits, gamma=gamma,
                     local_sigma=local, cohort=cohort, max_contributors=n, beta=beta,
                     rotation_seed=rotation_seed)


def calibrate_site_noise(*, target_epsilon: float, delta: float, rounds: int, mode: str,
                         clip: float = 1.0, dim: int = 1, modulus_bits: int = 32,
                         cohort: int = 1, max_contributors: int | None = None,
                         prior: list[SiteLevelDPRound] | None = None, rtol: float = 1e-3) -> float:
    """Return the smallest noise multiplier z (to ``rtol``) whose ``rounds`` rounds fit the budget.

    Each planned round is assumed to sum exactly ``cohort`` sites (fewer survivors are
    accounted when they happen). Bisection returning the noisier end: the result never
    overshoots ``target_epsilon``.

    Raises
    ------
    ValueError
        If even z = 1e4 does not fit (``prior`` spent the budget) or an argument is bad.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"`site_level_epsilon` must be > 0, got {target_epsilon!r}")
    if type(rounds) is not int or rounds < 1:
        raise ValueError(f"`rounds` must be an int >= 1, got {rounds!r}")
    prior = list(prior or [])
    seed = "00" * 32
    n_max = max_contributors if max_contributors is not None else cohort

    def eps_at(z: float) -> float:
        if mode == "central":  # the server's noise covers rounded vectors: Δ₂ γ, not C
            bound = plan_site_level_round(clip=clip, dim=dim, modulus_bits=modulus_bits,
                                          noise_multiplier=0.0, cohort=cohort,
                                          max_contributors=n_max,
                                          rotation_seed=seed).released_l2_bound
            rec = SiteLevelDPRound("central", cohort, z * clip, bound, 0.0, max(dim, 1))
        else:
            rec = plan_site_level_round(clip=clip, dim=dim, modulus_bits=modulus_bits,
                                        noise_multiplier=z, cohort=cohort,
                                        max_contributors=n_max,
                                        rotation_seed=seed).round_record(cohort)
        return site_level_epsilon(prior + [rec] * rounds, delta=delta)

    lo, hi = 0.0, 1.0
    while eps_at(hi) > target_epsilon:
        lo, hi = hi, hi * 2.0
        if hi > _Z_MAX:
            raise ValueError(f"no noise multiplier up to {_Z_MAX:g} fits {rounds} rounds in "
                             f"site epsilon {target_epsilon:g}")
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps_at(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
