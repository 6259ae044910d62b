"""Masks are AES-256-CTR keystreams read as ring vectors; adding and subtracting cancels."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy.secagg import SecAggError
from privacy.secagg.masks import CHUNK_BYTES, apply_masks, expand_mask
from protocol.codec import ring_dtype


def _reference(key: bytes, length: int, bits: int) -> np.ndarray:
    dtype = ring_dtype(bits)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(length * dtype.itemsize))
    vec = np.frombuffer(stream, dtype=dtype.newbyteorder("<")).astype(dtype)
    if bits < 8 * dtype.itemsize:
        vec &= dtype.type((1 << bits) - 1)
    return vec


@pytest.mark.parametrize("bits", [1, 17, 32, 33, 64])
@pytest.mark.parametrize("length", [0, 1, 5, CHUNK_BYTES // 4 + 3, 3 * CHUNK_BYTES // 8 - 1])
def test_mask_is_the_aes_ctr_keystream_mod_2k(bits: int, length: int) -> None:
    key = os.urandom(32)
    mask = expand_mask(key, length=length, modulus_bits=bits)
    assert mask.dtype == ring_dtype(bits) and mask.shape == (length,)
    np.testing.assert_array_equal(mask, _reference(key, length, bits))


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(2, 64),
    length=st.integers(1, 3000),
    n_keys=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_added_and_subtracted_masks_cancel(bits: int, length: int, n_keys: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dtype = ring_dtype(bits)
    x = (rng.integers(0, 2**63, length, dtype=np.uint64) >> (64 - bits)).astype(dtype)
    keys = [rng.bytes(32) for _ in range(n_keys)]
    masked = apply_masks(x, add=keys, modulus_bits=bits, out=np.empty_like(x))
    assert not np.array_equal(masked, x) or length * bits < 8
    back = apply_masks(masked.copy(), subtract=keys, modulus_bits=bits)
    np.testing.assert_array_equal(back, x)
    expected = x.astype(object)
    for k in keys:
        expected = expected + _reference(k, length, bits).astype(object)
    np.testing.assert_array_equal(masked.astype(object), expected % (1 << bits))


def test_apply_masks_leaves_input_untouched_when_out_given() -> None:
    x = np.arange(100, dtype=np.uint32)
    out = np.empty_like(x)
    apply_masks(x, add=[os.urandom(32)], modulus_bits=32, out=out)
    np.testing.assert_array_equal(x, np.arange(100, dtype=np.uint32))


def test_mask_bits_are_uniform() -> None:
    mask = expand_mask(b"\x07" * 32, length=200_000, modulus_bits=32)
    top = (mask >> np.uint32(24)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert stats.kstest(mask / 2**32, "uniform").pvalue > 1e-4


def test_distinct_keys_give_unrelated_masks() -> None:
    a = expand_mask(b"\x01" * 32, length=1000, modulus_bits=64)
    b = expand_mask(b"\x02" * 32, length=1000, modulus_bits=64)
    assert np.count_nonzero(a == b) == 0


@pytest.mark.parametrize("key", [b"", b"x" * 16, "k" * 32])
def test_mask_keys_must_be_32_bytes(key: object) -> None:
    with pytest.raises(SecAggError):
        expand_mask(key, length=4, modulus_bits=32)  # type: ignore[arg-type]


def test_accumulator_must_match_the_ring() -> None:
    with pytest.raises(ValueError, match="acc"):
        apply_masks(np.zeros(4, np.uint64), add=[b"k" * 32], modulus_bits=32)
    with pytest.raises(ValueError, match="acc"):
        apply_masks(np.zeros((2, 2), np.uint32), add=[b"k" * 32], modulus_bits=32)
    with pytest.raises(ValueError, match="out"):
        apply_masks(np.zeros(4, np.uint32), modulus_bits=32, out=np.zeros(5, np.uint32))
