"""Lean secure-aggregation rings: automatic k <= 32, the grid holds the cohort, exact weights,
and a ring of k <= 16 bits on the wire as uint16 (2 bytes per parameter), end to end.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from hypothesis import given, settings
from hypothesis import strategies as st

from client.app import app
from protocol.adapter import load_adapter_dir
from protocol.codec import (
    Manifest,
    choose_modulus_bits,
    decode,
    decoding_error_bound,
    encode,
    ring_dtype,
)
from protocol.config import ConfigError, RunConfig
from protocol.messages import put_payload
from protocol.ring import (
    AUTO_MAX_BITS,
    MIN_SECAGG_BITS,
    auto_modulus_bits,
    check_ring,
    grid_scale,
)
from protocol.run_folder import RunFolder
from protocol.secure_stats import append_weight, split_weight, weight_limbs
from protocol.wire import Key, MessageType, Stage
from server.app import run_server
from server.secure_round import plan_ring
from tests._loopback import LoopbackGrid, enrol, server_identity
from tests.test_secagg_harness import make_config, ring_sum, run_round


@pytest.mark.parametrize("n", [1, 3, 100, 1000])
@pytest.mark.parametrize("max_weight", [1.0, 64.0, 100000.0])
@pytest.mark.parametrize("dim", [10, 460_800])
def test_automatic_ring_is_at_most_32_bits_and_holds_the_cohort(n: int, max_weight: float,
                                                                dim: int) -> None:
    k, scale = plan_ring(n_sites=n, clip=10.0, max_weight=max_weight, dim=dim)
    assert MIN_SECAGG_BITS <= k <= AUTO_MAX_BITS
    assert choose_modulus_bits(n_sites=n, clip_norm=10.0, max_weight=max_weight, scale=scale,
                               dim=dim) <= k
    check_ring(n_sites=n, clip_norm=10.0, max_weight=max_weight, scale=scale, modulus_bits=k)


def test_automatic_ring_grows_with_cohort_weight_and_dim() -> None:
    base = auto_modulus_bits(n_sites=3, max_weight=64.0, dim=10_000)
    assert auto_modulus_bits(n_sites=300, max_weight=64.0, dim=10_000) > base
    assert auto_modulus_bits(n_sites=3, max_weight=6400.0, dim=10_000) > base
    assert auto_modulus_bits(n_sites=3, max_weight=64.0, dim=1_000_000) > base
    assert auto_modulus_bits(n_sites=3, max_weight=100000.0, dim=460_800) == AUTO_MAX_BITS


def test_site_refuses_a_ring_that_could_wrap_the_sum() -> None:
    scale = grid_scale(n_sites=3, clip_norm=1.0, max_weight=100.0, modulus_bits=16)
    check_ring(n_sites=3, clip_norm=1.0, max_weight=100.0, scale=scale, modulus_bits=16)
    with pytest.raises(ValueError, match="cannot hold 4 inputs"):
        check_ring(n_sites=4, clip_norm=1.0, max_weight=100.0, scale=scale, modulus_bits=16)
    with pytest.raises(ValueError, match="a sum could wrap"):
        check_ring(n_sites=3, clip_norm=1.0, max_weight=100.0, scale=scale / 2, modulus_bits=16)
    with pytest.raises(ValueError, match="`modulus_bits` must be an int"):
        check_ring(n_sites=3, clip_norm=1.0, max_weight=100.0, scale=scale, modulus_bits=65)


def test_secagg_bits_is_validated_by_name() -> None:
    assert RunConfig().secagg_bits == 0
    assert RunConfig(secagg_bits=16).secagg_bits == 16
    for bad in (8, 15, 65, -1):
        with pytest.raises(ConfigError, match="`secagg-bits` must be 0 \\(automatic\\)"):
            RunConfig(secagg_bits=bad)
    with pytest.raises(ConfigError, match="`secagg-bits` must be an integer"):
        RunConfig.from_mapping({"secagg-bits": True})


@pytest.mark.parametrize("k", [16, 20, 32, 64])
@pytest.mark.parametrize("n", [1, 3, 1000])
def test_weight_limbs_sum_exactly_without_wrapping(k: int, n: int) -> None:
    max_weight = 100000.0
    bits, count = weight_limbs(modulus_bits=k, n_sites=n, max_weight=max_weight)
    rng = np.random.default_rng(k * n)
    weights = [int(w) for w in rng.integers(1, int(max_weight) + 1, size=n)]
    weights[0] = int(max_weight)
    dtype = ring_dtype(k)
    mask = (1 << k) - 1
    total = np.zeros(2 + count, dtype=np.uint64)
    for w in weights:
        vec = append_weight(np.zeros(2, dtype=dtype), w, modulus_bits=k, max_weight=max_weight,
                            n_sites=n)
        assert vec.shape == (2 + count,)
        total = (total + vec.astype(np.uint64)) & np.uint64(mask)
    _, got = split_weight(total.astype(dtype), modulus_bits=k, max_weight=max_weight, n_sites=n)
    assert got == sum(weights)
    if n * max_weight < 2 ** (k - 1):
        assert count == 1


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), k=st.sampled_from([16, 20, 24, 32]),
       dim=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_decoded_sum_is_within_the_stated_bound_on_a_lean_ring(n: int, k: int, dim: int,
                                                              seed: int) -> None:
    clip, max_weight = 1.0, 50.0
    scale = grid_scale(n_sites=n, clip_norm=clip, max_weight=max_weight, modulus_bits=k)
    rng = np.random.default_rng(seed)
    manifest = Manifest.from_arrays({"a": np.zeros(dim, dtype=np.float32)})
    exact = np.zeros(dim)
    acc = np.zeros(dim, dtype=np.uint64)
    for _ in range(n):
        delta = {"a": rng.normal(size=dim).astype(np.float32) * 3}
        w = float(rng.integers(1, 51))
        v = delta["a"].astype(np.float64)
        v = v * min(1.0, clip / float(np.linalg.norm(v))) if np.linalg.norm(v) > 0 else v
        exact += w * v
        q = encode(delta, manifest, clip_norm=clip, weight=w, scale=scale, modulus_bits=k,
                   rng=rng, max_weight=max_weight)
        acc = (acc + q.astype(np.uint64)) & np.uint64((1 << k) - 1)
    got = decode(acc.astype(q.dtype), manifest, scale=scale, modulus_bits=k)["a"]
    bound = decoding_error_bound(n_sites=n, clip_norm=clip, max_weight=max_weight, scale=scale,
                                 dim=dim)
    assert np.max(np.abs(got - exact)) <= bound.per_coordinate


def test_stochastic_rounding_on_a_16_bit_ring_is_unbiased() -> None:
    n, k, dim, draws = 3, 16, 8, 4000
    clip, max_weight = 1.0, 10.0
    scale = grid_scale(n_sites=n, clip_norm=clip, max_weight=max_weight, modulus_bits=k)
    manifest = Manifest.from_arrays({"a": np.zeros(dim, dtype=np.float64)})
    delta = {"a": np.linspace(-0.3, 0.3, dim)}
    rng = np.random.default_rng(7)
    errors = np.empty((draws, dim))
    for i in range(draws):
        acc = np.zeros(dim, dtype=np.uint64)
        for _ in range(n):
            q = encode(delta, manifest, clip_norm=clip, weight=7.0, scale=scale,
                       modulus_bits=k, rng=rng, max_weight=max_weight)
            acc = (acc + q.astype(np.uint64)) & np.uint64((1 << k) - 1)
        got = decode(acc.astype(ring_dtype(k)), manifest, scale=scale, modulus_bits=k)["a"]
        errors[i] = got - n * 7.0 * delta["a"]
    # each draw's error is < n steps; its mean over draws is ~0 (5 standard errors)
    assert np.max(np.abs(errors)) < n * scale
    std_err = errors.std(axis=0) / np.sqrt(draws)
    assert np.all(np.abs(errors.mean(axis=0)) <= 5 * std_err + 1e-12)


# ----------------------------------------------------------------------------- on the wire

#: what a serialized reply may add to its ring vector: the npy header of the array, the
#: protobuf framing, the reply's status and the payload's header (run, round, stage, node)
HEADER_BYTES = 1024


def _serialized(content: RecordDict) -> int:
    """Bytes of ``content`` as Flower puts it on the wire (its protobuf RecordDict)."""
    return recorddict_to_proto(content).ByteSize()


@pytest.mark.parametrize("bits,width", [(8, 1), (12, 2), (16, 2), (20, 4), (32, 4)])
def test_a_masked_upload_costs_the_ring_dtypes_bytes_and_the_sum_is_exact_mod_2k(
    bits: int, width: int
) -> None:
    # arrange: seven sites with random inputs on Z/2^k (their sum wraps the dtype many times)
    length = 4096
    config = make_config(list(range(1, 8)), modulus_bits=bits, vector_length=length)

    # act: a full round of the protocol
    run = run_round(config)

    # assert: every masked upload, serialized as the reply carries it, is `width` bytes per
    # value plus a small header; the released sum is the exact sum mod 2^k of the inputs
    for node, reply in run.replies[Stage.MASKED_INPUT].items():
        vector = reply["masked-vector"]
        assert vector.dtype == ring_dtype(bits) and vector.dtype.itemsize == width
        size = _serialized(put_payload(RecordDict(), reply))
        assert width * length < size <= width * length + HEADER_BYTES, (node, size)
    assert run.result is not None and run.result.vector.dtype == ring_dtype(bits)
    np.testing.assert_array_equal(run.result.vector,
                                  ring_sum(list(run.inputs.values()), bits, length))


class _UploadRecorder(LoopbackGrid):
    """The loopback grid, keeping each masked-input reply as Flower serializes it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uploads: dict[int, tuple[int, str]] = {}  # node -> (bytes, dtype of the array)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        kinds = {m.metadata.dst_node_id: m.metadata.message_type for m in messages}
        replies = super().send_and_receive(messages, timeout=timeout)
        for r in replies:
            if kinds[r.metadata.src_node_id] == MessageType.SECAGG_MASKED and not r.has_error():
                rec: Any = r.content[Key.SECAGG_ARRAYS]
                self.uploads[r.metadata.src_node_id] = (_serialized(r.content),
                                                        str(rec["masked-vector"].dtype))
        return replies


def _run_config(tmp_path: Path, tiny_model: Path, tiny_sites: Path, name: str,
                **extra: Any) -> RunConfig:
    return RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / name), "sites-state-dir": str(tmp_path / f"{name}-sites"),
        "min-sites": 3, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", **extra,
    })


def test_a_16_bit_round_uploads_2_bytes_per_parameter_and_releases_the_plaintext_mean(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: three sites, secure aggregation on a 16-bit ring (max weight near the sites'
    # real sizes, so the grid is fine enough), and the same run in the clear
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    lean = _run_config(tmp_path, tiny_model, tiny_sites, "lean", **{
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "secagg-bits": 16, "secagg-max-weight": 64.0, "secagg-clip": 4.0})
    plain = _run_config(tmp_path, tiny_model, tiny_sites, "plain", **{
        "allow-no-privacy": True})
    enrol({s: tmp_path / "lean-sites" / s for s in ("alpha", "beta", "gamma")},
          tmp_path / "enrolment.json")
    grid = _UploadRecorder(app, nodes, lean.to_mapping())

    # act
    with server_identity():
        run_server(grid, lean)  # type: ignore[arg-type]
        run_server(LoopbackGrid(app, nodes, plain.to_mapping()), plain)  # type: ignore[arg-type]

    # assert: each site's masked upload is a uint16 array, 2 bytes per parameter on the wire
    (part,) = RunFolder(lean.out_dir).read_participation()
    secure, _ = load_adapter_dir(RunFolder(lean.out_dir).round_adapter(1))
    baseline, _ = load_adapter_dir(RunFolder(plain.out_dir).round_adapter(1))
    dim = sum(int(np.prod(v.shape)) for k, v in secure.items() if "lora_B" in k)
    assert sorted(grid.uploads) == sorted(nodes)
    for size, dtype in grid.uploads.values():
        assert dtype == "uint16"
        assert size <= 2 * dim + HEADER_BYTES, (size, dim)
    # ... the record states the ring and the decoding bound, and the released mean is the
    # plaintext mean within it
    assert part.released is True and part.modulus_bits == 16
    assert part.contributed == ("alpha", "beta", "gamma")
    assert part.decoding_error_bound is not None
    bound = part.decoding_error_bound["per_coordinate"]
    moved = max(float(np.abs(baseline[k]).max()) for k in baseline if "lora_B" in k)
    assert moved > 20 * bound, (moved, bound)  # the round really changed the adapter
    for k in baseline:
        np.testing.assert_allclose(secure[k], baseline[k], rtol=0, atol=bound + 1e-6)
