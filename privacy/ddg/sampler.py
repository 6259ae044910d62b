"""Discrete Gaussian sampling (Canonne, Kamath and Steinke, NeurIPS 2020, arXiv 2004.00010).

``N_Z(0, sigma^2)`` puts mass proportional to ``exp(-x^2 / (2 sigma^2))`` on every integer x.
Two samplers implement CKS 2020, Algorithm 3 (rejection from a discrete Laplace of scale
``t = floor(sigma) + 1``, accepting ``Y`` with probability
``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``):

* :func:`sample_discrete_gaussian_exact` draws one value with exact rational arithmetic
  (``fractions.Fraction``) and the OS CSPRNG (``secrets``): Bernoulli(exp(-gamma)) by
  Algorithm 1, the discrete Laplace by Algorithm 2. It has no floating point at all and is
  the reference the tests check the fast sampler against; it costs ~50 us per draw.
* :func:`sample_discrete_gaussian` is the same algorithm vectorised over numpy batches: the
  discrete Laplace as the difference of two geometric variables, the acceptance test as one
  uniform against the float64 acceptance probability. The only deviation from the exact
  sampler is float64 rounding of that probability (relative error ~2^-52 per draw), the
  approach of TensorFlow Privacy's ``discrete_gaussian_utils``. It draws 10^6 values in well
  under a second. Pass a ``numpy.random.Generator`` seeded from the OS (:func:`secure_rng`)
  for noise that must stay secret.
"""

from __future__ import annotations

import logging
import math
import secrets
from fractions import Fraction

import numpy as np

__all__ = [
    "discrete_gaussian_pmf",
    "discrete_gaussian_variance",
    "sample_discrete_gaussian",
    "sample_discrete_gaussian_exact",
    "secure_rng",
]

logger = logging.getLogger(__name__)

#: Above this sigma every float64 step of the vectorised sampler is still exact to ~2^-52
#: relative; larger values would let the geometric draws overflow int64.
MAX_SIGMA = float(2**50)


def secure_rng() -> np.random.Generator:
    """Return a PCG64 generator keyed with 256 bits from the OS CSPRNG (fresh on every call)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(256))))


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"`sigma` must be a number, got {sigma!r}")
    s = float(sigma)
    if not math.isfinite(s) or s < 0 or s > MAX_SIGMA:
        raise ValueError(f"`sigma` must be in [0, 2^50], got {sigma!r}")
    return s


# ----------------------------------------------------------------------------- exact sampler


def _bernoulli(p: Fraction) -> bool:
    """Bernoulli(p) for rational p in [0, 1], exactly."""
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_neg(gamma: Fraction) -> bool:
    """Bernoulli(exp(-gamma)) for rational gamma >= 0 (CKS 2020, Algorithm 1)."""
    while gamma > 1:
        if not _bernoulli_exp_neg(Fraction(1)):
            return False
        gamma -= 1
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def _discrete_laplace_exact(t: int) -> int:
    """P(Y = y) proportional to exp(-|y| / t), for an integer t >= 1 (CKS 2020, Algorithm 2)."""
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp_neg(Fraction(u, t)):
            continue
        v = 0
        while _bernoulli_exp_neg(Fraction(1)):
            v += 1
        y = u + t * v
        negative = secrets.randbelow(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def sample_discrete_gaussian_exact(sigma2: Fraction | int) -> int:
    """One draw from N_Z(0, sigma2), exactly (CKS 2020, Algorithm 3; no floating point).

    Parameters
    ----------
    sigma2 : Fraction or int
        The variance parameter sigma^2 > 0, as an exact rational (``Fraction(x)`` of a float
        is exact).
    """
    s2 = Fraction(sigma2)
    if s2 <= 0:
        raise ValueError(f"`sigma2` must be > 0, got {sigma2!r}")
    t = math.isqrt(s2.numerator * s2.denominator) // s2.denominator + 1  # floor(sigma) + 1
    while True:
        y = _discrete_laplace_exact(t)
        gamma = (abs(y) - s2 / t) ** 2 / (2 * s2)
        if _bernoulli_exp_neg(gamma):
            return y


# ----------------------------------------------------------------------------- vectorised


def sample_discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` independent draws from N_Z(0, sigma^2) as int64 (vectorised CKS Algorithm 3).

    Parameters
    ----------
    sigma : float
        sigma >= 0 (0 gives zeros), at most 2^50.
    size : int
        Number of draws.
    rng : numpy.random.Generator
        Source of randomness; :func:`secure_rng` for secret noise.
    """
    s = _check_sigma(sigma)
    if type(size) is not int or size < 0:
        raise ValueError(f"`size` must be an int >= 0, got {size!r}")
    out = np.zeros(size, dtype=np.int64)
    if s == 0.0 or size == 0:
        return out
    s2 = s * s
    t = math.floor(s) + 1
    p = -math.expm1(-1.0 / t)  # geometric success probability of the discrete Laplace
    shift = s2 / t
    filled = 0
    while filled < size:
        need = size - filled
        batch = need + need // 2 + 64  # acceptance is >= ~0.6 for every sigma
        y = rng.geometric(p, batch) - rng.geometric(p, batch)
        ay = np.abs(y).astype(np.float64)
        accept = rng.random(batch) < np.exp(-((ay - shift) ** 2) / (2.0 * s2))
        kept = y[accept][:need]
        out[filled:filled + kept.size] = kept
        filled += kept.size
    return out


# ----------------------------------------------------------------------------- reference


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """P(X = x) of N_Z(0, sigma^2) at the integers ``support`` (normaliser summed to 1e-300)."""
    s = _check_sigma(sigma)
    if s == 0.0:
        at_zero: np.ndarray = np.asarray(support) == 0
        return at_zero.astype(np.float64)
    half = int(math.ceil(40.0 * s)) + 1
    xs = np.arange(-half, half + 1, dtype=np.float64)
    norm = float(np.sum(np.exp(-(xs**2) / (2.0 * s * s))))
    x = np.asarray(support, dtype=np.float64)
    pmf: np.ndarray = np.exp(-(x**2) / (2.0 * s * s)) / norm
    return pmf


def discrete_gaussian_variance(sigma: float) -> float:
    """Var of N_Z(0, sigma^2) (at most sigma^2; equal to it to 1e-9 relative for sigma >= 1)."""
    s = _check_sigma(sigma)
    if s == 0.0:
        return 0.0
    if s > 1e4:
        return s * s
    half = int(math.ceil(40.0 * s)) + 1
    xs = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-(xs**2) / (2.0 * s * s))
    return float(np.sum(w * xs**2) / np.sum(w))
