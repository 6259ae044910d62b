"""The site's enforcement decision: plans never exceed the budget; weaker DP is declined."""

from __future__ import annotations

from pathlib import Path

import pytest

from privacy.accounting import Mechanism, epsilon, independent_epsilon
from privacy.budget import (
    BUDGET_EXHAUSTED,
    DP_WEAKER_THAN_POLICY,
    Decline,
    RoundPlan,
    calibrate_plan,
    plan_round,
    sample_rate_for,
)
from privacy.ledger import PrivacyLedger
from privacy.policy import PolicyError, SitePrivacyPolicy


def _run(policy: SitePrivacyPolicy, ledger: PrivacyLedger, *, run_id: str, rounds: int,
         num_examples: int, batch_size: int, local_steps: int) -> list[RoundPlan | Decline]:
    """Do what a site does each round: plan, then ledger (trained or declined)."""
    outcomes: list[RoundPlan | Decline] = []
    sigma = None
    if policy.calibrates:
        sigma = calibrate_plan(policy, prior_history=ledger.history(exclude_run=run_id),
                               num_examples=num_examples, batch_size=batch_size,
                               local_steps=local_steps, planned_rounds=rounds)
    for rnd in range(1, rounds + 1):
        out = plan_round(policy, history=ledger.history(), num_examples=num_examples,
                         batch_size=batch_size, local_steps=local_steps,
                         calibrated_noise_multiplier=sigma)
        if isinstance(out, RoundPlan):
            ledger.record_round(run_id=run_id, round=rnd, steps=out.steps,
                                sample_rate=out.sample_rate,
                                noise_multiplier=out.noise_multiplier,
                                max_grad_norm=out.max_grad_norm, accountant=out.accountant,
                                delta=out.delta, epsilon_after=out.epsilon_after)
        else:
            ledger.record_decline(run_id=run_id, round=rnd, reason=out.reason,
                                  accountant=out.accountant, delta=out.delta,
                                  epsilon_after=out.epsilon_spent)
        outcomes.append(out)
    return outcomes


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_budget_one_over_twenty_rounds_never_exceeded_and_later_rounds_declined(
        tmp_path: Path, accountant: str) -> None:
    policy = SitePrivacyPolicy(budget_epsilon=1.0, noise_multiplier=1.5, accountant=accountant)
    sites = {"small": 400, "medium": 1_000, "large": 5_000}
    for name, n in sites.items():
        ledger = PrivacyLedger(tmp_path / name)
        outcomes = _run(policy, ledger, run_id="run-1", rounds=20, num_examples=n,
                        batch_size=16, local_steps=10)
        trained = [o for o in outcomes if isinstance(o, RoundPlan)]
        declined = [o for o in outcomes if isinstance(o, Decline)]
        delta = policy.resolve_delta(n)
        final = epsilon(ledger.history(), delta=delta, accountant=accountant)
        assert final <= 1.0
        assert final == pytest.approx(ledger.entries[-1].epsilon_after, rel=1e-9)
        assert trained, name
        # once out of budget, the site declines every later round, with the reason
        assert outcomes[: len(trained)] == trained
        assert all(d.reason == BUDGET_EXHAUSTED for d in declined)
        if name == "small":  # q = 0.04: out of budget after a few rounds
            assert declined and len(trained) < 10
        if name == "large":  # q = 0.0032: the whole plan fits
            assert len(trained) == 20


def test_calibrated_plan_fits_all_twenty_rounds_within_budget(tmp_path: Path) -> None:
    policy = SitePrivacyPolicy(budget_epsilon=1.0)
    ledger = PrivacyLedger(tmp_path)
    outcomes = _run(policy, ledger, run_id="run-1", rounds=20, num_examples=1_000,
                    batch_size=16, local_steps=10)
    assert all(isinstance(o, RoundPlan) for o in outcomes)
    assert len({o.noise_multiplier for o in outcomes if isinstance(o, RoundPlan)}) == 1
    final = ledger.entries[-1].epsilon_after
    assert 0.97 <= final <= 1.0
    again = independent_epsilon(ledger.history(), delta=policy.resolve_delta(1_000))
    assert again == pytest.approx(final, rel=0.01)


def test_second_run_calibrates_to_what_is_left(tmp_path: Path) -> None:
    policy = SitePrivacyPolicy(budget_epsilon=2.0)
    ledger = PrivacyLedger(tmp_path)
    first = _run(policy, ledger, run_id="run-1", rounds=5, num_examples=500,
                 batch_size=10, local_steps=5)
    # run 1 planned 5 rounds and used all of them; a second run gets more noise
    plan_1 = first[0]
    assert isinstance(plan_1, RoundPlan)
    policy_2 = SitePrivacyPolicy(budget_epsilon=3.0)  # the operator raised the budget
    second = _run(policy_2, ledger, run_id="run-2", rounds=5, num_examples=500,
                  batch_size=10, local_steps=5)
    assert all(isinstance(o, RoundPlan) for o in second)
    assert ledger.entries[-1].epsilon_after <= 3.0
    assert ledger.entries[-1].epsilon_after > 2.0 - 1e-9


def test_calibration_with_spent_budget_declines_budget_exhausted() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=0.5)
    out = plan_round(policy, history=[(0.1, 0.6, 100)], num_examples=100, batch_size=10,
                     local_steps=5, planned_rounds=3)
    assert isinstance(out, Decline) and out.reason == BUDGET_EXHAUSTED


def test_training_without_dp_is_declined() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=8.0, noise_multiplier=1.0)
    out = plan_round(policy, history=[], num_examples=1000, batch_size=16, local_steps=10,
                     dp_enabled=False)
    assert isinstance(out, Decline) and out.reason == DP_WEAKER_THAN_POLICY
    assert out.epsilon_spent == 0.0


def test_requested_sigma_below_floor_is_declined() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=8.0, noise_multiplier=1.2,
                               min_noise_multiplier=0.8)
    out = plan_round(policy, history=[], num_examples=1000, batch_size=16, local_steps=10,
                     requested_noise_multiplier=0.5)
    assert isinstance(out, Decline) and out.reason == DP_WEAKER_THAN_POLICY
    assert "0.5" in out.detail and "0.8" in out.detail


def test_site_uses_the_stronger_of_its_sigma_and_the_requested_one() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=8.0, noise_multiplier=1.2,
                               min_noise_multiplier=0.8)
    weaker_request = plan_round(policy, history=[], num_examples=1000, batch_size=16,
                                local_steps=10, requested_noise_multiplier=0.9)
    stronger_request = plan_round(policy, history=[], num_examples=1000, batch_size=16,
                                  local_steps=10, requested_noise_multiplier=2.0)
    assert isinstance(weaker_request, RoundPlan) and weaker_request.noise_multiplier == 1.2
    assert isinstance(stronger_request, RoundPlan) and stronger_request.noise_multiplier == 2.0


def test_plan_projects_epsilon_with_q_as_sampled() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=8.0, noise_multiplier=1.0, delta=1e-6)
    out = plan_round(policy, history=[(0.016, 1.0, 10)], num_examples=1000, batch_size=16,
                     local_steps=10)
    assert isinstance(out, RoundPlan)
    assert out.sample_rate == 0.016 and out.mechanism == Mechanism(0.016, 1.0, 10)
    assert out.epsilon_before == pytest.approx(epsilon([(0.016, 1.0, 10)], delta=1e-6))
    assert out.epsilon_after == pytest.approx(epsilon([(0.016, 1.0, 20)], delta=1e-6))


def test_sample_rate_is_expected_batch_over_examples_capped_at_one() -> None:
    assert sample_rate_for(batch_size=16, num_examples=1000) == 0.016
    assert sample_rate_for(batch_size=32, num_examples=20) == 1.0
    with pytest.raises(PolicyError, match="`batch_size`"):
        sample_rate_for(batch_size=0, num_examples=20)
    with pytest.raises(PolicyError, match="`num_examples`"):
        sample_rate_for(batch_size=4, num_examples=True)  # type: ignore[arg-type]


def test_calibration_mode_needs_the_plan_length() -> None:
    with pytest.raises(PolicyError, match="planned_rounds"):
        plan_round(SitePrivacyPolicy(budget_epsilon=1.0), history=[], num_examples=100,
                   batch_size=10, local_steps=5)


def test_calibrated_sigma_respects_the_floor() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=50.0, min_noise_multiplier=2.0)
    sigma = calibrate_plan(policy, prior_history=[], num_examples=1000, batch_size=10,
                           local_steps=1, planned_rounds=1)
    assert sigma == 2.0
