"""A second implementation: Google's ``dp-accounting`` recomputes every example-level ε.

The project's accountants (:mod:`privacy.accounting`: Opacus' RDP, Microsoft's PRV) are
what the sites use; an audit that only reran them would share their bugs. Here each
recorded ``(q, σ, steps)`` becomes a ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
GaussianDpEvent(σ)), steps)`` and the composition is accounted twice by ``dp_accounting``
(Google's differential-privacy library, Apache-2.0):

* **RDP** (``RdpAccountant``, add-or-remove-one neighbours, as Opacus): an upper bound;
* **PLD** (``PLDAccountant``, pessimistic discretisation): a tight value, within the
  discretisation interval of the true ε of the mechanism. A stated ε more than
  :data:`PLD_RTOL` below it understates the privacy loss and is flagged red.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

from privacy.accounting import Mechanism

__all__ = ["PLD_DISCRETIZATION", "PLD_RTOL", "google_epsilons"]

logger = logging.getLogger(__name__)

#: A stated ε below ``(1 - PLD_RTOL) x`` the PLD value is an understatement.
PLD_RTOL = 0.01
#: PLD privacy-loss discretisation interval (the PLD value overshoots by at most ~this).
PLD_DISCRETIZATION = 1e-3


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Keep dp-accounting's absl log lines about dropped Rényi orders out of the audit.

    dp-accounting logs (via absl) each Rényi order it drops as not converging; the remaining
    orders still give a valid bound.
    """
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def _event(history: Sequence[Mechanism]) -> Any:
    from dp_accounting import dp_event

    merged: dict[tuple[float, float], int] = {}
    for m in history:
        if m.steps:
            key = (float(m.sample_rate), float(m.noise_multiplier))
            merged[key] = merged.get(key, 0) + int(m.steps)
    return dp_event.ComposedDpEvent([
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
        for (q, sigma), steps in merged.items()])


def google_epsilons(history: Sequence[Mechanism], *, delta: float) -> tuple[float, float]:
    """``(rdp, pld)`` ε(δ) of ``history`` from ``dp_accounting`` (``inf`` if σ = 0 anywhere).

    Raises
    ------
    ValueError
        For a bad δ or mechanism (``dp_accounting``'s own checks).
    """
    steps = [m for m in history if m.steps]
    if not steps:
        return 0.0, 0.0
    if any(m.noise_multiplier == 0.0 for m in steps):
        return math.inf, math.inf
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    event = _event(steps)
    with _quiet_absl():
        rdp = rdp_privacy_accountant.RdpAccountant()  # dp-accounting's own orders
        rdp.compose(event)
        pld = pld_privacy_accountant.PLDAccountant(
            value_discretization_interval=PLD_DISCRETIZATION)
        pld.compose(event)
        return float(rdp.get_epsilon(delta)), float(pld.get_epsilon(delta))
