"""The discrete Gaussian samplers match N_Z(0, sigma^2): chi-square against the pmf."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from privacy.ddg import sample_discrete_gaussian, sample_discrete_gaussian_exact
from privacy.ddg.sampler import discrete_gaussian_pmf, discrete_gaussian_variance


def _chi_square_p(draws: np.ndarray, sigma: float) -> float:
    """p-value of a chi-square test of ``draws`` against the pmf (tails merged, >= 5 expected)."""
    n = draws.size
    half = int(math.ceil(6 * sigma)) + 2
    support = np.arange(-half, half + 1)
    expected = discrete_gaussian_pmf(sigma, support) * n
    keep = expected >= 5
    lo, hi = support[keep].min(), support[keep].max()
    inner = np.arange(lo, hi + 1)
    exp_inner = discrete_gaussian_pmf(sigma, inner) * n
    obs_inner = np.array([(draws == x).sum() for x in inner])
    obs = np.concatenate([[np.sum(draws < lo)], obs_inner, [np.sum(draws > hi)]])
    exp = np.concatenate([[n * 0.5 * (1 - exp_inner.sum() / n)], exp_inner,
                          [n * 0.5 * (1 - exp_inner.sum() / n)]])
    if exp[0] < 5:  # nothing left in the tails worth a bin: fold them into the ends
        obs = np.concatenate([[obs[0] + obs[1]], obs[2:-2], [obs[-2] + obs[-1]]])
        exp = np.concatenate([[exp[0] + exp[1]], exp[2:-2], [exp[-2] + exp[-1]]])
    exp = exp * (obs.sum() / exp.sum())
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0, 20.0])
def test_vectorised_sampler_matches_the_pmf(sigma: float) -> None:
    draws = sample_discrete_gaussian(sigma, 200_000, np.random.default_rng(7))
    assert draws.dtype == np.int64
    assert _chi_square_p(draws, sigma) > 1e-4
    assert abs(draws.var() / discrete_gaussian_variance(sigma) - 1) < 0.02


def test_exact_rational_sampler_matches_the_pmf() -> None:
    sigma2 = Fraction(9, 4)
    # the exact sampler draws from the OS CSPRNG (secrets): not seedable, p > 1e-4 is loose
    draws = np.array([sample_discrete_gaussian_exact(sigma2) for _ in range(4000)])
    assert _chi_square_p(draws, 1.5) > 1e-4
    assert abs(draws.mean()) < 0.15


def test_large_sigma_draws_have_the_requested_variance_and_no_bias() -> None:
    sigma = 2.0**30
    draws = sample_discrete_gaussian(sigma, 100_000, np.random.default_rng(1))
    assert abs(draws.astype(np.float64).std() / sigma - 1) < 0.01
    assert abs(draws.astype(np.float64).mean()) < 5 * sigma / math.sqrt(draws.size)


def test_a_million_draws_take_well_under_a_second() -> None:
    import time

    rng = np.random.default_rng(3)
    t0 = time.perf_counter()
    sample_discrete_gaussian(1e6, 1_000_000, rng)
    assert time.perf_counter() - t0 < 2.0  # ~0.1 s alone; slack for a loaded machine


def test_sigma_zero_gives_zeros_and_bad_sigma_is_refused() -> None:
    assert not sample_discrete_gaussian(0.0, 10, np.random.default_rng(0)).any()
    for bad in (-1.0, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="sigma"):
            sample_discrete_gaussian(bad, 3, np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma2"):
        sample_discrete_gaussian_exact(Fraction(0))
