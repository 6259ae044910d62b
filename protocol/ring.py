"""Lean rings for secure aggregation: the ring a round needs, its grid, and the site's check.

Without site-level DP a site's input is its clipped, weighted delta on a grid of step s,
mod 2^k (:func:`protocol.codec.encode`). :func:`auto_modulus_bits` picks the k a round needs
(at most 32), :func:`grid_scale` the finest step that k holds without a wrap for the cohort,
and :func:`check_ring` is the site's refusal of a ring/grid pair under which its input, or the
cohort's sum, could wrap. The masked vector travels in the narrowest unsigned dtype that holds
k bits (:func:`protocol.codec.ring_dtype`): 2 bytes per parameter up to 16 bits, 4 up to 32.
"""

from __future__ import annotations

import math

from protocol.codec import _positive, choose_modulus_bits

__all__ = [
    "AUTO_MAX_BITS",
    "MAX_SECAGG_BITS",
    "MIN_SECAGG_BITS",
    "PRECISION_BITS",
    "auto_modulus_bits",
    "check_ring",
    "grid_scale",
]

#: the smallest ring a run may ask for (``secagg-bits``)
MIN_SECAGG_BITS = 16
#: the largest ring a run may ask for (uint64)
MAX_SECAGG_BITS = 64
#: the largest ring :func:`auto_modulus_bits` picks: at most 32 bits (uint32) per parameter;
#: a run may ask for 16 (``secagg-bits``: uint16, 2 bytes per parameter)
AUTO_MAX_BITS = 32
#: error target of :func:`auto_modulus_bits`, in bits below the clip's RMS coordinate
PRECISION_BITS = 8
#: relative float64 slack on the grid step (the site recomputes the bound in float64)
_SLACK = 2.0**-40
#: grid values must stay below 2^52 (float64 rounding exact to well below one step)
_MAX_GRID = float(2**52)


def _count(name: str, value: object) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    return value


def _ring_bits(modulus_bits: object) -> int:
    if type(modulus_bits) is not int or not 2 <= modulus_bits <= MAX_SECAGG_BITS:
        raise ValueError(f"`modulus_bits` must be an int in [2, 64], got {modulus_bits!r}")
    return modulus_bits


def _per_site_room(n_sites: int, modulus_bits: int) -> int:
    """Largest grid magnitude M of one site (before the +1 of rounding) that n sites hold."""
    return int((1 << (modulus_bits - 1)) - 1) // n_sites - 1


def grid_scale(*, n_sites: int, clip_norm: float, max_weight: float, modulus_bits: int) -> float:
    """Finest grid step s under which ``n_sites`` inputs cannot wrap mod 2^k.

    A site's integer is at most ``floor(C * W / s) + 1`` in magnitude, so the step is
    ``C * W * (1 + slack) / M`` with ``M = floor((2^(k-1) - 1) / n) - 1``; then
    :func:`protocol.codec.choose_modulus_bits` of the result is at most k and
    :func:`check_ring` passes.

    Raises
    ------
    ValueError
        If an argument is out of range or the ring cannot hold ``n_sites`` at all.
    """
    n = _count("n_sites", n_sites)
    bits = _ring_bits(modulus_bits)
    clip = _positive("clip_norm", clip_norm)
    weight = _positive("max_weight", max_weight)
    room = _per_site_room(n, bits)
    if room < 1:
        raise ValueError(f"a 2^{bits} ring cannot hold {n} sites")
    if room >= _MAX_GRID / 2:
        room = int(_MAX_GRID / 2)  # finer grids buy nothing in float64
    return clip * weight * (1.0 + _SLACK) / room


def auto_modulus_bits(*, n_sites: int, max_weight: float, dim: int) -> int:
    """Return the ring a round needs: the smallest k meeting the error target, capped at 32.

    The rule. The decoded mean has, per coordinate, an unbiased stochastic-rounding error
    of RMS at most ``sqrt(n) * s / (2 T)`` (n contributors, grid step s, total weight T).
    It is measured against the clip's RMS coordinate ``C / sqrt(dim)`` (a delta of norm C
    spread over ``dim`` coordinates): k is the smallest ring whose finest non-wrapping grid
    (:func:`grid_scale`) keeps that RMS error at most ``2^-PRECISION_BITS * C / sqrt(dim)``
    even when every contributor has weight 1 (T = n, the worst case the coordinator cannot
    rule out; real weights shrink the error by a further n / T). The clip cancels out (the
    grid is a fixed fraction of ``C * W``), so k follows from the cohort n, the max weight W
    and ``dim``. With example-level DP on, a site's delta already carries Gaussian noise at
    least of the signal's scale, so the same target is a still smaller fraction of the
    noise std: the rule never lets quantisation compete with the DP noise.

    k is capped at :data:`AUTO_MAX_BITS` (uint32 on the wire, half the bytes of uint64;
    a ring of at most 16 bits travels as uint16):
    beyond it the target is not met in that worst case, and the bound the participation
    record states (computed with the real total weight) is what holds. The weight
    coordinate never widens the ring: it travels in limbs
    (:func:`protocol.secure_stats.weight_limbs`).
    """
    n = _count("n_sites", n_sites)
    d = _count("dim", dim)
    weight = _positive("max_weight", max_weight)
    # s / (2 sqrt n) <= 2^-P C / sqrt(d), s = C W / M  <=>  M >= W 2^(P-1) sqrt(d / n)
    need = weight * 2.0 ** (PRECISION_BITS - 1) * math.sqrt(d / n) * (1.0 + _SLACK)
    for bits in range(MIN_SECAGG_BITS, AUTO_MAX_BITS + 1):
        if _per_site_room(n, bits) >= need:
            return bits
    return AUTO_MAX_BITS


def check_ring(
    *, n_sites: int, clip_norm: float, max_weight: float, scale: float, modulus_bits: int
) -> None:
    """Raise ``ValueError`` unless the sum of ``n_sites`` inputs on this grid cannot wrap.

    A site runs it on the ring and grid the coordinator hands it: a ring too small for the
    cohort's clipped, weighted inputs (one under which a site's input, or the sum, could
    wrap silently) is refused, naming the figures.
    """
    bits = _ring_bits(modulus_bits)
    try:
        needed = choose_modulus_bits(n_sites=n_sites, clip_norm=clip_norm,
                                     max_weight=max_weight, scale=scale, dim=1)
    except ValueError as exc:
        raise ValueError(f"the ring and grid are inconsistent: {exc}") from None
    if needed > bits:
        raise ValueError(
            f"`modulus_bits` {bits} cannot hold {n_sites} inputs clipped to {clip_norm:g} at "
            f"weight <= {max_weight:g} on grid step {scale:.6g} (needs {needed} bits): "
            "a sum could wrap"
        )
