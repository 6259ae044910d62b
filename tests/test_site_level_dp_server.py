"""The coordinator's site-level DP: dropouts below the cohort, the run budget, resume, site checks."""

from __future__ import annotations

import dataclasses

import pytest

from client.site_level_dp import check_round_params
from privacy.ddg import DDGParams, site_level_epsilon
from privacy.secagg import SecAggError
from protocol.config import ConfigError, RunConfig
from protocol.run_rows import ParticipationRow
from server.site_level_dp import PlanRefusal, SiteLevelDP, history_from_participation

DIM = 3000


def _site_level_dp(**kw: object) -> SiteLevelDP:
    args: dict[str, object] = dict(mode="distributed", epsilon=8.0, delta=1e-5, clip=0.05,
                                   noise_multiplier=-1.0, cohort=0, modulus_bits=32,
                                   underflow="refuse", planned_rounds=3)
    args.update(kw)
    return SiteLevelDP(**args)  # type: ignore[arg-type]


def test_dropouts_below_the_calibration_cohort_are_refused_before_unmasking() -> None:
    sdp = _site_level_dp()
    params = sdp.plan(cohort_size=10, dim=DIM)
    assert isinstance(params, DDGParams) and params.cohort == 10
    adm = sdp.admit(params, 9)
    assert not adm.ok and "fewer than the calibration cohort 10" in adm.reason
    assert sdp.history == []  # nothing released, nothing spent
    assert sdp.admit(params, 10).ok


def test_dropouts_in_account_mode_are_released_with_their_larger_epsilon() -> None:
    sdp = _site_level_dp(underflow="account")
    params = sdp.plan(cohort_size=10, dim=DIM)
    assert isinstance(params, DDGParams)
    full, short = sdp.admit(params, 10), sdp.admit(params, 7)
    assert full.ok and short.ok
    assert short.record["epsilon_round"] > full.record["epsilon_round"]
    assert short.record["noise_variance"] == pytest.approx(0.7 * full.record["noise_variance"])
    rec = sdp.release(short)
    assert rec["released"] and rec["contributors"] == 7
    assert sdp.spent() == pytest.approx(short.record["epsilon_after"])


def test_the_run_budget_stops_releases_and_calibration_fills_it_exactly() -> None:
    sdp = _site_level_dp()
    for _ in range(3):
        params = sdp.plan(cohort_size=10, dim=DIM)
        assert isinstance(params, DDGParams)
        adm = sdp.admit(params, 10)
        assert adm.ok
        sdp.release(adm)
    assert 7.9 < sdp.spent() <= 8.0
    refusal = sdp.plan(cohort_size=10, dim=DIM)
    assert isinstance(refusal, PlanRefusal) and "site-level budget" in refusal.reason
    assert refusal.budget_exhausted
    # an explicit, too small noise multiplier: refused at admission, never unmasked
    weak = _site_level_dp(noise_multiplier=0.2)
    params = weak.plan(cohort_size=10, dim=DIM)
    assert isinstance(params, PlanRefusal) and "budget" in params.reason


def _row(rnd: int, site_level_dp: dict[str, object]) -> ParticipationRow:
    return ParticipationRow(round=rnd, sampled=(), contributed=(), declined={}, failed={},
                            site_level_dp=site_level_dp)


def test_a_resumed_run_composes_from_the_recorded_rounds() -> None:
    sdp = _site_level_dp(underflow="account")
    rows = []
    for n in (10, 6):
        params = sdp.plan(cohort_size=10, dim=DIM)
        assert isinstance(params, DDGParams)
        rows.append(_row(len(rows) + 1, sdp.release(sdp.admit(params, n))))
    rows.append(_row(3, {"mode": "distributed", "released": False, "refused": "x"}))
    resumed = _site_level_dp(underflow="account", history=history_from_participation(rows))
    assert resumed.spent() == pytest.approx(sdp.spent())
    assert resumed.spent() == pytest.approx(site_level_epsilon(sdp.history, delta=1e-5))


def _cfg(**kw: object) -> RunConfig:
    return RunConfig.from_mapping({"secagg": True, "secagg-enrolment": "e.json", "site-level-dp": True,
                                   "site-level-dp-clip": 0.05, **kw})


def test_a_site_refuses_parameters_below_its_own_calibration() -> None:
    cfg = _cfg()
    params = _site_level_dp().plan(cohort_size=10, dim=DIM)
    assert isinstance(params, DDGParams)
    ok = dict(cohort_size=10, modulus_bits=32, vector_length=params.padded)
    check_round_params(params, "distributed", cfg, **ok)  # type: ignore[arg-type]
    weaker = dataclasses.replace(params, local_sigma=params.local_sigma * 0.9)
    with pytest.raises(SecAggError, match="below z"):
        check_round_params(weaker, "distributed", cfg, **ok)  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="cohort"):
        check_round_params(params, "distributed", cfg, cohort_size=8, modulus_bits=32,
                           vector_length=params.padded)
    with pytest.raises(SecAggError, match="central"):
        check_round_params(params, "central", cfg, **ok)  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="clip"):
        check_round_params(dataclasses.replace(params, clip=0.1, gamma=params.gamma * 2),
                           "distributed", cfg, **ok)  # type: ignore[arg-type]


@pytest.mark.parametrize("key,value,needle", [
    ("site-level-dp-epsilon", 0.0, "`site-level-dp-epsilon` must be > 0, got 0.0"),
    ("site-level-dp-delta", 1.0, "`site-level-dp-delta` must be in (0, 1), got 1.0"),
    ("site-level-dp-clip", -1.0, "`site-level-dp-clip` must be > 0, got -1.0"),
    ("site-level-dp-noise-multiplier", -0.5, "`site-level-dp-noise-multiplier` must be >= 0"),
    ("site-level-dp-bits", 8, "`site-level-dp-bits` must be in [16, 52], got 8"),
    ("site-level-dp-mode", "local", "`site-level-dp-mode` must be one of"),
    ("site-level-dp-underflow", "ignore", "`site-level-dp-underflow` must be one of"),
    ("site-level-dp-cohort", True, "`site-level-dp-cohort` must be an integer, got True"),
])
def test_bad_site_level_dp_config_names_the_field_and_value(key: str, value: object,
                                                      needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(**{key: value})
    assert needle in str(err.value)


def test_site_level_dp_is_off_by_default_and_needs_secure_aggregation() -> None:
    assert RunConfig().site_level_dp is False
    with pytest.raises(ConfigError, match="`site-level-dp` must be false unless secagg is on"):
        RunConfig.from_mapping({"site-level-dp": True})


def test_a_site_refuses_to_unmask_a_sum_below_the_cohort_in_the_complete_graph() -> None:
    from types import SimpleNamespace

    from client.site_level_dp import check_unmask, remember_round

    params = _site_level_dp().plan(cohort_size=5, dim=DIM)
    assert isinstance(params, DDGParams)
    context = SimpleNamespace(state={})
    complete = SimpleNamespace(round=3, degree=4, cohort=(1, 2, 3, 4, 5))
    remember_round(context, params, "distributed", _cfg(), 3)
    check_unmask(context, {"alive": [1, 2, 3, 4, 5]}, complete)
    with pytest.raises(SecAggError, match="fewer than the calibration cohort 5"):
        check_unmask(context, {"alive": [1, 2, 3, 5]}, complete)
    # without its node id a site cannot tell its neighbours in a sparse graph: no check;
    # another round, central mode or account mode: no check
    check_unmask(context, {"alive": [1, 2]}, SimpleNamespace(round=3, degree=2,
                                                             cohort=(1, 2, 3, 4, 5)))
    check_unmask(context, {"alive": [1, 2]}, SimpleNamespace(round=4, degree=4,
                                                             cohort=(1, 2, 3, 4, 5)))
    remember_round(context, params, "central", _cfg(**{"site-level-dp-mode": "central"}), 3)
    check_unmask(context, {"alive": [1]}, complete)
    remember_round(context, params, "distributed", _cfg(**{"site-level-dp-underflow": "account"}), 3)
    check_unmask(context, {"alive": [1]}, complete)


def test_an_unplannable_round_is_refused_not_crashed() -> None:
    tiny_ring = _site_level_dp(modulus_bits=16, noise_multiplier=1.0)
    refusal = tiny_ring.plan(cohort_size=10, dim=2**22)  # 10 * sqrt(d) > 2^14
    assert isinstance(refusal, PlanRefusal) and "cannot plan" in refusal.reason
    assert not refusal.budget_exhausted


def test_in_a_sparse_graph_a_site_refuses_when_a_neighbour_is_missing_from_a_full_cohort() -> None:
    from types import SimpleNamespace

    from client.site_level_dp import check_unmask, remember_round
    from privacy.secagg import SecAggConfig

    cohort = list(range(1, 31))
    config = SecAggConfig.create(run_id=7, round=2, cohort=cohort, modulus_bits=32,
                                 vector_length=64, graph_seed=bytes(32))
    assert config.degree < len(cohort) - 1  # sparse
    me = 5
    holders = config.graph().holders(me)
    params = _site_level_dp().plan(cohort_size=30, dim=DIM)
    assert isinstance(params, DDGParams) and params.cohort == 30
    context = SimpleNamespace(state={})
    remember_round(context, params, "distributed", _cfg(), 2)
    check_unmask(context, {"alive": list(holders)}, config, me)  # every neighbour in the sum
    missing = [h for h in holders if h != me][0]
    with pytest.raises(SecAggError, match="at most 29 contributors.*calibration cohort 30"):
        check_unmask(context, {"alive": [h for h in holders if h != missing]}, config, me)
    # a calibration cohort below the round's cohort leaves room for dropouts elsewhere
    small = _site_level_dp(cohort=28).plan(cohort_size=30, dim=DIM)
    assert isinstance(small, DDGParams) and small.cohort == 28
    remember_round(context, small, "distributed", _cfg(**{"site-level-dp-cohort": 28}), 2)
    two = [h for h in holders if h != me][:2]
    check_unmask(context, {"alive": [h for h in holders if h not in two]}, config, me)
    three = [h for h in holders if h != me][:3]
    with pytest.raises(SecAggError, match="at most 27"):
        check_unmask(context, {"alive": [h for h in holders if h not in three]}, config, me)
