"""A site prices site-level DP parameters itself; central mode accounts the rounding bound."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from client.site_level_dp import check_round_params, check_site_level_price, site_level_budget
from privacy.audit.site_level import independent_site_epsilon
from privacy.ddg import DDGParams, SiteLevelDPRound, rounded_l2_bound, site_level_epsilon
from privacy.ddg.site_ledger import SITE_LEVEL_LEDGER, SiteLevelLedger
from privacy.secagg import SecAggError
from protocol.config import RunConfig
from server.site_level_dp import SiteLevelDP

DIM, CLIP, COHORT = 3000, 0.05, 10


def _cfg(**kw: object) -> RunConfig:
    return RunConfig.from_mapping({"secagg": True, "secagg-enrolment": "e.json",
                                   "site-level-dp": True, "site-level-dp-clip": CLIP,
                                   "num-server-rounds": 3, **kw})


def _honest() -> DDGParams:
    sdp = SiteLevelDP(mode="distributed", epsilon=8.0, delta=1e-5, clip=CLIP, noise_multiplier=-1.0,
                 cohort=0, modulus_bits=32, underflow="refuse", planned_rounds=3)
    params = sdp.plan(cohort_size=COHORT, dim=DIM)
    assert isinstance(params, DDGParams)
    return params


def _coarse(params: DDGParams, sigma_grid: float) -> DDGParams:
    """The same aggregate noise std z C on a coarser grid: local sigma ``sigma_grid``."""
    std = params.local_sigma * params.gamma * math.sqrt(params.cohort)
    return dataclasses.replace(params, local_sigma=sigma_grid,
                               gamma=std / (sigma_grid * math.sqrt(params.cohort)))


@pytest.mark.parametrize("sigma_grid", [2.0, 0.5, 0.3])
def test_a_coordinators_coarse_grid_is_refused_with_the_eps_it_would_cost(
        tmp_path: Path, sigma_grid: float) -> None:
    cfg, honest = _cfg(), _honest()
    coarse = _coarse(honest, sigma_grid)
    ok = {"cohort_size": COHORT, "modulus_bits": 32, "vector_length": coarse.padded}
    check_round_params(coarse, "distributed", cfg, **ok)  # type: ignore[arg-type]  # old check: ok
    cost = site_level_epsilon([coarse.round_record(COHORT)], delta=cfg.site_level_dp_delta)
    assert cost > cfg.site_level_dp_epsilon
    with pytest.raises(SecAggError) as err:
        check_site_level_price(coarse, cfg, state_dir=tmp_path, run_id="r", round_num=1)
    assert f"would cost site eps {cost:.4g}" in str(err.value)
    assert "> budget 8" in str(err.value)
    assert not (tmp_path / SITE_LEVEL_LEDGER).exists()  # a refused round is not charged


def test_the_sites_ledger_composes_the_run_and_refuses_the_round_past_the_budget(
        tmp_path: Path) -> None:
    cfg, params = _cfg(), _honest()
    eps = [check_site_level_price(params, cfg, state_dir=tmp_path, run_id="r", round_num=k)
           for k in (1, 2, 3)]
    assert eps[0] < eps[1] < eps[2] <= 8.0
    # a retried round is charged once, not twice
    assert check_site_level_price(params, cfg, state_dir=tmp_path, run_id="r",
                                  round_num=3) == pytest.approx(eps[2])
    with pytest.raises(SecAggError, match="site-level price"):
        check_site_level_price(params, cfg, state_dir=tmp_path, run_id="r", round_num=4)
    ledger = SiteLevelLedger(tmp_path)
    assert [c["round"] for c in ledger.charges()] == [1, 2, 3]
    assert site_level_epsilon(ledger.history("r"), delta=1e-5) == pytest.approx(eps[2])
    doc = json.loads((tmp_path / SITE_LEVEL_LEDGER).read_text())
    assert doc["format"] == "confide-site-level-ledger/1"
    # another run starts from zero; the site's own, smaller budget binds before the run's
    node = {"site-level-epsilon": 5.0}
    assert site_level_budget(cfg, node) == (5.0, cfg.site_level_dp_delta)
    check_site_level_price(params, cfg, state_dir=tmp_path, run_id="s", round_num=1,
                           node_config=node)
    with pytest.raises(SecAggError, match="> budget 5 "):
        check_site_level_price(params, cfg, state_dir=tmp_path, run_id="s", round_num=2,
                               node_config=node)


def test_a_corrupt_site_level_ledger_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / SITE_LEVEL_LEDGER).write_text("{}")
    with pytest.raises(ValueError, match=SITE_LEVEL_LEDGER):
        SiteLevelLedger(tmp_path)


def test_central_mode_in_a_16_bit_ring_states_the_true_rounding_bound() -> None:
    dim, cohort, delta = 30000, 10, 1e-5
    sdp = SiteLevelDP(mode="central", epsilon=8.0, delta=delta, clip=CLIP, noise_multiplier=-1.0,
                 cohort=0, modulus_bits=16, underflow="refuse", planned_rounds=3)
    records = []
    for _ in range(3):
        params = sdp.plan(cohort_size=cohort, dim=dim)
        assert isinstance(params, DDGParams)
        adm = sdp.admit(params, cohort)
        assert adm.ok, adm.reason
        records.append(sdp.release(adm))
    # the true bound: one site moves the sum by its rounded vector, up to Δ₂ γ > C
    bound = rounded_l2_bound(CLIP / params.gamma, params.padded, params.beta) * params.gamma
    assert bound > CLIP * 1.001
    sigma = records[0]["sigma"]
    true = site_level_epsilon([SiteLevelDPRound("central", cohort, sigma, bound, 0.0, dim)] * 3,
                        delta=delta)
    assert sdp.spent() == pytest.approx(true, rel=1e-9) and sdp.spent() <= 8.0
    # sensitivity C would understate it
    naive = site_level_epsilon([SiteLevelDPRound("central", cohort, sigma, CLIP, 0.0, dim)] * 3,
                         delta=delta)
    assert naive < true
    # the audit's own recomputation from the records agrees
    assert independent_site_epsilon(records, delta) == pytest.approx(true, rel=1e-3)
