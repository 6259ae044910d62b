"""Adapter-delta codec: manifest contract, clipping, stochastic rounding, no wrap, error bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol.codec import (
    Manifest,
    ManifestError,
    TensorSpec,
    choose_modulus_bits,
    clip_l2,
    decode,
    decoding_error_bound,
    encode,
    flatten,
    ring_dtype,
)
from protocol.ring import grid_scale


def _delta(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.q_proj.lora_A": rng.normal(size=(4, 8)).astype(np.float32),
        "layers.0.q_proj.lora_B": rng.normal(size=(8, 4)).astype(np.float32),
        "bias": rng.normal(size=(3,)).astype(np.float64),
    }


PARAMS = {"clip_norm": 2.0, "scale": 2.0**-12}


def _encode(delta, manifest, weight=1.0, bits=24, seed=0):  # type: ignore[no-untyped-def]
    return encode(
        delta,
        manifest,
        weight=weight,
        modulus_bits=bits,
        rng=np.random.default_rng(seed),
        **PARAMS,
    )


# ----------------------------------------------------------------------------- manifest


def test_manifest_serialisation_is_canonical_and_hashed() -> None:
    m = Manifest.from_arrays(_delta())
    assert m.names == ("layers.0.q_proj.lora_A", "layers.0.q_proj.lora_B", "bias")
    assert m.dim == 32 + 32 + 3
    assert Manifest.from_bytes(m.to_bytes()) == m
    assert m.digest() == Manifest.from_arrays(_delta(1)).digest()
    m.check_digest(m.digest())
    reordered = Manifest(tuple(reversed(m.tensors)))
    assert reordered.digest() != m.digest()
    with pytest.raises(ManifestError, match="digest mismatch"):
        m.check_digest(reordered.digest())


def test_non_canonical_or_unknown_manifest_bytes_are_rejected() -> None:
    m = Manifest.from_arrays(_delta())
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.from_bytes(m.to_bytes().replace(b":", b": "))
    with pytest.raises(ManifestError, match="keys"):
        Manifest.from_bytes(b'{"tensors":[],"version":1,"x":2}')
    with pytest.raises(ManifestError, match="version"):
        Manifest.from_bytes(b'{"tensors":[],"version":2}')
    with pytest.raises(ManifestError, match="JSON"):
        Manifest.from_bytes(b"\xff")


@pytest.mark.parametrize(
    "spec,match",
    [
        (lambda: TensorSpec("", (1,), "float32"), "name"),
        (lambda: TensorSpec("a", (-1,), "float32"), "shape"),
        (lambda: TensorSpec("a", [1], "float32"), "shape"),
        (lambda: TensorSpec("a", (1,), "int32"), "dtype"),
        (lambda: Manifest(()), "non-empty"),
        (lambda: Manifest((TensorSpec("a", (1,), "float32"),) * 2), "twice"),
    ],
)
def test_bad_manifests_name_the_field(spec, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ManifestError, match=match):
        spec()


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("bias"), "'bias' is missing"),
        (lambda d: d.update(extra=np.zeros(1, np.float32)), "'extra' is not in the manifest"),
        (lambda d: d.update(bias=np.zeros(4)), "'bias' has shape"),
        (lambda d: d.update(bias=np.zeros(3, np.float32)), "'bias' has dtype"),
        (lambda d: d.update(bias=[0.0, 0.0, 0.0]), "'bias' must be a numpy array"),
    ],
)
def test_encode_rejects_deltas_that_do_not_match_naming_the_tensor(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    delta = _delta()
    m = Manifest.from_arrays(delta)
    mutate(delta)
    with pytest.raises(ManifestError, match=match):
        _encode(delta, m)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_rejects_nan_and_inf_naming_the_tensor(bad: float) -> None:
    delta = _delta()
    m = Manifest.from_arrays(delta)
    delta["layers.0.q_proj.lora_B"][2, 1] = bad
    with pytest.raises(ValueError, match="lora_B.*NaN or infinity"):
        _encode(delta, m)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"weight": True}, "weight"),
        ({"weight": 3.0, "max_weight": 2.0}, "max_weight"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"scale": -1.0}, "scale"),
        ({"modulus_bits": 65}, "modulus_bits"),
        ({"modulus_bits": 8}, "modulus_bits"),
        ({"scale": 1e-20}, "too fine"),
    ],
)
def test_encode_rejects_bad_parameters_by_name(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    delta = _delta()
    args = {"weight": 1.0, "modulus_bits": 24, "rng": np.random.default_rng(0), **PARAMS}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        encode(delta, Manifest.from_arrays(delta), **args)


# ----------------------------------------------------------------------------- encode/decode


def test_encode_clips_weights_and_lands_on_the_ring() -> None:
    delta = _delta()
    m = Manifest.from_arrays(delta)
    vec = _encode(delta, m, weight=3.0, bits=24)
    assert vec.dtype == ring_dtype(24) == np.uint32 and vec.shape == (m.dim,)
    assert int(vec.max()) < 2**24
    decoded = np.concatenate(
        [a.ravel() for a in decode(vec, m, scale=PARAMS["scale"], modulus_bits=24).values()]
    )
    expected = 3.0 * clip_l2(flatten(delta, m), PARAMS["clip_norm"])
    assert np.max(np.abs(decoded - expected)) < PARAMS["scale"]
    assert np.linalg.norm(clip_l2(flatten(delta, m), 2.0)) <= 2.0 * (1 + 1e-12)


def test_decode_restores_names_and_shapes() -> None:
    delta = _delta()
    m = Manifest.from_arrays(delta)
    out = decode(_encode(delta, m), m, scale=PARAMS["scale"], modulus_bits=24)
    assert list(out) == list(delta)
    assert all(out[k].shape == delta[k].shape and out[k].dtype == np.float64 for k in out)


def test_decode_rejects_wrong_vectors() -> None:
    m = Manifest.from_arrays(_delta())
    with pytest.raises(ManifestError, match="uint32"):
        decode(np.zeros(m.dim, np.uint64), m, scale=1.0, modulus_bits=24)
    with pytest.raises(ManifestError, match="shape"):
        decode(np.zeros(m.dim + 1, np.uint32), m, scale=1.0, modulus_bits=24)
    with pytest.raises(ManifestError, match="2\\^24"):
        decode(np.full(m.dim, 2**24, np.uint32), m, scale=1.0, modulus_bits=24)


@pytest.mark.parametrize(
    "k,dtype",
    [(1, np.uint8), (8, np.uint8), (9, np.uint16), (16, np.uint16), (17, np.uint32),
     (32, np.uint32), (33, np.uint64), (64, np.uint64)],
)
def test_ring_dtype_is_the_narrowest_unsigned_dtype_that_holds_k_bits(k: int, dtype: type) -> None:
    assert ring_dtype(k) == np.dtype(dtype)


@pytest.mark.parametrize("bad", [0, 65, True, 16.0])
def test_ring_dtype_rejects_bad_bits_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="`modulus_bits` must be an int in \\[1, 64\\]"):
        ring_dtype(bad)  # type: ignore[arg-type]


def test_a_16_bit_ring_encodes_to_uint16_and_decode_refuses_a_wider_vector() -> None:
    delta = _delta()
    m = Manifest.from_arrays(delta)
    vec = encode(delta, m, clip_norm=2.0, weight=1.0, scale=2.0**-10, modulus_bits=16,
                 rng=np.random.default_rng(0))
    assert vec.dtype == np.uint16 and vec.nbytes == 2 * m.dim
    decode(vec, m, scale=2.0**-10, modulus_bits=16)
    with pytest.raises(ManifestError, match="uint16"):
        decode(vec.astype(np.uint32), m, scale=2.0**-10, modulus_bits=16)


@settings(max_examples=40, deadline=None)
@given(k=st.sampled_from([5, 8, 12, 16, 20]), n=st.integers(1, 40), dim=st.integers(1, 30),
       seed=st.integers(0, 2**32 - 1))
def test_a_sum_taken_in_the_narrow_ring_dtype_is_exact_mod_2k(k: int, n: int, dim: int,
                                                              seed: int) -> None:
    """The server sums uint16 (or uint8) vectors in their own dtype; the wrap is harmless."""
    clip, weight = 1.0, 1.0
    assume(((1 << (k - 1)) - 1) // n >= 2)  # the ring holds n sites at all
    scale = grid_scale(n_sites=n, clip_norm=clip, max_weight=weight, modulus_bits=k)
    rng = np.random.default_rng(seed)
    m = Manifest.from_arrays({"w": np.zeros(dim)})
    vecs = [encode({"w": rng.normal(size=dim)}, m, clip_norm=clip, weight=weight, scale=scale,
                   modulus_bits=k, rng=rng) for _ in range(n)]
    narrow = np.zeros(dim, dtype=ring_dtype(k))
    wide = np.zeros(dim, dtype=np.uint64)
    for v in vecs:
        assert v.dtype == ring_dtype(k)
        np.add(narrow, v, out=narrow)
        wide += v.astype(np.uint64)
    np.bitwise_and(narrow, ring_dtype(k).type((1 << k) - 1), out=narrow)
    np.testing.assert_array_equal(narrow, (wide & np.uint64((1 << k) - 1)).astype(ring_dtype(k)))
    decode(narrow, m, scale=scale, modulus_bits=k)


def test_stochastic_rounding_is_unbiased() -> None:
    delta = {"w": np.full((1,), 0.3, np.float64)}
    m = Manifest.from_arrays(delta)
    values = [
        decode(
            encode(
                delta,
                m,
                clip_norm=1.0,
                weight=1.0,
                scale=1.0,
                modulus_bits=8,
                rng=np.random.default_rng(s),
            ),
            m,
            scale=1.0,
            modulus_bits=8,
        )["w"][0]
        for s in range(4000)
    ]
    assert set(values) == {0.0, 1.0}
    assert abs(np.mean(values) - 0.3) < 0.03


@pytest.mark.parametrize(
    "n,grid_bits,k_expected", [(7, 2, 7), (7, 28, 32), (7, 29, 33), (3000, 51, 64)]
)
def test_extreme_sums_do_not_wrap(n: int, grid_bits: int, k_expected: int) -> None:
    """Every site at +C or -C on one coordinate with the maximal weight: the sum survives.

    And k is minimal: the worst-case sum does not fit in k - 1 bits.
    """
    clip, weight, dim = 1.5, 2.0, 2
    scale = clip * weight * 2.0**-grid_bits
    k = choose_modulus_bits(n_sites=n, clip_norm=clip, max_weight=weight, scale=scale, dim=dim)
    assert k == k_expected
    assert n * (2**grid_bits + 1) >= 2 ** (k - 2)
    m = Manifest((TensorSpec("w", (dim,), "float64"),))
    for sign in (1.0, -1.0):
        delta = {"w": np.array([sign * clip, 0.0])}
        vecs = [
            encode(
                delta,
                m,
                clip_norm=clip,
                weight=weight,
                scale=scale,
                modulus_bits=k,
                rng=np.random.default_rng(i),
                max_weight=weight,
            )
            for i in range(n)
        ]
        total = vecs[0].astype(np.uint64)
        for v in vecs[1:]:
            total = total + v.astype(np.uint64)
        total = (total & np.uint64((1 << k) - 1) if k < 64 else total).astype(ring_dtype(k))
        out = decode(total, m, scale=scale, modulus_bits=k)["w"]
        bound = decoding_error_bound(
            n_sites=n, clip_norm=clip, max_weight=weight, scale=scale, dim=dim
        )
        assert abs(out[0] - sign * n * clip * weight) <= bound.per_coordinate


def test_choose_modulus_bits_is_minimal_and_refuses_overflow() -> None:
    k = choose_modulus_bits(n_sites=100, clip_norm=1.0, max_weight=1.0, scale=2.0**-16, dim=10)
    # 100 sites * (2^16 + 1) grid units each way must fit [-2^(k-1), 2^(k-1)): 2^23 < 2*6553700
    assert k == 24
    with pytest.raises(ValueError, match="coarser"):
        choose_modulus_bits(n_sites=2**20, clip_norm=1.0, max_weight=1.0, scale=2.0**-45, dim=1)
    with pytest.raises(ValueError, match="n_sites"):
        choose_modulus_bits(n_sites=0, clip_norm=1.0, max_weight=1.0, scale=1.0, dim=1)
    with pytest.raises(ValueError, match="dim"):
        choose_modulus_bits(n_sites=1, clip_norm=1.0, max_weight=1.0, scale=1.0, dim=True)


def test_error_bound_formula() -> None:
    b = decoding_error_bound(n_sites=10, clip_norm=1.0, max_weight=4.0, scale=0.01, dim=100)
    assert 0.1 <= b.per_coordinate < 0.1 + 1e-12
    assert b.l2 == pytest.approx(b.per_coordinate * 10)
    assert b.l2_rms == pytest.approx(0.005 * math.sqrt(1000))


_shapes = st.lists(hnp.array_shapes(min_dims=1, max_dims=2, max_side=6), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(
    shapes=_shapes,
    n_sites=st.integers(1, 12),
    clip=st.floats(1e-3, 1e3),
    max_weight=st.floats(0.5, 1e3),
    grid_bits=st.integers(2, 40),
    data=st.data(),
)
def test_decoded_sum_equals_weighted_sum_within_bound(
    shapes: list[tuple[int, ...]],
    n_sites: int,
    clip: float,
    max_weight: float,
    grid_bits: int,
    data: st.DataObject,
) -> None:
    scale = clip * max_weight * 2.0**-grid_bits
    dim = sum(math.prod(s) for s in shapes)
    k = choose_modulus_bits(
        n_sites=n_sites, clip_norm=clip, max_weight=max_weight, scale=scale, dim=dim
    )
    dtypes = data.draw(
        st.lists(
            st.sampled_from(["float32", "float64"]), min_size=len(shapes), max_size=len(shapes)
        )
    )
    manifest = Manifest(
        tuple(
            TensorSpec(f"t{i}", s, d) for i, (s, d) in enumerate(zip(shapes, dtypes, strict=True))
        )
    )
    elements = st.floats(-1e4, 1e4, width=32)
    total = np.zeros(dim, dtype=np.uint64)
    expected = np.zeros(dim)
    for i in range(n_sites):
        delta = {
            spec.name: data.draw(hnp.arrays(np.dtype(spec.dtype), spec.shape, elements=elements))
            for spec in manifest.tensors
        }
        weight = data.draw(st.floats(0.0, max_weight))
        vec = encode(
            delta,
            manifest,
            clip_norm=clip,
            weight=weight,
            scale=scale,
            modulus_bits=k,
            rng=np.random.default_rng(i),
            max_weight=max_weight,
        )
        total = total + vec.astype(np.uint64)
        expected += weight * clip_l2(flatten(delta, manifest), clip)
    if k < 64:
        total &= np.uint64((1 << k) - 1)
    decoded = decode(total.astype(ring_dtype(k)), manifest, scale=scale, modulus_bits=k)
    got = np.concatenate([decoded[s.name].ravel() for s in manifest.tensors])
    bound = decoding_error_bound(
        n_sites=n_sites, clip_norm=clip, max_weight=max_weight, scale=scale, dim=dim
    )
    err = got - expected
    assert np.max(np.abs(err)) <= bound.per_coordinate
    assert np.linalg.norm(err) <= bound.l2
