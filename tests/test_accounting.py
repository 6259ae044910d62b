"""Composition, calibration and the independent recomputation of ε."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy.accounting import (
    RDP_ORDERS,
    CalibrationError,
    Mechanism,
    calibrate_noise_multiplier,
    epsilon,
    independent_epsilon,
)
from privacy.policy import PolicyError

MNIST = (256 / 60_000, 1.1, 60 * 60_000 // 256)  # Abadi et al.'s setting, 60 epochs

# Golden values: Opacus' accountants, confirmed by independent_epsilon (numerical integration
# of the Rényi moments; Microsoft's prv_accountant) when they were recorded.
GOLDEN = [
    ("rdp", [(0.01, 1.0, 1000)], 1e-5, 2.1013652716430564),
    ("rdp", [MNIST], 1e-5, 2.5965558689607486),
    ("rdp", [(0.1, 0.8, 50), (0.05, 2.0, 300)], 1e-6, 10.833183434438604),
    ("rdp", [(1.0, 5.0, 10)], 1e-5, 2.8136532471298397),
    ("prv", [(0.01, 1.0, 1000)], 1e-5, 1.838371637017295),
    ("prv", [MNIST], 1e-5, 2.391743695945225),
    ("prv", [(1.0, 5.0, 10)], 1e-5, 2.604536375535605),
]


@pytest.mark.parametrize(("accountant", "history", "delta", "golden"), GOLDEN)
def test_epsilon_matches_golden_value(accountant: str, history: list[tuple[float, float, int]],
                                      delta: float, golden: float) -> None:
    assert epsilon(history, delta=delta, accountant=accountant) == pytest.approx(golden, rel=1e-6)


@pytest.mark.parametrize(("accountant", "history", "delta", "golden"), GOLDEN)
def test_independent_recomputation_agrees_with_golden_to_one_percent(
    accountant: str, history: list[tuple[float, float, int]], delta: float, golden: float
) -> None:
    assert independent_epsilon(history, delta=delta, accountant=accountant) == pytest.approx(
        golden, rel=0.01)


def test_gaussian_without_subsampling_has_the_closed_form_rdp() -> None:
    # q = 1: RDP of the Gaussian mechanism is alpha / (2 sigma^2) per step (Mironov 2017).
    sigma, steps, delta = 5.0, 10, 1e-5
    expected = min(
        steps * a / (2 * sigma**2) + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for a in RDP_ORDERS
    )
    assert epsilon([(1.0, sigma, steps)], delta=delta) == pytest.approx(expected, rel=1e-9)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    q=st.floats(1e-3, 1.0),
    sigma=st.floats(0.5, 8.0),
    steps=st.integers(1, 3000),
    delta=st.sampled_from([1e-7, 1e-6, 1e-5, 1e-3]),
)
def test_rdp_recomputation_agrees_to_one_percent(q: float, sigma: float, steps: int,
                                                 delta: float) -> None:
    ours = epsilon([(q, sigma, steps)], delta=delta)
    again = independent_epsilon([(q, sigma, steps)], delta=delta)
    assert again == pytest.approx(ours, rel=0.01)


def test_composition_is_order_free_and_additive_in_steps() -> None:
    a, b = (0.02, 1.0, 100), (0.05, 1.5, 40)
    assert epsilon([a, b], delta=1e-5) == pytest.approx(epsilon([b, a], delta=1e-5))
    assert epsilon([(0.02, 1.0, 60), (0.02, 1.0, 40)], delta=1e-5) == pytest.approx(
        epsilon([(0.02, 1.0, 100)], delta=1e-5))


def test_more_steps_spend_more() -> None:
    values = [epsilon([(0.01, 1.0, n)], delta=1e-5) for n in (1, 10, 100, 1000)]
    assert values == sorted(values) and values[0] > 0


def test_empty_history_spends_nothing_and_zero_noise_spends_everything() -> None:
    assert epsilon([], delta=1e-5) == 0.0
    assert epsilon([(0.01, 1.0, 0)], delta=1e-5) == 0.0
    assert math.isinf(epsilon([(0.01, 0.0, 1)], delta=1e-5))


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ((0.0, 1.0, 10), "sample_rate"),
        ((1.5, 1.0, 10), "sample_rate"),
        ((0.1, -1.0, 10), "noise_multiplier"),
        ((0.1, 1.0, -1), "steps"),
        ((0.1, 1.0, 2.5), "steps"),
        ((True, 1.0, 1), "sample_rate"),
    ],
)
def test_bad_history_entry_is_refused_naming_field(entry: tuple[object, ...], field: str) -> None:
    with pytest.raises(PolicyError, match=f"history\\[0\\].{field}"):
        epsilon([entry], delta=1e-5)


def test_bad_delta_or_accountant_is_refused() -> None:
    with pytest.raises(PolicyError, match="`delta` must be in \\(0, 1\\), got 1.0"):
        epsilon([(0.1, 1.0, 1)], delta=1.0)
    with pytest.raises(PolicyError, match="`accountant`"):
        epsilon([(0.1, 1.0, 1)], delta=1e-5, accountant="gdp")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.floats(0.3, 12.0),
    q=st.floats(1e-3, 1.0),
    steps=st.integers(1, 2000),
    delta=st.sampled_from([1e-7, 1e-5, 1e-3]),
    prior_steps=st.integers(0, 200),
)
def test_calibration_never_overshoots_the_target(target: float, q: float, steps: int,
                                                 delta: float, prior_steps: int) -> None:
    prior = [Mechanism(0.01, 3.0, prior_steps)] if prior_steps else []
    if epsilon(prior, delta=delta) >= target:
        return
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=delta, sample_rate=q,
                                       steps=steps, prior_history=prior)
    achieved = epsilon([*prior, (q, sigma, steps)], delta=delta)
    assert achieved <= target
    # ... and it is the noisier end of a tight bracket: 0.1% less noise overshoots.
    assert epsilon([*prior, (q, sigma * (1 - 1e-3), steps)], delta=delta) > target


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibration_with_each_accountant_hits_target_from_below(accountant: str) -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.01,
                                       steps=500, accountant=accountant)
    achieved = epsilon([(0.01, sigma, 500)], delta=1e-5, accountant=accountant)
    assert 1.97 <= achieved <= 2.0


def test_calibration_refuses_when_prior_history_spent_the_budget() -> None:
    with pytest.raises(CalibrationError, match="already spends"):
        calibrate_noise_multiplier(target_epsilon=0.5, delta=1e-5, sample_rate=0.1, steps=10,
                                   prior_history=[(0.1, 0.6, 100)])


def test_calibration_refuses_bad_arguments() -> None:
    with pytest.raises(PolicyError, match="`steps`"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=0)
    with pytest.raises(PolicyError, match="`target_epsilon`"):
        calibrate_noise_multiplier(target_epsilon=-1.0, delta=1e-5, sample_rate=0.1, steps=5)
    with pytest.raises(PolicyError, match="`sample_rate`"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=2.0, steps=5)


def test_numerical_failure_counts_as_infinite_epsilon(monkeypatch: pytest.MonkeyPatch) -> None:
    from opacus.accountants import PRVAccountant

    monkeypatch.setattr(PRVAccountant, "get_epsilon", lambda self, **kw: float("nan"))
    assert math.isinf(epsilon([(0.3, 0.77, 13)], delta=1e-5, accountant="prv"))


def test_prv_is_tighter_than_rdp() -> None:
    history = [(0.01, 1.0, 1000)]
    assert epsilon(history, delta=1e-5, accountant="prv") < epsilon(history, delta=1e-5)


@pytest.mark.slow
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.floats(0.1, 20.0),
    q=st.floats(1e-4, 1.0),
    steps=st.integers(1, 5_000),
    delta=st.sampled_from([1e-8, 1e-6, 1e-5, 1e-3]),
    accountant=st.sampled_from(["rdp", "rdp", "prv"]),
)
def test_calibration_never_overshoots_many_cases(target: float, q: float, steps: int,
                                                 delta: float, accountant: str) -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=delta, sample_rate=q,
                                       steps=steps, accountant=accountant)
    assert epsilon([(q, sigma, steps)], delta=delta, accountant=accountant) <= target
