"""Site-level DP encodings of an adapter delta: distributed (in the ring) and central.

Distributed, at each site (KLS 2021, Algorithm 1)::

    x  = clip_C(flatten(delta))                  L2 norm <= C
    y  = H D pad(x) / gamma                      shared rotation, scaled to the grid
    q  = randomised rounding of y, redrawn until ||q||_2 <= Δ₂   (conditional rounding)
    v  = q + N_Z(0, local_sigma^2)^d  mod 2^k    the site's own discrete Gaussian noise

Only ``v`` is masked and leaves the site. The server sums the masked vectors, lifts the
sum to the centred range, checks that it did not wrap, multiplies by gamma and rotates back
(:func:`decode_ddg`). The sum is unweighted: one site moves it by at most C whatever its
number of examples, which is what the site-level guarantee needs.

Central (a trusted server, for comparison): :func:`central_noisy_sum` clips each delta to
C, adds them up and adds ``N(0, sigma^2)`` per coordinate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from privacy.ddg.params import DDGParams
from privacy.ddg.rotation import RandomizedHadamard
from privacy.ddg.sampler import sample_discrete_gaussian
from protocol.codec import Manifest, ManifestError, clip_l2, flatten, ring_dtype, ring_reduce

__all__ = ["MAX_ROUNDING_TRIES", "WrapError", "central_noisy_sum", "decode_ddg", "encode_ddg"]

logger = logging.getLogger(__name__)

#: Conditional rounding succeeds with probability >= 1 - beta per try (~0.39 at worst).
MAX_ROUNDING_TRIES = 1000


class WrapError(ValueError):
    """The decoded sum lies outside the no-wrap range: it must not be released."""


def _conditional_round(y: np.ndarray, bound: float, rng: np.random.Generator) -> np.ndarray:
    floor = np.floor(y)
    frac = y - floor
    base = floor.astype(np.int64)
    bound_sq = bound * bound
    for _ in range(MAX_ROUNDING_TRIES):
        q: np.ndarray = base + (rng.random(y.shape[0]) < frac)
        if float(np.dot(q.astype(np.float64), q.astype(np.float64))) <= bound_sq:
            return q
    raise ValueError(f"conditional rounding failed {MAX_ROUNDING_TRIES} times (bound {bound:.4g})")


def encode_ddg(delta: Mapping[str, np.ndarray], manifest: Manifest, params: DDGParams,
               rng: np.random.Generator, *, noise: bool = True) -> np.ndarray:
    """Return a site's noised encoding mod 2^k, of length ``params.padded``.

    Parameters
    ----------
    delta, manifest
        The adapter delta and its manifest (``manifest.dim`` must equal ``params.dim``).
    params : DDGParams
        The round's parameters, as the server sent them.
    rng : numpy.random.Generator
        Rounding and noise randomness; :func:`privacy.ddg.sampler.secure_rng` at a site.
    noise : bool
        False only for tests and the noise-off comparison.
    """
    if manifest.dim != params.dim:
        raise ManifestError(f"manifest has dimension {manifest.dim}, the round says {params.dim}")
    x = clip_l2(flatten(delta, manifest), params.clip)
    y = RandomizedHadamard(bytes.fromhex(params.rotation_seed), params.dim).forward(x)
    q = _conditional_round(y / params.gamma, params.l2_sensitivity, rng)
    if noise and params.local_sigma > 0:
        q = q + sample_discrete_gaussian(params.local_sigma, params.padded, rng)
    dtype = ring_dtype(params.modulus_bits)
    return ring_reduce(q.view(np.uint64).astype(dtype, copy=False), params.modulus_bits)


def _centred(vec: np.ndarray, bits: int) -> np.ndarray:
    signed = vec.astype(np.int64)
    signed[signed >= (1 << (bits - 1))] -= 1 << bits
    return signed


def decode_ddg(sum_vec: np.ndarray, manifest: Manifest, params: DDGParams, *,
               contributors: int) -> dict[str, np.ndarray]:
    """Return the float64 sum of the contributors' (noised) clipped deltas, in manifest order.

    Raises
    ------
    WrapError
        If a coordinate of the lifted sum exceeds the no-wrap bound for ``contributors``
        sites (a wrap, or a vector not encoded with these parameters).
    ManifestError
        On a wrong dtype or length.
    """
    dtype = ring_dtype(params.modulus_bits)
    if not isinstance(sum_vec, np.ndarray) or sum_vec.dtype != dtype:
        raise ManifestError(f"sum vector must be a {dtype} array, got "
                            f"{getattr(sum_vec, 'dtype', type(sum_vec))}")
    if sum_vec.shape != (params.padded,):
        raise ManifestError(f"sum vector has shape {sum_vec.shape}, expected ({params.padded},)")
    if manifest.dim != params.dim:
        raise ManifestError(f"manifest has dimension {manifest.dim}, the round says {params.dim}")
    if type(contributors) is not int or not 1 <= contributors <= params.max_contributors:
        raise ValueError(f"`contributors` must be in [1, {params.max_contributors}], "
                         f"got {contributors!r}")
    lifted = _centred(sum_vec, params.modulus_bits)
    limit = params.signal_bound() + params.noise_bound()
    peak = float(np.max(np.abs(lifted))) if lifted.size else 0.0
    if peak > limit:
        raise WrapError(f"decoded sum reaches {peak:.4g} grid steps, beyond the no-wrap bound "
                        f"{limit:.4g}: refusing to release it")
    rot = RandomizedHadamard(bytes.fromhex(params.rotation_seed), params.dim)
    flat = rot.inverse(lifted.astype(np.float64) * params.gamma)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in manifest.tensors:
        out[spec.name] = flat[offset: offset + spec.size].reshape(spec.shape)
        offset += spec.size
    return out


def central_noisy_sum(deltas: Sequence[Mapping[str, np.ndarray]], manifest: Manifest, *,
                      clip: float, sigma: float,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``sum_i clip_C(delta_i) + N(0, sigma^2 I)`` (float64, manifest order): a trusted server."""
    if not deltas:
        raise ValueError("nothing to aggregate")
    acc = np.zeros(manifest.dim, dtype=np.float64)
    for d in deltas:
        acc += clip_l2(flatten(d, manifest), clip)
    if sigma > 0:
        acc += rng.normal(0.0, sigma, manifest.dim)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in manifest.tensors:
        out[spec.name] = acc[offset: offset + spec.size].reshape(spec.shape)
        offset += spec.size
    return out
