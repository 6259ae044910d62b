"""The one-run audit's ε lower bound (Steinke, Nasr & Jagielski 2023, Appendix D)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.audit.canary import (
    CanaryAuditResult,
    CanaryPlan,
    audit_scores,
    count_correct,
    default_k_grid,
    epsilon_lower_bound,
    membership_scores,
    p_value,
)


def _reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Compute the paper's p-value term by term with scipy (an independent implementation)."""
    stats = pytest.importorskip("scipy.stats")
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(stats.binom.sf(v - 1, r, q))
    alpha, acc = 0.0, 0.0
    for i in range(1, v + 1):
        acc += float(stats.binom.pmf(v - i, r, q))
        alpha = max(alpha, acc / i)
    return min(1.0, tail + alpha * delta * 2 * m)


@pytest.mark.parametrize("m,r,v,eps,delta", [
    (1000, 100, 90, 2.0, 1e-5), (1000, 500, 300, 0.5, 1e-5), (1000, 1000, 1000, 5.0, 1e-5),
    (100, 10, 10, 1.0, 0.0), (1000, 400, 210, 0.1, 1e-3), (50, 50, 0, 1.0, 1e-5),
])
def test_p_value_matches_an_independent_scipy_implementation(m: int, r: int, v: int,
                                                             eps: float, delta: float) -> None:
    assert p_value(m, r, v, epsilon=eps, delta=delta) == pytest.approx(
        _reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def test_all_guesses_correct_with_many_guesses_gives_a_large_bound() -> None:
    # pure DP: P[Bin(r, p) = r] = p^r < 0.05  <=>  eps < log(p / (1 - p)) at p = 0.05^(1/r)
    p = 0.05 ** (1 / 1000)
    assert epsilon_lower_bound(1000, 1000, 1000, delta=0.0) == pytest.approx(
        math.log(p / (1 - p)), abs=1e-4)
    assert epsilon_lower_bound(1000, 1000, 1000, delta=1e-5) > 5.0
    assert epsilon_lower_bound(1000, 200, 200, delta=1e-5) > 3.5


def test_random_guesses_give_a_bound_near_zero() -> None:
    rng = np.random.default_rng(0)
    bounds = []
    for _ in range(50):
        v = int(rng.binomial(500, 0.5))
        bounds.append(epsilon_lower_bound(1000, 500, v, delta=1e-5))
    assert max(bounds) < 0.3 and float(np.median(bounds)) == 0.0
    assert epsilon_lower_bound(1000, 500, 250, delta=1e-5) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, delta=1e-5) == 0.0


def test_bound_grows_with_correct_guesses_and_shrinks_with_delta_and_confidence() -> None:
    bounds = [epsilon_lower_bound(1000, 400, v, delta=1e-5) for v in range(200, 401, 20)]
    assert bounds == sorted(bounds) and bounds[-1] > bounds[0]
    assert epsilon_lower_bound(1000, 400, 380, delta=1e-3) < epsilon_lower_bound(
        1000, 400, 380, delta=0.0)
    assert epsilon_lower_bound(1000, 400, 380, delta=1e-5, confidence=0.99) < (
        epsilon_lower_bound(1000, 400, 380, delta=1e-5, confidence=0.95))


def test_p_value_at_the_bound_is_just_below_beta() -> None:
    eps = epsilon_lower_bound(1000, 300, 260, delta=1e-5)
    assert p_value(1000, 300, 260, epsilon=eps, delta=1e-5) < 0.05
    assert p_value(1000, 300, 260, epsilon=eps + 1e-4, delta=1e-5) >= 0.05


def test_bound_is_valid_for_eps_dp_randomised_response() -> None:
    # An eps-DP mechanism (randomised response at eps = 1): the 95% bound exceeds 1 in at
    # most ~5% of runs (binomial slack for 400 runs: allow 8%).
    rng = np.random.default_rng(1)
    true_eps, m = 1.0, 1000
    p = math.exp(true_eps) / (1 + math.exp(true_eps))
    over = sum(epsilon_lower_bound(m, m, int(rng.binomial(m, p)), delta=0.0) > true_eps
               for _ in range(400))
    assert over <= 32


def test_invalid_inputs_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(10, 5, 6, epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError, match="`epsilon`"):
        p_value(10, 5, 3, epsilon=-1.0, delta=0.0)
    with pytest.raises(ValueError, match="`delta`"):
        p_value(10, 5, 3, epsilon=1.0, delta=2.0)
    with pytest.raises(ValueError, match="`confidence`"):
        epsilon_lower_bound(10, 5, 3, delta=0.0, confidence=1.0)
    with pytest.raises(ValueError, match="`m` must be an int"):
        p_value(True, 0, 0, epsilon=1.0, delta=0.0)  # type: ignore[arg-type]


def test_guessing_top_k_in_and_bottom_k_out_counts_correct_guesses() -> None:
    scores = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    included = [True, True, False, True, False, False]
    assert count_correct(scores, included, k_in=2, k_out=2) == (4, 4)
    assert count_correct(scores, included, k_in=3, k_out=0) == (3, 2)
    assert count_correct(scores, included, k_in=0, k_out=3) == (3, 2)
    with pytest.raises(ValueError, match="k_in \\+ k_out <= m"):
        count_correct(scores, included, k_in=4, k_out=4)


def test_canary_plan_is_reproducible_from_its_seed_and_avoids_excluded_tokens() -> None:
    a = CanaryPlan.draw(200, length=16, vocab_size=50, seed=3, exclude=[0, 1])
    b = CanaryPlan.draw(200, length=16, vocab_size=50, seed=3, exclude=[0, 1])
    assert a == b and a.m == 200 and all(len(s) == 16 for s in a.sequences)
    assert not {0, 1} & {t for s in a.sequences for t in s}
    assert 70 < sum(a.included) < 130
    assert sorted(a.indices(included=True) + a.indices(included=False)) == list(range(200))


def test_disjoint_canaries_use_their_own_token_blocks() -> None:
    plan = CanaryPlan.draw(50, length=16, vocab_size=1000, seed=4, exclude=[0], disjoint=True)
    blocks = [set(s) for s in plan.sequences]
    assert all(len(b) <= 19 for b in blocks)  # 999 usable ids // 50 canaries
    assert all(not (a & b) for i, a in enumerate(blocks) for b in blocks[i + 1:])
    with pytest.raises(ValueError, match=">= 2 token ids"):
        CanaryPlan.draw(600, length=16, vocab_size=1000, seed=4, disjoint=True)


def test_control_scores_cancel_what_training_did_to_the_tokens_in_any_order() -> None:
    before, after = [5.0, 5.0, 5.0], [3.0, 4.0, 2.0]
    ctl_before, ctl_after = [5.5, 5.0, 6.0], [4.5, 4.0, 3.0]
    assert list(membership_scores(before, after)) == [2.0, 1.0, 3.0]
    assert list(membership_scores(before, after, control_before=ctl_before,
                                  control_after=ctl_after)) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="both"):
        membership_scores(before, after, control_before=ctl_before)


def test_audit_scores_separable_vs_uninformative_and_flags_an_excess() -> None:
    rng = np.random.default_rng(2)
    included = rng.integers(0, 2, 1000).astype(bool)
    separable = membership_scores(np.full(1000, 5.0), np.where(included, 1.0, 5.0)
                                  + rng.normal(0, 0.01, 1000))
    strong = audit_scores(separable, included, delta=1e-5, formal_epsilon=None)
    noise = audit_scores(rng.normal(size=1000), included, delta=1e-5, formal_epsilon=2.0)
    broken = audit_scores(separable, included, delta=1e-5, formal_epsilon=1.0, site_id="s")

    assert strong.epsilon_lower_bound > 3.0 and strong.correct == strong.guesses
    assert strong.candidates == len(default_k_grid(1000)) and not strong.exceeds_formal
    assert noise.epsilon_lower_bound < 0.5 and not noise.exceeds_formal
    assert broken.exceeds_formal
    assert CanaryAuditResult.from_mapping(broken.to_mapping()) == broken


@pytest.mark.slow
def test_canary_audit_on_the_embedded_model_dp_off_leaks_dp_on_stays_below_formal() -> None:
    from protocol.model_ref import ModelError, embedded_model_dir

    try:
        embedded_model_dir()
    except ModelError:
        pytest.skip("embedded model not built (python -m simulations.generate.make_embedded)")
    import torch

    from simulations.audit_canaries import AuditSettings, run_canary_audit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 on a busy 2-core machine
    try:
        off = run_canary_audit(AuditSettings(dp=False, canaries=1000))
        on = run_canary_audit(AuditSettings(dp=True, canaries=1000, target_epsilon=2.0))
    finally:
        torch.set_num_threads(threads)

    assert off["formal_epsilon"] is None and off["epsilon_lower_bound"] >= 1.0
    assert on["formal_epsilon"] <= 2.0
    assert on["epsilon_lower_bound"] <= on["formal_epsilon"] and not on["exceeds_formal"]
