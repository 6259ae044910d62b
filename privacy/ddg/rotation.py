"""The seeded randomised Hadamard transform every site applies before rounding.

``R(x) = H D pad(x)``, with ``pad`` to the next power of two ``d``, ``D`` a diagonal of
random signs drawn from a public 256-bit seed shared by all sites of a round, and ``H`` the
orthonormal Walsh-Hadamard matrix (``H = H^T = H^-1``). R is orthogonal, so norms are kept;
it spreads a vector's mass evenly over the coordinates, which keeps conditional randomised
rounding and the modular range tight (Kairouz, Liu and Steinke 2021, Sec. 4). The seed is
public: the rotation serves utility, not privacy.
"""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np

__all__ = ["RandomizedHadamard", "fwht", "padded_dim"]

logger = logging.getLogger(__name__)

_DOMAIN = b"confide/site-dp/rotation/v1"  # fixed label: changing it changes every rotation


def padded_dim(dim: int) -> int:
    """Return the smallest power of two >= ``dim``."""
    if type(dim) is not int or dim < 1:
        raise ValueError(f"`dim` must be an int >= 1, got {dim!r}")
    return 1 << (dim - 1).bit_length()


def fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform of a float vector of power-of-two length."""
    d = x.shape[0]
    if d & (d - 1) or d == 0:
        raise ValueError(f"length must be a power of two, got {d}")
    y = np.array(x, dtype=np.float64, copy=True)
    h = 1
    while h < d:
        v = y.reshape(-1, 2, h)
        a = v[:, 0, :] + v[:, 1, :]
        b = v[:, 0, :] - v[:, 1, :]
        v[:, 0, :] = a
        v[:, 1, :] = b
        h *= 2
    y *= 1.0 / math.sqrt(d)
    return y


class RandomizedHadamard:
    """``x -> H D pad(x)`` and its inverse, for vectors of length ``dim``.

    Parameters
    ----------
    seed : bytes
        32 public bytes, the same at every site of the round (sent in the round config).
    dim : int
        Length of the flattened delta.
    """

    def __init__(self, seed: bytes, dim: int) -> None:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ValueError(f"`seed` must be 32 bytes, got {type(seed).__name__} "
                             f"of length {len(seed) if isinstance(seed, bytes) else '-'}")
        self.dim = dim
        self.padded = padded_dim(dim)
        key = int.from_bytes(hashlib.sha256(_DOMAIN + seed).digest(), "big")
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
        self.signs = gen.integers(0, 2, self.padded, dtype=np.int8).astype(np.float64) * 2 - 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Rotate a length-``dim`` vector to a length-``padded`` one (norm kept)."""
        if x.shape != (self.dim,):
            raise ValueError(f"vector has shape {x.shape}, rotation expects ({self.dim},)")
        y = np.zeros(self.padded, dtype=np.float64)
        y[: self.dim] = x
        return fwht(y * self.signs)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Undo :meth:`forward` and drop the padding (length ``dim``)."""
        if y.shape != (self.padded,):
            raise ValueError(f"vector has shape {y.shape}, rotation expects ({self.padded},)")
        return (fwht(y) * self.signs)[: self.dim]
