"""Shamir secret sharing of short byte secrets over the prime field GF(2^521 - 1).

A secret of 1 to 64 bytes is read as one field element (big-endian), so a 32-byte key is
shared without splitting. A share encodes ``(x, y)`` with the holder's evaluation point
``x`` and the secret length; any ``threshold`` shares with distinct ``x`` reconstruct the
secret, fewer reveal nothing about it.

Wire format of a share (:data:`SHARE_LEN` bytes)::

    version (1) | secret length (1) | x (8, big-endian) | y (66, big-endian)
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Sequence

from privacy.secagg.errors import SecAggError

__all__ = [
    "MAX_SECRET_LEN",
    "PRIME",
    "SHARE_LEN",
    "combine_shares",
    "share_x",
    "split_secret",
]

#: The Mersenne prime 2^521 - 1; every secret of up to 64 bytes is an element of GF(PRIME).
PRIME = (1 << 521) - 1
MAX_SECRET_LEN = 64
_Y_LEN = 66
_VERSION = 1
_HEADER = struct.Struct(">BBQ")
SHARE_LEN = _HEADER.size + _Y_LEN
_MAX_X = (1 << 64) - 1


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if type(value) is not int:
        raise ValueError(f"`{name}` must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def split_secret(
    secret: bytes,
    *,
    threshold: int,
    xs: Sequence[int],
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> list[bytes]:
    """Split ``secret`` into one share per evaluation point in ``xs``.

    Parameters
    ----------
    secret : bytes
        1 to :data:`MAX_SECRET_LEN` bytes.
    threshold : int
        Number of shares needed to reconstruct; ``1 <= threshold <= len(xs)``.
    xs : sequence of int
        Distinct evaluation points in ``[1, 2^64 - 1]``, one per share holder.
    randbelow : callable, optional
        Source of uniform field elements; a seam for known-answer tests only.

    Returns
    -------
    list of bytes
        ``len(xs)`` shares, in the order of ``xs``.
    """
    if not isinstance(secret, (bytes, bytearray)):
        raise ValueError(f"`secret` must be bytes, got {type(secret).__name__}")
    if not 1 <= len(secret) <= MAX_SECRET_LEN:
        raise ValueError(f"`secret` must be 1..{MAX_SECRET_LEN} bytes, got {len(secret)}")
    _check_int("threshold", threshold, minimum=1)
    points = [_check_int("xs[i]", x, minimum=1) for x in xs]
    if any(x > _MAX_X for x in points):
        raise ValueError(f"`xs` must lie in [1, 2^64 - 1], got {max(points)}")
    if len(set(points)) != len(points):
        raise ValueError("`xs` must be distinct")
    if threshold > len(points):
        raise ValueError(f"`threshold` must be <= len(xs) = {len(points)}, got {threshold}")
    coeffs = [int.from_bytes(secret, "big")] + [randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(_HEADER.pack(_VERSION, len(secret), x) + y.to_bytes(_Y_LEN, "big"))
    coeffs.clear()
    return shares


def _parse(share: bytes) -> tuple[int, int, int]:
    if not isinstance(share, (bytes, bytearray)) or len(share) != SHARE_LEN:
        raise SecAggError("malformed secret share")
    version, length, x = _HEADER.unpack_from(share)
    y = int.from_bytes(share[_HEADER.size :], "big")
    if version != _VERSION or not 1 <= length <= MAX_SECRET_LEN or x == 0 or y >= PRIME:
        raise SecAggError("malformed secret share")
    return length, x, y


def share_x(share: bytes) -> int:
    """Return the evaluation point of ``share`` (the holder it was made for).

    Raises
    ------
    SecAggError
        If ``share`` is malformed.
    """
    return _parse(share)[1]


def combine_shares(shares: Sequence[bytes], *, threshold: int) -> bytes:
    """Reconstruct a secret from at least ``threshold`` shares.

    Only the first ``threshold`` shares are used (Lagrange interpolation at 0); callers
    that can should check the result against a commitment.

    Raises
    ------
    SecAggError
        If fewer than ``threshold`` shares are given, a share is malformed, the shares
        disagree on the secret length or repeat an evaluation point, or the interpolated
        value does not fit the secret length (a sign of wrong or too few shares).
    """
    _check_int("threshold", threshold, minimum=1)
    if len(shares) < threshold:
        raise SecAggError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    parsed = [_parse(s) for s in shares[:threshold]]
    lengths = {p[0] for p in parsed}
    xs = [p[1] for p in parsed]
    if len(lengths) != 1 or len(set(xs)) != len(xs):
        raise SecAggError("inconsistent secret shares")
    value = 0
    for i, (_, xi, yi) in enumerate(parsed):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        value = (value + yi * num * pow(den, -1, PRIME)) % PRIME
    length = lengths.pop()
    if value.bit_length() > 8 * length:
        raise SecAggError("secret shares do not reconstruct a secret")
    return value.to_bytes(length, "big")
