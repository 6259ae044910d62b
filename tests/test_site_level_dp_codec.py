"""Distributed discrete Gaussian encoding: rotation, conditional rounding, noise, no wrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.ddg import RandomizedHadamard, WrapError, decode_ddg, encode_ddg, plan_round
from privacy.ddg.codec import central_noisy_sum
from protocol.codec import Manifest, clip_l2, decode, encode, flatten, ring_reduce

SEED = "5a" * 32


def _deltas(n: int, rng: np.random.Generator, scale: float = 0.02) -> list[dict[str, np.ndarray]]:
    return [{"a": (rng.normal(size=(40, 8)) * scale).astype(np.float32),
             "b": (rng.normal(size=(17,)) * scale).astype(np.float32)} for _ in range(n)]


def _ring_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    acc = np.zeros_like(vectors[0], dtype=np.uint64)
    for v in vectors:
        acc += v.astype(np.uint64)
    return ring_reduce(acc.astype(vectors[0].dtype), bits)


def test_rotation_is_orthogonal_and_inverts_exactly() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=337)
    rot = RandomizedHadamard(bytes.fromhex(SEED), 337)
    y = rot.forward(x)
    assert y.shape == (512,)
    assert math.isclose(np.linalg.norm(y), np.linalg.norm(x), rel_tol=1e-12)
    np.testing.assert_allclose(rot.inverse(y), x, atol=1e-12)
    other = RandomizedHadamard(bytes.fromhex("01" * 32), 337).forward(x)
    assert not np.allclose(other, y)  # the seed matters; the same seed gives the same R


def test_noise_off_decodes_to_the_plain_secure_aggregation_sum_within_rounding() -> None:
    rng = np.random.default_rng(1)
    deltas = _deltas(6, rng)
    manifest = Manifest.from_arrays(deltas[0])
    clip = 0.3
    params = plan_round(clip=clip, dim=manifest.dim, modulus_bits=32, noise_multiplier=0.0,
                        cohort=6, max_contributors=6, rotation_seed=SEED)
    ddg = decode_ddg(_ring_sum([encode_ddg(d, manifest, params, rng) for d in deltas], 32),
                     manifest, params, contributors=6)
    # the existing codec with weight 1 (unweighted) is the plain secure-aggregation result
    scale, bits = clip / 2**40, 48
    plain = decode(ring_reduce(sum(encode(d, manifest, clip_norm=clip, weight=1.0, scale=scale,
                                          modulus_bits=bits, rng=rng).astype(np.uint64)
                                   for d in deltas), bits), manifest, scale=scale,
                   modulus_bits=bits)
    err = np.concatenate([(ddg[k] - plain[k]).ravel() for k in manifest.names])
    # rounding moves each rotated coordinate by < 1 grid step per site (plus the plain codec's)
    bound = 6 * params.gamma * math.sqrt(params.padded) + 6 * scale * math.sqrt(manifest.dim)
    assert np.linalg.norm(err) <= bound
    truth = sum(clip_l2(flatten(d, manifest), clip) for d in deltas)
    assert np.linalg.norm(truth) > 1000 * bound  # the comparison is not vacuous


def test_sum_of_t_noised_encodings_has_the_intended_variance() -> None:
    rng = np.random.default_rng(2)
    t, z, clip = 5, 1.3, 0.5
    manifest = Manifest.from_arrays({"w": np.zeros(16384, np.float32)})
    deltas = [{"w": rng.normal(size=16384).astype(np.float32) * 0.001} for _ in range(t)]
    params = plan_round(clip=clip, dim=16384, modulus_bits=32, noise_multiplier=z,
                        cohort=t, max_contributors=t, rotation_seed=SEED)
    total = _ring_sum([encode_ddg(d, manifest, params, rng) for d in deltas], 32)
    noisy = decode_ddg(total, manifest, params, contributors=t)["w"]
    truth = sum(clip_l2(d["w"].astype(np.float64), clip) for d in deltas)
    resid = noisy - truth
    assert math.isclose(params.aggregate_noise_variance(t), (z * clip) ** 2, rel_tol=1e-9)
    assert abs(resid.var() / (z * clip) ** 2 - 1) < 0.05  # 16384 coordinates: ~1% std error
    assert abs(resid.mean()) < 5 * z * clip / math.sqrt(16384)


def test_conditional_rounding_enforces_the_l2_bound_and_the_sum_cannot_wrap() -> None:
    rng = np.random.default_rng(3)
    manifest = Manifest.from_arrays({"w": np.zeros(64, np.float32)})
    # a coarse ring: rounding inflation matters and the bound is tight
    params = plan_round(clip=1.0, dim=64, modulus_bits=16, noise_multiplier=0.5, cohort=3,
                        max_contributors=3, rotation_seed=SEED)
    big = {"w": np.full(64, 10.0, np.float32)}
    for _ in range(50):
        vec = encode_ddg(big, manifest, params, rng, noise=False)
        signed = vec.astype(np.int64)
        signed[signed >= 2**15] -= 2**16
        assert np.linalg.norm(signed) <= params.l2_sensitivity + 1e-9
    assert params.signal_bound() + params.noise_bound() <= 2**14


def test_a_wrapped_or_foreign_sum_is_refused() -> None:
    manifest = Manifest.from_arrays({"w": np.zeros(100, np.float32)})
    params = plan_round(clip=1.0, dim=100, modulus_bits=20, noise_multiplier=1.0, cohort=2,
                        max_contributors=2, rotation_seed=SEED)
    bad = np.zeros(params.padded, np.uint32)
    bad[3] = 2**19  # the most negative value of the centred range
    with pytest.raises(WrapError, match="no-wrap"):
        decode_ddg(bad, manifest, params, contributors=2)
    with pytest.raises(ValueError, match="contributors"):
        decode_ddg(np.zeros(params.padded, np.uint32), manifest, params, contributors=3)


def test_central_noisy_sum_clips_and_adds_the_stated_noise() -> None:
    rng = np.random.default_rng(4)
    manifest = Manifest.from_arrays({"w": np.zeros(20000, np.float32)})
    deltas = [{"w": np.ones(20000, np.float32)} for _ in range(3)]
    out = central_noisy_sum(deltas, manifest, clip=1.0, sigma=0.7, rng=rng)["w"]
    resid = out - 3 / math.sqrt(20000)
    assert abs(resid.std() / 0.7 - 1) < 0.03


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), dim=st.integers(1, 70), bits=st.integers(16, 40),
       clip=st.floats(1e-3, 10.0), scale=st.floats(1e-4, 100.0), seed=st.integers(0, 2**32))
def test_decoded_sum_is_the_sum_of_clipped_deltas_within_rounding(
        n: int, dim: int, bits: int, clip: float, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    manifest = Manifest.from_arrays({"w": np.zeros(dim, np.float32)})
    deltas = [{"w": (rng.normal(size=dim) * scale).astype(np.float32)} for _ in range(n)]
    params = plan_round(clip=clip, dim=dim, modulus_bits=bits, noise_multiplier=0.0, cohort=n,
                        max_contributors=n, rotation_seed=SEED)
    total = _ring_sum([encode_ddg(d, manifest, params, rng) for d in deltas], bits)
    out = decode_ddg(total, manifest, params, contributors=n)["w"]
    truth = sum(clip_l2(flatten(d, manifest), clip) for d in deltas)
    assert np.linalg.norm(out - truth) <= n * params.gamma * math.sqrt(params.padded) * 1.0001
