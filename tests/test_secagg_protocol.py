"""Whole rounds: the aggregate is exact, dropouts at every stage are recovered or abort cleanly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from privacy.secagg import SecAggAbort
from protocol.codec import (
    Manifest,
    TensorSpec,
    choose_modulus_bits,
    clip_l2,
    decode,
    decoding_error_bound,
    encode,
    flatten,
)
from protocol.wire import Stage
from tests.test_secagg_harness import (
    STAGES,
    expected_outcome,
    make_config,
    ring_sum,
    run_round,
)

NODES = [3, 8, 21, 40, 55, 71]


@pytest.mark.parametrize("bits", [2, 20, 32, 33, 64])
def test_aggregate_equals_ring_sum_without_dropouts(bits: int) -> None:
    config = make_config(NODES, modulus_bits=bits, vector_length=257)
    run = run_round(config)
    assert run.result is not None
    assert run.result.contributors == tuple(NODES) and run.result.dropped == ()
    expected = ring_sum(list(run.inputs.values()), bits, 257)
    np.testing.assert_array_equal(run.result.vector, expected)


@pytest.mark.parametrize("stage", STAGES)
def test_one_dropout_at_each_stage_is_recovered(stage: str) -> None:
    config = make_config(NODES, vector_length=64)
    run = run_round(config, drop={stage: [21]})
    assert run.result is not None
    contributors = [v for v in NODES
                    if stage in (Stage.CONSISTENCY_CHECK, Stage.UNMASK) or v != 21]
    assert run.result.contributors == tuple(contributors)
    assert run.result.dropped == tuple(v for v in NODES if v not in contributors)
    expected = ring_sum([run.inputs[v] for v in contributors], 32, 64)
    np.testing.assert_array_equal(run.result.vector, expected)


def test_dropouts_at_every_stage_at_once_on_a_sparse_graph() -> None:
    nodes = list(range(100, 130))
    config = make_config(nodes, degree=10, threshold=6, vector_length=50)
    drop = {
        Stage.ADVERTISE_KEYS: [100],
        Stage.SHARE_KEYS: [111],
        Stage.MASKED_INPUT: [120, 121],
        Stage.UNMASK: [129],
    }
    assert expected_outcome(config, drop)[0]
    run = run_round(config, drop=drop)
    assert run.result is not None
    gone = {100, 111, 120, 121}
    assert set(run.result.dropped) == gone
    expected = ring_sum([run.inputs[v] for v in nodes if v not in gone], 32, 50)
    np.testing.assert_array_equal(run.result.vector, expected)


@pytest.mark.parametrize("stage", STAGES)
def test_round_aborts_cleanly_below_threshold(stage: str) -> None:
    config = make_config(NODES, threshold=5)
    with pytest.raises(SecAggAbort) as info:
        run_round(config, drop={stage: NODES[:2]})
    assert "threshold" in info.value.reason or "need 5" in info.value.reason


def test_abort_forgets_the_partial_sum() -> None:
    config = make_config(NODES, threshold=5)
    run = run_round(config, stop_after=Stage.MASKED_INPUT, drop={Stage.MASKED_INPUT: NODES[:2]})
    with pytest.raises(SecAggAbort, match="masked input"):
        run.server.consistency_requests()
    assert run.server.stage.value == Stage.ABORTED
    assert run.server._acc is None


def test_abort_at_finish_when_unmask_replies_are_missing() -> None:
    config = make_config(NODES, threshold=5)
    run = run_round(config, stop_after=Stage.UNMASK, drop={Stage.UNMASK: NODES[:2]})
    with pytest.raises(SecAggAbort, match="seed shares"):
        run.server.finish()


# ----------------------------------------------------------------------------- property


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    n=st.integers(3, 12),
    dim=st.integers(1, 24),
    grid_bits=st.integers(1, 40),
    data=st.data(),
)
def test_decoded_aggregate_equals_plaintext_weighted_sum_within_bound(
    n: int, dim: int, grid_bits: int, data: st.DataObject
) -> None:
    """Over vectors, cohort sizes, moduli, graphs and dropouts at every stage: the round
    completes exactly when the protocol's rules allow, and then decodes to the plaintext
    weighted sum of the contributors' clipped deltas within the stated bound.
    """
    nodes = sorted(data.draw(st.sets(st.integers(0, 2**64 - 1), min_size=n, max_size=n)))
    complete = n <= 4 or data.draw(st.booleans())
    degree = n - 1 if complete else data.draw(st.sampled_from(range(2, n - 1, 2)))
    low = (degree + 1) // 2 + 1
    threshold = data.draw(st.integers(max(2, low), degree + 1))
    clip, max_weight = 1.0, 10.0
    scale = clip * max_weight * 2.0**-grid_bits
    k = choose_modulus_bits(n_sites=n, clip_norm=clip, max_weight=max_weight, scale=scale, dim=dim)
    manifest = Manifest((TensorSpec("lora", (dim,), "float32"),))
    config = make_config(
        nodes, modulus_bits=k, vector_length=dim, degree=degree, threshold=threshold
    )
    # up to one more dropout than the threshold tolerates, each at a random stage
    gone = data.draw(st.lists(st.sampled_from(nodes), max_size=n - threshold + 1, unique=True))
    drop: dict[str, list[int]] = {stage: [] for stage in STAGES}
    for v in gone:
        drop[data.draw(st.sampled_from(STAGES))].append(v)
    deltas, weights, inputs = {}, {}, {}
    for i, v in enumerate(nodes):
        deltas[v] = {
            "lora": np.asarray(
                data.draw(st.lists(st.floats(-5, 5, width=32), min_size=dim, max_size=dim)),
                dtype=np.float32,
            )
        }
        weights[v] = data.draw(st.floats(0.0, max_weight))
        inputs[v] = encode(
            deltas[v],
            manifest,
            clip_norm=clip,
            weight=weights[v],
            scale=scale,
            modulus_bits=k,
            rng=np.random.default_rng(i),
            max_weight=max_weight,
        )
    completes, contributors = expected_outcome(config, drop)
    event("completes" if completes else "aborts")
    if not completes:
        with pytest.raises(SecAggAbort):
            run_round(config, inputs=inputs, drop=drop)
        return
    run = run_round(config, inputs=inputs, drop=drop)
    assert run.result is not None and set(run.result.contributors) == contributors
    decoded = decode(run.result.vector, manifest, scale=scale, modulus_bits=k)["lora"]
    plain = sum(weights[v] * clip_l2(flatten(deltas[v], manifest), clip) for v in contributors)
    bound = decoding_error_bound(
        n_sites=len(contributors), clip_norm=clip, max_weight=max_weight, scale=scale, dim=dim
    )
    assert np.max(np.abs(decoded - plain)) <= bound.per_coordinate
    assert np.linalg.norm(decoded - plain) <= bound.l2
