"""Composition of a site's DP-SGD history into ε, σ calibration, and an independent check.

A *history* is a sequence of :class:`Mechanism` entries ``(sample_rate, noise_multiplier,
steps)``: ``steps`` applications of the Poisson-subsampled Gaussian mechanism with
sampling probability ``sample_rate`` (q, exactly as sampled: expected batch / examples)
and noise multiplier σ. Order does not matter (composition is commutative).

:func:`epsilon` composes with Opacus' ``RDPAccountant`` or ``PRVAccountant`` -- we never use
the accountant a ``PrivacyEngine`` keeps (it assumes ``q = 1 / len(loader)`` and resets with
every new engine). :func:`independent_epsilon` recomputes the same quantity by other means
(numerical integration of the Rényi moments; Microsoft's ``prv_accountant`` package) so an
audit does not rest on one implementation.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from privacy.policy import (
    ACCOUNTANTS,
    PolicyError,
    check_delta,
    check_epsilon,
    check_noise_multiplier,
    check_sample_rate,
)

__all__ = [
    "PRV_EPS_ERROR",
    "RDP_ORDERS",
    "CalibrationError",
    "Mechanism",
    "as_history",
    "calibrate_noise_multiplier",
    "epsilon",
    "independent_epsilon",
]

logger = logging.getLogger(__name__)

#: Rényi orders searched by the RDP accountant (Opacus' defaults, extended upwards so
#: long, low-ε plans are not cut off at α = 63).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(12, 64)]
    + [64.0, 72.0, 80.0, 96.0, 128.0, 160.0, 192.0, 256.0]
)
#: Absolute ε error allowed in PRV composition (the upper bound is reported).
PRV_EPS_ERROR = 0.01
_SIGMA_MAX = 1e4


class CalibrationError(ValueError):
    """No noise multiplier fits the plan in the target ε (the prior history spent it)."""


class Mechanism(NamedTuple):
    """``steps`` Poisson-subsampled Gaussian steps at rate ``sample_rate`` and noise σ."""

    sample_rate: float
    noise_multiplier: float
    steps: int


def as_history(history: Iterable[Any]) -> list[Mechanism]:
    """Validate a history (tuples or :class:`Mechanism`), dropping zero-step entries."""
    out: list[Mechanism] = []
    for i, item in enumerate(history):
        try:
            q, sigma, steps = item
        except (TypeError, ValueError) as exc:
            raise PolicyError(
                f"history entry {i} must be (sample_rate, noise_multiplier, steps), got {item!r}"
            ) from exc
        q = check_sample_rate(q, f"history[{i}].sample_rate")
        sigma = check_noise_multiplier(sigma, f"history[{i}].noise_multiplier")
        if type(steps) is not int or steps < 0:
            raise PolicyError(f"`history[{i}].steps` must be an int >= 0, got {steps!r}")
        if steps:
            out.append(Mechanism(q, sigma, steps))
    return out


def _merged(history: Iterable[Any]) -> list[Mechanism]:
    """Group equal (q, σ) entries, summing steps (cheaper, same composition)."""
    steps: dict[tuple[float, float], int] = {}
    for mech in as_history(history):
        key = (mech.sample_rate, mech.noise_multiplier)
        steps[key] = steps.get(key, 0) + mech.steps
    return [Mechanism(q, s, n) for (q, s), n in steps.items()]


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise PolicyError(
            f"`accountant` must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}"
        )
    return accountant


def epsilon(history: Iterable[Any], *, delta: float, accountant: str = "rdp") -> float:
    """ε spent by ``history`` at ``delta`` (Opacus accountants).

    Parameters
    ----------
    history : iterable of (sample_rate, noise_multiplier, steps)
        Every DP-SGD step the site ever took on this data.
    delta : float
        δ of the guarantee, in (0, 1).
    accountant : {"rdp", "prv"}
        ``rdp``: Opacus ``RDPAccountant`` over :data:`RDP_ORDERS`. ``prv``: Opacus
        ``PRVAccountant`` upper bound with ``eps_error`` :data:`PRV_EPS_ERROR`.

    Returns
    -------
    float
        ε (0 for an empty history, ``inf`` if any step had σ = 0).
    """
    check_delta(delta)
    _check_accountant(accountant)
    merged = _merged(history)
    if not merged:
        return 0.0
    if any(m.noise_multiplier == 0.0 for m in merged):
        return math.inf
    return _epsilon_cached(tuple(sorted(merged)), float(delta), accountant)


@functools.lru_cache(maxsize=512)
def _epsilon_cached(merged: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    """ε of a validated, merged, sorted history (cached: plans ask for the same ones)."""
    opacus_history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in merged]
    with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore",
                                                invalid="ignore"):
        # Opacus warns when the RDP optimum is at an end of the order range (the value is
        # still a valid upper bound), and PRV's discretisation takes log(0) / overflows at
        # q = 1 or extreme domains; a NaN that results is caught below.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        if accountant == "rdp":
            from opacus.accountants import RDPAccountant

            rdp = RDPAccountant()
            rdp.history = opacus_history
            eps, _ = rdp.get_privacy_spent(delta=delta, alphas=list(RDP_ORDERS))
        else:
            from opacus.accountants import PRVAccountant

            prv = PRVAccountant()
            prv.history = opacus_history
            eps = prv.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR)
    eps = float(eps)
    if math.isnan(eps):
        # Never let a numerical failure pass as "fits the budget".
        logger.warning("%s accountant returned NaN for %s at delta=%g; treating eps as inf",
                       accountant, merged, delta)
        return math.inf
    return eps


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior_history: Iterable[Any] = (),
    accountant: str = "rdp",
    rtol: float = 1e-3,
) -> float:
    """Return the least σ (to ``rtol``) such that prior history + ``steps`` fits ``target_epsilon``.

    A bisection over σ that always returns the *noisier* end of its bracket, an end whose
    ε was computed and found ``<= target_epsilon``: the result never overshoots.

    Parameters
    ----------
    target_epsilon : float
        Total ε allowed after the new steps (including ``prior_history``).
    delta : float
        δ of the guarantee.
    sample_rate : float
        Poisson sampling probability q of the new steps.
    steps : int
        Number of new steps, >= 1.
    prior_history : iterable of (sample_rate, noise_multiplier, steps)
        Steps already taken (earlier rounds and runs).
    accountant : {"rdp", "prv"}
        Accountant used both to search and to check.
    rtol : float
        Relative width of the final bracket.

    Raises
    ------
    CalibrationError
        If even σ = 1e4 does not fit (the prior history leaves too little budget).
    """
    target = check_epsilon(target_epsilon, "target_epsilon")
    check_delta(delta)
    q = check_sample_rate(sample_rate)
    if type(steps) is not int or steps < 1:
        raise PolicyError(f"`steps` must be an int >= 1, got {steps!r}")
    if not 0.0 < rtol < 1.0:
        raise PolicyError(f"`rtol` must be in (0, 1), got {rtol!r}")
    prior = _merged(prior_history)
    spent = epsilon(prior, delta=delta, accountant=accountant)
    if spent >= target:
        raise CalibrationError(
            f"the prior history already spends eps={spent:.4g} of target {target:g}"
        )

    def eps_at(sigma: float) -> float:
        return epsilon([*prior, Mechanism(q, sigma, steps)], delta=delta, accountant=accountant)

    lo, hi = 0.0, 1.0
    while eps_at(hi) > target:
        lo, hi = hi, hi * 2.0
        if hi > _SIGMA_MAX:
            raise CalibrationError(
                f"no noise multiplier up to {_SIGMA_MAX:g} fits {steps} steps at q={q:g} "
                f"in eps={target:g} (already spent {spent:.4g})"
            )
    while hi - lo > rtol * hi and hi > 1e-6:
        mid = 0.5 * (lo + hi)
        if eps_at(mid) > target:
            lo = mid
        else:
            hi = mid
    logger.debug("calibrated sigma=%.5g for %d steps q=%.4g target eps=%g", hi, steps, q, target)
    return hi


# --------------------------------------------------------------------------------------
# Independent recomputation (for audits and tests)
# --------------------------------------------------------------------------------------


def _log_moment(q: float, sigma: float, alpha: float) -> float:
    """``log A_alpha`` of the Poisson-subsampled Gaussian, by numerical integration.

    ``A_alpha = E_{z ~ N(0, sigma^2)}[((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha]``
    (Mironov, Talwar, Zhang 2019, Sec. 3), integrated with the trapezoid rule in log space
    over ``[-16 sigma, alpha + 16 sigma]`` (where all mass of both modes lies).
    """
    if q == 1.0:
        return alpha * (alpha - 1.0) / (2.0 * sigma**2)
    lo, hi = -16.0 * sigma, alpha + 16.0 * sigma
    n = int(min(400_000, max(4001, 40.0 * (hi - lo) / sigma)))
    z, dz = np.linspace(lo, hi, n, retstep=True)
    log_mix = np.logaddexp(math.log1p(-q), math.log(q) + (2.0 * z - 1.0) / (2.0 * sigma**2))
    log_f = -(z**2) / (2.0 * sigma**2) - math.log(sigma * math.sqrt(2.0 * math.pi))
    log_f = log_f + alpha * log_mix
    weights = np.full(n, math.log(dz))
    weights[0] = weights[-1] = math.log(dz / 2.0)
    vals = log_f + weights
    top = float(np.max(vals))
    return top + math.log(float(np.sum(np.exp(vals - top))))


def _independent_rdp(history: Sequence[Mechanism], delta: float,
                     orders: Sequence[float]) -> float:
    best = math.inf
    for alpha in orders:
        rdp = sum(m.steps * _log_moment(m.sample_rate, m.noise_multiplier, alpha)
                  for m in history) / (alpha - 1.0)
        # Balle et al. 2020 (arXiv 1905.09982), Theorem 21.
        eps = rdp + math.log1p(-1.0 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1.0)
        best = min(best, eps)
    return best


def _independent_prv(history: Sequence[Mechanism], delta: float) -> float:
    from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

    prvs = [
        PoissonSubsampledGaussianMechanism(
            sampling_probability=m.sample_rate, noise_multiplier=m.noise_multiplier
        )
        for m in history
    ]
    steps = [m.steps for m in history]
    acc = PRVAccountant(prvs=prvs, max_self_compositions=steps, eps_error=PRV_EPS_ERROR,
                        delta_error=delta / 1000.0)
    _, _, upper = acc.compute_epsilon(delta=delta, num_self_compositions=steps)
    return float(upper)


def independent_epsilon(
    history: Iterable[Any],
    *,
    delta: float,
    accountant: str = "rdp",
    orders: Sequence[float] = RDP_ORDERS,
) -> float:
    """Recompute ε without Opacus' accountants, for audits and tests.

    ``rdp``: Rényi moments by numerical integration of their definition (not Opacus' series
    expansion) at ``orders``, converted with Balle et al. 2020, Thm. 21. ``prv``: the
    ``prv_accountant`` package (Gopi et al. 2021), upper bound at the same error settings.
    Agrees with :func:`epsilon` to well under 1% for the same orders / errors.
    """
    check_delta(delta)
    _check_accountant(accountant)
    merged = _merged(history)
    if not merged:
        return 0.0
    if any(m.noise_multiplier == 0.0 for m in merged):
        return math.inf
    if accountant == "rdp":
        return _independent_rdp(merged, delta, orders)
    return _independent_prv(merged, delta)
