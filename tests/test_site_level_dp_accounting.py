"""Site-level ε: golden values against Opacus, KLS corrections, survivors, calibration, budget."""

from __future__ import annotations

import math

import pytest

from privacy.accounting import epsilon as example_epsilon
from privacy.ddg import SiteLevelDPRound, calibrate_site_noise, plan_round, site_level_epsilon
from privacy.ddg.accounting import rdp_of_round, tau

SEED = "00" * 32


def test_central_gaussian_epsilon_matches_opacus_rdp_at_sampling_rate_one() -> None:
    for z, rounds in ((1.1, 3), (0.8, 5), (3.0, 20)):
        ours = site_level_epsilon([SiteLevelDPRound("central", 10, z * 0.2, 0.2, 0.0, 1000)] * rounds,
                            delta=1e-5)
        theirs = example_epsilon([(1.0, z, rounds)], delta=1e-5)
        assert ours <= theirs * 1.001  # finer order grid: never looser
        assert ours == pytest.approx(theirs, rel=0.02)


def test_distributed_on_a_fine_grid_costs_almost_nothing_over_central() -> None:
    p = plan_round(clip=1.0, dim=12288, modulus_bits=32, noise_multiplier=1.1, cohort=10,
                   max_contributors=10, rotation_seed=SEED)
    dist = site_level_epsilon([p.round_record(10)] * 3, delta=1e-5)
    cent = site_level_epsilon([SiteLevelDPRound("central", 10, 1.1, 1.0, 0.0, 12288)] * 3, delta=1e-5)
    assert cent < dist < cent * 1.001


def test_a_coarse_ring_pays_for_rounding_and_the_sum_of_discrete_gaussians() -> None:
    fine = plan_round(clip=1.0, dim=4096, modulus_bits=32, noise_multiplier=1.0, cohort=10,
                      max_contributors=10, rotation_seed=SEED)
    coarse = plan_round(clip=1.0, dim=4096, modulus_bits=16, noise_multiplier=1.0, cohort=10,
                        max_contributors=10, rotation_seed=SEED)
    assert coarse.l2_sensitivity / (coarse.clip / coarse.gamma) > 1.001  # rounding inflation
    assert site_level_epsilon([coarse.round_record(10)], delta=1e-5) > \
        site_level_epsilon([fine.round_record(10)], delta=1e-5)
    # tau vanishes for large local sigma and is positive, decreasing, for small
    assert tau(0.3, 10) > tau(0.5, 10) > 0 and tau(10.0, 10) == 0.0 and tau(0.3, 1) == 0.0


def test_fewer_survivors_mean_less_noise_and_more_epsilon() -> None:
    p = plan_round(clip=1.0, dim=4096, modulus_bits=32, noise_multiplier=1.0, cohort=10,
                   max_contributors=10, rotation_seed=SEED)
    eps = [site_level_epsilon([p.round_record(n)], delta=1e-5) for n in (10, 8, 5, 2, 1)]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    assert p.aggregate_noise_variance(5) == pytest.approx(0.5 * p.aggregate_noise_variance(10))


@pytest.mark.parametrize("mode", ["distributed", "central"])
@pytest.mark.parametrize("target,rounds", [(8.0, 3), (2.0, 5), (0.5, 1)])
def test_calibration_never_overshoots_and_is_tight(mode: str, target: float, rounds: int) -> None:
    kw = dict(delta=1e-5, rounds=rounds, mode=mode, clip=0.05, dim=12288, modulus_bits=32,
              cohort=10, max_contributors=10)
    z = calibrate_site_noise(target_epsilon=target, **kw)  # type: ignore[arg-type]

    def eps(zz: float) -> float:
        if mode == "central":
            return site_level_epsilon([SiteLevelDPRound("central", 10, zz * 0.05, 0.05, 0.0, 12288)]
                                * rounds, delta=1e-5)
        p = plan_round(clip=0.05, dim=12288, modulus_bits=32, noise_multiplier=zz, cohort=10,
                       max_contributors=10, rotation_seed=SEED)
        return site_level_epsilon([p.round_record(10)] * rounds, delta=1e-5)

    assert eps(z) <= target
    assert eps(z * 0.99) > target * 0.99  # within ~1% of the smallest fitting noise


def test_no_noise_is_infinite_epsilon_and_records_validate() -> None:
    assert rdp_of_round(SiteLevelDPRound("distributed", 3, 0.0, 5.0, 25.0, 8), 2.0) == math.inf
    assert site_level_epsilon([SiteLevelDPRound("central", 3, 0.0, 1.0, 0.0, 8)], delta=1e-5) == math.inf
    assert site_level_epsilon([], delta=1e-5) == 0.0
    # below sigma = 1/2 grid steps the sum-of-discrete-Gaussians bound does not apply
    assert rdp_of_round(SiteLevelDPRound("distributed", 3, 0.4, 5.0, 25.0, 8), 2.0) == math.inf
    with pytest.raises(ValueError, match="contributors"):
        SiteLevelDPRound("distributed", 0, 1.0, 1.0, 1.0, 8)
    with pytest.raises(ValueError, match="mode"):
        SiteLevelDPRound("local", 1, 1.0, 1.0, 1.0, 8)
    with pytest.raises(ValueError, match="site_level_epsilon"):
        calibrate_site_noise(target_epsilon=0.0, delta=1e-5, rounds=1, mode="central")
