"""Mask expansion: AES-256-CTR keystreams read as integer vectors mod 2^k.

A mask is the AES-256-CTR keystream under a 32-byte key (counter block starting at zero;
every key is used for one mask only), read as words of the ring's own dtype
(:func:`~protocol.codec.ring_dtype`: ``uint8`` for k <= 8, ``uint16`` for k <= 16, ``uint32``
for k <= 32, else ``uint64``; native byte order, little-endian on every supported platform).
Arithmetic wraps modulo 2^8, 2^16, 2^32 or 2^64, which 2^k divides, so reducing with
``& (2^k - 1)`` once at the end gives the result mod 2^k, and every coordinate of a mask is
uniform on Z/2^k.

:func:`apply_masks` adds and subtracts many masks into one vector chunk by chunk: the
chunk of the accumulator stays in cache while each key's keystream is written into one
reusable buffer with ``update_into`` and added through a ``frombuffer`` view, so the cost
is close to that of the raw keystream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from privacy.secagg.errors import SecAggError
from protocol.codec import ring_dtype, ring_reduce

__all__ = ["CHUNK_BYTES", "apply_masks", "expand_mask", "keystream_rate_probe"]

#: Keystream bytes produced per cipher call; fits the accumulator chunk in L2 cache.
CHUNK_BYTES = 128 * 1024
_ZERO_NONCE = bytes(16)
_BLOCK = 16


def _encryptor(key: bytes) -> CipherContext:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise SecAggError("mask key must be 32 bytes")
    return Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_NONCE)).encryptor()


def apply_masks(
    acc: np.ndarray,
    *,
    add: Sequence[bytes] = (),
    subtract: Sequence[bytes] = (),
    modulus_bits: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``(acc + sum(add) - sum(subtract)) mod 2^k``, in place unless ``out`` is given.

    Parameters
    ----------
    acc : numpy.ndarray
        1-D, C-contiguous vector of :func:`~protocol.codec.ring_dtype` ``(modulus_bits)``.
    add, subtract : sequence of bytes
        32-byte mask keys.
    modulus_bits : int
        k; the result is reduced mod 2^k.
    out : numpy.ndarray, optional
        Where to write the result (same shape and dtype as ``acc``); ``acc`` itself by
        default. Writing elsewhere saves copying an input that must stay unchanged.

    Returns
    -------
    numpy.ndarray
        ``out`` (or ``acc``).
    """
    dtype = ring_dtype(modulus_bits)
    if acc.dtype != dtype or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError(
            f"`acc` must be a 1-D contiguous {dtype} vector, got {acc.dtype} {acc.shape}"
        )
    if out is None:
        out = acc
    elif out.dtype != dtype or out.shape != acc.shape or not out.flags.c_contiguous:
        raise ValueError(f"`out` must be a contiguous {dtype} vector of shape {acc.shape}")
    jobs = [(_encryptor(k), np.add) for k in add] + [(_encryptor(k), np.subtract) for k in subtract]
    if not jobs:
        if out is not acc:
            np.copyto(out, acc)
        return ring_reduce(out, modulus_bits)
    width = 8 * dtype.itemsize
    reduce_mask = dtype.type((1 << modulus_bits) - 1) if modulus_bits < width else None
    item = dtype.itemsize
    chunk = max(1, CHUNK_BYTES // item)
    zeros = bytes(chunk * item)
    stream = np.empty(chunk * item + _BLOCK, dtype=np.uint8)
    sink = stream.data
    length = acc.shape[0]
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        nbytes = (stop - start) * item
        src = zeros if nbytes == len(zeros) else memoryview(zeros)[:nbytes]
        view = stream[:nbytes].view(dtype)
        first, part = acc[start:stop], out[start:stop]
        for enc, op in jobs:
            enc.update_into(src, sink)
            op(first, view, out=part)
            first = part
        if reduce_mask is not None:  # while the chunk is in cache
            np.bitwise_and(part, reduce_mask, out=part)
    return out


def expand_mask(key: bytes, *, length: int, modulus_bits: int) -> np.ndarray:
    """Return the mask of ``key`` as a fresh vector of ``length`` elements mod 2^k."""
    if type(length) is not int or length < 0:
        raise ValueError(f"`length` must be an int >= 0, got {length!r}")
    return apply_masks(
        np.zeros(length, dtype=ring_dtype(modulus_bits)), add=[key], modulus_bits=modulus_bits
    )


def keystream_rate_probe(key: bytes, *, nbytes: int) -> None:
    """Produce ``nbytes`` of raw AES-256-CTR keystream in :data:`CHUNK_BYTES` calls.

    The reference the mask rate is measured against (benchmarks only).
    """
    enc = _encryptor(key)
    zeros = bytes(CHUNK_BYTES)
    out = bytearray(CHUNK_BYTES + _BLOCK)
    for _ in range(nbytes // CHUNK_BYTES):
        enc.update_into(zeros, out)
