"""Recompute a site's stated ε from the parameters its ledger records, four ways.

1. **Same accountant** (:func:`privacy.accounting.epsilon`): what the site should have
   stated; the report's ε must equal it to :data:`MATCH_RTOL`.
2. **Second accountant** (:func:`privacy.accounting.independent_epsilon`): PRV (Microsoft's
   ``prv_accountant``) when the run used RDP, RDP by numerical integration of the Rényi
   moments when it used PRV; shown side by side.
3. **Tight lower bound**: the lower end of the PRV accountant's error bracket. The true ε of
   the recorded mechanism is at least this, so a stated ε *below* it understates the privacy
   loss: the report flags it in red.
4. **A second implementation**: Google's ``dp-accounting``
   (:mod:`privacy.audit.google_accounting`), RDP and PLD, shown side by side with the
   project's accountant. A stated ε more than 1% below its PLD value is flagged red: the
   PLD accountant is tight, so this catches understatements far smaller than (3) does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from privacy.accounting import PRV_EPS_ERROR, Mechanism, epsilon, independent_epsilon
from privacy.audit.google_accounting import PLD_RTOL, google_epsilons

__all__ = [
    "MATCH_RTOL",
    "Recomputation",
    "accountant_warnings_quiet",
    "prv_bounds",
    "recompute",
    "second_accountant",
]

logger = logging.getLogger(__name__)

#: Relative tolerance between a stated ε and its same-accountant recomputation.
MATCH_RTOL = 0.01


@contextlib.contextmanager
def accountant_warnings_quiet() -> Iterator[None]:
    """Silence Opacus' "optimal order is the largest alpha" inside this block only.

    An audit recomputes whatever a ledger states (a tampered line may claim any σ); the
    value at the end of the order range is still a valid upper bound.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


def second_accountant(accountant: str) -> str:
    """Name the other accountant: ``prv`` for ``rdp`` and vice versa."""
    return "prv" if accountant == "rdp" else "rdp"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def prv_bounds(history: Sequence[Mechanism], *, delta: float) -> tuple[float, float, float]:
    """``(lower, estimate, upper)`` ε of ``history`` from ``prv_accountant``.

    Returns ``(0, 0, 0)`` for an empty history and ``inf`` throughout when σ = 0 anywhere.
    """
    merged: dict[tuple[float, float], int] = {}
    for m in history:
        if m.steps:
            merged[(m.sample_rate, m.noise_multiplier)] = (
                merged.get((m.sample_rate, m.noise_multiplier), 0) + m.steps)
    if not merged:
        return 0.0, 0.0, 0.0
    if any(sigma == 0.0 for _, sigma in merged):
        return math.inf, math.inf, math.inf
    from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant

    prvs = [PoissonSubsampledGaussianMechanism(sampling_probability=q, noise_multiplier=s)
            for q, s in merged]
    steps = list(merged.values())
    acc = PRVAccountant(prvs=prvs, max_self_compositions=steps, eps_error=PRV_EPS_ERROR,
                        delta_error=delta / 1000.0)
    low, est, up = acc.compute_epsilon(delta=delta, num_self_compositions=steps)
    return max(0.0, float(low)), float(est), float(up)


@dataclass(frozen=True)
class Recomputation:
    """A stated ε next to its recomputations (None stands for ε = ∞ or not computable).

    Attributes
    ----------
    stated : float
        ε the site's ledger states after its last entry of the run.
    accountant, second : str
        The accountant the site used, and the other one.
    same : float or None
        Same-accountant recomputation from the recorded ``(q, σ, steps)``.
    relative_error : float or None
        ``|stated - same| / same`` (0 when both are 0).
    matches : bool
        ``relative_error <= MATCH_RTOL``.
    second_epsilon : float or None
        The second accountant's ε.
    tight_lower : float or None
        Lower end of the PRV bracket: the true ε is at least this.
    below_tight : bool
        The stated ε is below ``tight_lower``: the run understates its privacy loss.
    error : str or None
        Why a recomputation failed, if one did.
    google_rdp, google_pld : float or None
        ε from Google's ``dp-accounting``: its RDP accountant and its (tight) PLD one.
    below_pld : bool
        The stated ε is more than ``PLD_RTOL`` (1%) below ``google_pld``.
    google_error : str or None
        Why ``dp-accounting`` could not recompute, if it could not.
    """

    stated: float
    accountant: str
    second: str
    same: float | None
    relative_error: float | None
    matches: bool
    second_epsilon: float | None
    tight_lower: float | None
    below_tight: bool
    error: str | None = None
    google_rdp: float | None = None
    google_pld: float | None = None
    below_pld: bool = False
    google_error: str | None = None


def recompute(history: Sequence[Mechanism], *, stated: float, delta: float,
              accountant: str) -> Recomputation:
    """Recompute ``stated`` from ``history`` (every composition entry up to the last one).

    Parameters
    ----------
    history : sequence of Mechanism
        ``(q, σ, steps)`` of every trained ledger entry up to and including the last one of
        the run (earlier runs included: ε composes over the site's whole history).
    stated : float
        The ε the ledger states after that entry.
    delta : float
        δ the ledger states.
    accountant : {"rdp", "prv"}
        The accountant the ledger states.
    """
    second = second_accountant(accountant)
    try:
        with accountant_warnings_quiet():
            same = epsilon(history, delta=delta, accountant=accountant)
        low, _, upper = prv_bounds(history, delta=delta)
        # prv_bounds' upper end is independent_epsilon(..., "prv") (same package, errors)
        other = upper if second == "prv" else independent_epsilon(
            history, delta=delta, accountant=second)
    except (ValueError, ArithmeticError, RuntimeError) as exc:  # PolicyError is a ValueError
        logger.warning("recomputation failed: %s", exc)
        return Recomputation(stated, accountant, second, None, None, False, None, None, False,
                             error=str(exc))
    if same == stated:
        rel = 0.0
    elif math.isfinite(same) and same > 0:
        rel = abs(stated - same) / same
    else:
        rel = math.inf
    below = stated < low  # an infinite true ε is understated by any finite claim
    g_rdp: float | None = None
    g_pld: float | None = None
    g_error: str | None = None
    below_pld = False
    try:
        g_rdp_raw, g_pld_raw = google_epsilons(history, delta=delta)
    except (ValueError, ArithmeticError, RuntimeError, ImportError) as exc:
        logger.warning("dp-accounting recomputation failed: %s", exc)
        g_error = str(exc)
    else:
        g_rdp, g_pld = _finite(g_rdp_raw), _finite(g_pld_raw)
        below_pld = stated < (1.0 - PLD_RTOL) * g_pld_raw  # inf: any finite claim is below
    return Recomputation(
        stated=stated, accountant=accountant, second=second, same=_finite(same),
        relative_error=_finite(rel), matches=rel <= MATCH_RTOL,
        second_epsilon=_finite(other), tight_lower=_finite(low), below_tight=below,
        google_rdp=g_rdp, google_pld=g_pld, below_pld=below_pld, google_error=g_error,
    )
