"""The site's enforcement decision: train this round under which σ, or decline and why.

The server only *asks* (local steps, batch size, optionally a σ or "no DP"); the site decides
from its own :class:`~privacy.policy.SitePrivacyPolicy` and ledger history:

* DP off, or a requested σ below the policy's ``min_noise_multiplier``:
  decline ``dp-weaker-than-policy``.
* σ used = the largest of the policy's σ (fixed, or calibrated once per run so that the
  planned rounds x local steps fit the budget), the requested σ and the floor -- the site
  may add more noise than asked, never less than its policy.
* If ε after the round (whole ledger history + this round) would exceed the budget:
  decline ``budget-exhausted``. Otherwise return a :class:`RoundPlan`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from privacy.accounting import CalibrationError, Mechanism, calibrate_noise_multiplier, epsilon
from privacy.policy import PolicyError, SitePrivacyPolicy, check_noise_multiplier
from protocol.wire import Reason

__all__ = [
    "BUDGET_EXHAUSTED",
    "DP_WEAKER_THAN_POLICY",
    "Decline",
    "RoundPlan",
    "calibrate_plan",
    "plan_round",
    "sample_rate_for",
]

logger = logging.getLogger(__name__)

#: decline reasons (they travel to the coordinator; defined in protocol.wire)
BUDGET_EXHAUSTED = Reason.BUDGET_EXHAUSTED
DP_WEAKER_THAN_POLICY = Reason.DP_WEAKER_THAN_POLICY


@dataclass(frozen=True)
class RoundPlan:
    """What the site will do this round: train with these DP parameters.

    ``epsilon_after`` is the projected total ε (all history + this round); it is what the
    ledger entry records once the round has trained.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon_before: float
    epsilon_after: float
    budget_epsilon: float

    @property
    def mechanism(self) -> Mechanism:
        """The round as an accountant history entry."""
        return Mechanism(self.sample_rate, self.noise_multiplier, self.steps)

    def summary(self) -> str:
        """One log line."""
        return (f"sigma={self.noise_multiplier:.4g} q={self.sample_rate:.4g} "
                f"steps={self.steps} C={self.max_grad_norm:g} delta={self.delta:.3g} "
                f"eps {self.epsilon_before:.4g} -> {self.epsilon_after:.4g} "
                f"of {self.budget_epsilon:g} ({self.accountant})")


@dataclass(frozen=True)
class Decline:
    """The site will not train this round; ``reason`` is a stable machine-readable code."""

    reason: str
    detail: str
    epsilon_spent: float
    delta: float
    accountant: str

    def __post_init__(self) -> None:
        if self.reason not in (BUDGET_EXHAUSTED, DP_WEAKER_THAN_POLICY):
            raise ValueError(f"`reason` must be {BUDGET_EXHAUSTED!r} or "
                             f"{DP_WEAKER_THAN_POLICY!r}, got {self.reason!r}")


def sample_rate_for(*, batch_size: int, num_examples: int) -> float:
    """Poisson sampling rate ``q = expected batch / examples``, capped at 1.

    The same q drives the sampler and the accountant (never Opacus' ``1 / len(loader)``).
    """
    if type(batch_size) is not int or batch_size < 1:
        raise PolicyError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
    if type(num_examples) is not int or num_examples < 1:
        raise PolicyError(f"`num_examples` must be an int >= 1, got {num_examples!r}")
    if batch_size > num_examples:
        logger.warning("batch size %d > %d examples: sampling every example each step (q=1)",
                       batch_size, num_examples)
        return 1.0
    return batch_size / num_examples


def calibrate_plan(
    policy: SitePrivacyPolicy,
    *,
    prior_history: Iterable[Any],
    num_examples: int,
    batch_size: int,
    local_steps: int,
    planned_rounds: int,
) -> float:
    """σ for a whole run: ``planned_rounds x local_steps`` steps fit what is left of the budget.

    Call with the history from *before* this run (``ledger.history(exclude_run=run_id)``) so
    every round of the run gets the same σ. The result is never below the policy floor.

    Raises
    ------
    CalibrationError
        If the prior history leaves no room for the plan.
    """
    if type(planned_rounds) is not int or planned_rounds < 1:
        raise PolicyError(f"`planned_rounds` must be an int >= 1, got {planned_rounds!r}")
    if type(local_steps) is not int or local_steps < 1:
        raise PolicyError(f"`local_steps` must be an int >= 1, got {local_steps!r}")
    sigma = calibrate_noise_multiplier(
        target_epsilon=policy.budget_epsilon,
        delta=policy.resolve_delta(num_examples),
        sample_rate=sample_rate_for(batch_size=batch_size, num_examples=num_examples),
        steps=planned_rounds * local_steps,
        prior_history=list(prior_history),
        accountant=policy.accountant,
    )
    return max(sigma, policy.min_noise_multiplier)


def plan_round(
    policy: SitePrivacyPolicy,
    *,
    history: Iterable[Any],
    num_examples: int,
    batch_size: int,
    local_steps: int,
    requested_noise_multiplier: float | None = None,
    dp_enabled: bool = True,
    planned_rounds: int | None = None,
    prior_history: Iterable[Any] | None = None,
    calibrated_noise_multiplier: float | None = None,
) -> RoundPlan | Decline:
    """Decide whether and how to train one round.

    Parameters
    ----------
    policy : SitePrivacyPolicy
        The site's own policy.
    history : iterable of (sample_rate, noise_multiplier, steps)
        Everything the ledger holds (``ledger.history()``), all runs.
    num_examples : int
        Training examples at the site (privacy units).
    batch_size, local_steps : int
        The server's request: expected batch size and DP-SGD steps this round.
    requested_noise_multiplier : float, optional
        σ the server asks for; ``None`` leaves σ to the site.
    dp_enabled : bool
        ``False`` when the server asks for non-private training (always declined).
    planned_rounds : int, optional
        Rounds in this run; needed when the policy calibrates σ and no
        ``calibrated_noise_multiplier`` is given.
    prior_history : iterable, optional
        History before this run (``ledger.history(exclude_run=run_id)``), for calibration;
        defaults to ``history``.
    calibrated_noise_multiplier : float, optional
        A σ already calibrated for this run by :func:`calibrate_plan` (cached by the caller).

    Returns
    -------
    RoundPlan or Decline
    """
    if type(dp_enabled) is not bool:
        raise PolicyError(f"`dp_enabled` must be true or false, got {dp_enabled!r}")
    if type(local_steps) is not int or local_steps < 1:
        raise PolicyError(f"`local_steps` must be an int >= 1, got {local_steps!r}")
    past = list(history)
    delta = policy.resolve_delta(num_examples)
    spent = epsilon(past, delta=delta, accountant=policy.accountant)

    def decline(reason: str, detail: str) -> Decline:
        logger.warning("declining round: %s (%s); eps spent %.4g of %g", reason, detail,
                       spent, policy.budget_epsilon)
        return Decline(reason, detail, spent, delta, policy.accountant)

    if not dp_enabled:
        return decline(DP_WEAKER_THAN_POLICY, "the round asks for training without DP")
    if requested_noise_multiplier is not None:
        requested = check_noise_multiplier(requested_noise_multiplier,
                                           "requested_noise_multiplier")
        if requested < policy.min_noise_multiplier:
            return decline(DP_WEAKER_THAN_POLICY,
                           f"requested noise multiplier {requested:g} is below the policy "
                           f"floor {policy.min_noise_multiplier:g}")
    else:
        requested = 0.0
    q = sample_rate_for(batch_size=batch_size, num_examples=num_examples)

    if policy.noise_multiplier is not None:
        sigma = policy.noise_multiplier
    elif calibrated_noise_multiplier is not None:
        sigma = check_noise_multiplier(calibrated_noise_multiplier,
                                       "calibrated_noise_multiplier")
    else:
        if planned_rounds is None:
            raise PolicyError("the policy calibrates sigma: `planned_rounds` (or a "
                              "`calibrated_noise_multiplier`) is required")
        try:
            sigma = calibrate_plan(
                policy, prior_history=past if prior_history is None else prior_history,
                num_examples=num_examples, batch_size=batch_size, local_steps=local_steps,
                planned_rounds=planned_rounds,
            )
        except CalibrationError as exc:
            return decline(BUDGET_EXHAUSTED, str(exc))
    sigma = max(sigma, requested, policy.min_noise_multiplier)
    if sigma == 0.0:
        return decline(DP_WEAKER_THAN_POLICY, "noise multiplier 0 gives no privacy")

    after = epsilon([*past, Mechanism(q, sigma, local_steps)], delta=delta,
                    accountant=policy.accountant)
    if not math.isfinite(after) or after > policy.budget_epsilon:
        return decline(BUDGET_EXHAUSTED,
                       f"this round would take eps from {spent:.4g} to {after:.4g}, past the "
                       f"budget {policy.budget_epsilon:g}")
    plan = RoundPlan(
        noise_multiplier=sigma, sample_rate=q, steps=local_steps,
        max_grad_norm=policy.max_grad_norm, delta=delta, accountant=policy.accountant,
        epsilon_before=spent, epsilon_after=after, budget_epsilon=policy.budget_epsilon,
    )
    logger.info("round plan: %s", plan.summary())
    return plan
