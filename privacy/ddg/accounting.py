"""Site-level ε of released aggregates: distributed discrete Gaussian and central Gaussian.

Neighbouring runs differ in one site's whole contribution: its clipped update is replaced by
zero ("zero-out" adjacency, as in DP-FedAvg and in Kairouz, Liu and Steinke 2021); the
noise the protocol adds is part of the mechanism. The aggregate is an *unweighted* sum, so
one site moves it by at most its norm bound.

Per released round, the Rényi DP at order α is

* **distributed** (KLS 2021, "The Distributed Discrete Gaussian Mechanism for Federated
  Learning with Secure Aggregation", ICML 2021, Proposition 14 / Theorem 1): ``n``
  contributors each add ``N_Z(0, σ²)^d`` (grid units) to integer vectors of L2 norm at most
  ``Δ₂`` and L1 norm at most ``Δ₁``; with ``τ = 10 Σ_{k=1}^{n-1} exp(-2π²σ² k/(k+1))``,
  ``a₂ = Δ₂ / (√n σ)``, ``a₁ = Δ₁ / (√n σ)``::

      RDP(α) = min( α/2 a₂² + τ d,
                    α/2 (a₂² + 2 a₁ τ + τ² d),
                    α/2 (a₂ + √d τ)² )

  ``n`` is the number of sites whose noised vector is actually in the sum (the survivors),
  never the number planned. The bound needs ``σ >= 1/2`` (below that no ε is claimed) and
  holds for every real order ``α >= 1``: it is a statement about one pair of output
  distributions, not a subsampled mechanism. (Google's reference accountant rounds orders
  down to integers because its *subsampled* RDP routine needs them; no amplification by
  sampling is claimed here, so fractional orders near 1, where large-ε plans have their
  optimum, are valid.)
* **central**: a trusted server adds ``N(0, σ²)`` to the sum of the rounded updates, each of
  L2 norm at most ``Δ₂ γ`` (conditional rounding on the grid; ``C`` only before rounding):
  ``RDP(α) = α Δ² / (2 σ²)`` with ``Δ = Δ₂ γ`` (Mironov 2017); ``l2_sensitivity`` holds Δ.

Rounds compose by adding RDP per order; ``(ε, δ)`` follows from Balle et al. 2020
(arXiv 1905.09982, Thm. 21), minimised over :data:`SITE_ORDERS`. No amplification by
sampling is claimed: the server picks sites with a public seeded RNG, which is not the
secret Poisson sampling the amplification theorems need.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "MODES",
    "SITE_ORDERS",
    "SiteLevelDPRound",
    "epsilon_from_rdp",
    "rdp_of_round",
    "rounded_l1_bound",
    "rounded_l2_bound",
    "site_level_epsilon",
    "tau",
]

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("distributed", "central")
#: Rényi orders searched (fine near 1, where large-ε plans have their optimum).
SITE_ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 100.0 for x in range(1, 100)]
    + [2.0 + x / 20.0 for x in range(0, 160)]
    + [float(a) for a in range(10, 64)]
    + [64.0, 80.0, 96.0, 128.0, 192.0, 256.0, 512.0, 1024.0]
)


def rounded_l2_bound(c: float, dim: int, beta: float) -> float:
    """L2 bound Δ₂ that conditional randomised rounding enforces (KLS 2021, Thm. 2 / Alg. 1).

    ``c`` is the clipped, rotated, scaled vector's norm bound in grid units; a rounded
    vector is accepted only when its norm is at most::

        min( c + √d,  sqrt(c² + d/4 + sqrt(2 ln(1/β)) (c + √d / 2)) )

    (the first always holds; the second holds for one rounding with probability >= 1 - β).
    """
    if not c >= 0 or type(dim) is not int or dim < 1 or not 0.0 < beta < 1.0:
        raise ValueError(f"rounded_l2_bound needs c >= 0, dim >= 1, beta in (0, 1); "
                         f"got c={c!r}, dim={dim!r}, beta={beta!r}")
    root = math.sqrt(dim)
    first = c + root
    second = math.sqrt(c * c + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + root / 2))
    return min(first, second)


def rounded_l1_bound(l2: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm <= ``l2``: ``min(l2², √d l2)``."""
    return min(l2 * l2, math.sqrt(dim) * l2)


def tau(local_sigma: float, contributors: int) -> float:
    """KLS 2021's τ: how far a sum of ``n`` discrete Gaussians is from one discrete Gaussian."""
    if contributors < 2 or local_sigma <= 0:
        return 0.0
    s2 = local_sigma * local_sigma
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1))
                      for k in range(1, contributors))


@dataclass(frozen=True)
class SiteLevelDPRound:
    """What the accountant needs of one released aggregate (recorded per round).

    Attributes
    ----------
    mode : {"distributed", "central"}
    contributors : int
        Sites whose update (and, distributed, whose noise) is in the released sum.
    sigma : float
        Distributed: each site's discrete Gaussian parameter, in grid units. Central: the
        server's Gaussian standard deviation, in the units of the update.
    l2_sensitivity : float
        Distributed: Δ₂ in grid units. Central: Δ₂ γ, the rounded vectors' norm bound (>= C).
    l1_sensitivity : float
        Distributed: Δ₁ in grid units (0 in central mode, unused).
    dim : int
        Number of noised coordinates (the padded dimension when distributed).
    """

    mode: str
    contributors: int
    sigma: float
    l2_sensitivity: float
    l1_sensitivity: float
    dim: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")
        if type(self.contributors) is not int or self.contributors < 1:
            raise ValueError(f"`contributors` must be an int >= 1, got {self.contributors!r}")
        for name in ("sigma", "l2_sensitivity", "l1_sensitivity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if type(self.dim) is not int or self.dim < 1:
            raise ValueError(f"`dim` must be an int >= 1, got {self.dim!r}")

    def to_mapping(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> SiteLevelDPRound:
        """Inverse of :meth:`to_mapping` (extra keys are ignored: records carry more)."""
        return cls(mode=m["mode"], contributors=m["contributors"], sigma=m["sigma"],
                   l2_sensitivity=m["l2_sensitivity"], l1_sensitivity=m["l1_sensitivity"],
                   dim=m["dim"])


def rdp_of_round(rnd: SiteLevelDPRound, alpha: float) -> float:
    """Rényi DP of one released aggregate at order ``alpha`` (see the module docstring)."""
    if rnd.sigma == 0.0:
        return math.inf
    if rnd.mode == "central":
        return alpha * rnd.l2_sensitivity**2 / (2.0 * rnd.sigma**2)
    if rnd.sigma < 0.5:  # KLS 2021, Prop. 14 needs sigma >= 1/2 (grid units): claim nothing
        return math.inf
    n = rnd.contributors
    a2 = rnd.l2_sensitivity / (math.sqrt(n) * rnd.sigma)
    a1 = rnd.l1_sensitivity / (math.sqrt(n) * rnd.sigma)
    t = tau(rnd.sigma, n)
    if t == 0.0:
        return alpha / 2.0 * a2 * a2
    d = rnd.dim
    return min(alpha / 2.0 * a2 * a2 + t * d,
               alpha / 2.0 * (a2 * a2 + 2.0 * a1 * t + t * t * d),
               alpha / 2.0 * (a2 + math.sqrt(d) * t) ** 2)


def epsilon_from_rdp(rdp: Sequence[float], orders: Sequence[float], delta: float) -> float:
    """``min_α rdp(α) + log(1 - 1/α) - (log δ + log α) / (α - 1)`` (Balle et al. 2020)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"`delta` must be in (0, 1), got {delta!r}")
    best = math.inf
    for r, a in zip(rdp, orders, strict=True):
        if math.isfinite(r):
            best = min(best, r + math.log1p(-1.0 / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return max(best, 0.0)


def site_level_epsilon(rounds: Iterable[SiteLevelDPRound], *, delta: float,
                 orders: Sequence[float] = SITE_ORDERS) -> float:
    """Site-level ε(δ) of all ``rounds`` composed (0 for none, ``inf`` if one had no noise)."""
    rounds = list(rounds)
    if not rounds:
        return 0.0
    totals = [sum(rdp_of_round(r, a) for r in rounds) for a in orders]
    return epsilon_from_rdp(totals, orders, delta)
