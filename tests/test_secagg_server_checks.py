"""The server rejects bad replies with a logged reason; the honest sum is unaffected."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from privacy.secagg import SecAggAbort, ServerSession
from privacy.secagg.keys import generate_identity_key, identity_public_bytes
from protocol.codec import ring_dtype
from protocol.wire import Stage
from tests.test_secagg_harness import (
    cohort_of,
    make_config,
    ring_sum,
    run_round,
    signed_unmask_requests,
)

NODES = [1, 2, 3, 4, 5]


def test_registry_must_cover_the_cohort() -> None:
    config = make_config(NODES)
    registry = {k: v for k, v in cohort_of(NODES).registry.items() if k != 3}
    with pytest.raises(ValueError, match="node 3"):
        ServerSession(config=config, registry=registry)


def test_bad_signature_is_rejected_and_the_round_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(NODES)
    forged: dict[int, Any] = {}

    class Forging(ServerSession):
        def receive_advertisement(self, node_id: int, reply: dict[str, Any]) -> bool:
            if node_id == 2:
                sig = reply["signature"]
                reply = {**reply, "signature": bytes([sig[0] ^ 1]) + sig[1:]}
                forged[node_id] = super().receive_advertisement(node_id, reply)
                return True
            return super().receive_advertisement(node_id, reply)

    server = Forging(config=config, registry=cohort_of(NODES).registry)
    with caplog.at_level(logging.WARNING, logger="privacy.secagg.server"):
        run = run_round(config, server=server)
    assert forged == {2: False}
    assert "invalid signature" in caplog.text and "node 2" in caplog.text
    assert run.result is not None and run.result.dropped == (2,)
    assert run.result.rejections[0][:2] == (2, Stage.ADVERTISE_KEYS)
    expected = ring_sum([run.inputs[v] for v in NODES if v != 2], 32, 16)
    np.testing.assert_array_equal(run.result.vector, expected)


def test_advertisement_signed_with_another_identity_is_rejected() -> None:
    config = make_config(NODES)
    registry = dict(cohort_of(NODES).registry)
    registry[4] = identity_public_bytes(generate_identity_key())
    run = run_round(config, server=_Lenient(config=config, registry=registry))
    assert run.result is not None and run.result.dropped == (4,)


class _Lenient(ServerSession):
    """Lets the harness continue when a reply is rejected (the harness asserts acceptance)."""

    def receive_advertisement(self, node_id: int, reply: dict[str, Any]) -> bool:
        super().receive_advertisement(node_id, reply)
        return True

    def receive_shares(self, node_id: int, reply: dict[str, Any]) -> bool:
        super().receive_shares(node_id, reply)
        return True

    def receive_masked_input(self, node_id: int, reply: dict[str, Any]) -> bool:
        super().receive_masked_input(node_id, reply)
        return True

    def receive_unmask(self, node_id: int, reply: dict[str, Any]) -> bool:
        super().receive_unmask(node_id, reply)
        return True


STAGE_METHODS = {
    Stage.ADVERTISE_KEYS: "receive_advertisement",
    Stage.SHARE_KEYS: "receive_shares",
    Stage.MASKED_INPUT: "receive_masked_input",
    Stage.UNMASK: "receive_unmask",
}


@pytest.mark.parametrize("stage", list(STAGE_METHODS))
def test_duplicates_are_rejected_and_do_not_change_the_sum(stage: str) -> None:
    config = make_config(NODES)
    calls: list[bool] = []

    class Duplicating(ServerSession):
        pass

    method = STAGE_METHODS[stage]

    def twice(self: ServerSession, node_id: int, reply: dict[str, Any]) -> bool:
        first = getattr(ServerSession, method)(self, node_id, reply)
        calls.append(getattr(ServerSession, method)(self, node_id, reply))
        return first

    setattr(Duplicating, method, twice)
    run = run_round(config, server=Duplicating(config=config, registry=cohort_of(NODES).registry))
    assert calls == [False] * len(NODES)
    assert all(r[1] == stage and "duplicate" in r[2] for r in run.result.rejections)
    np.testing.assert_array_equal(run.result.vector, ring_sum(list(run.inputs.values()), 32, 16))


@pytest.mark.parametrize("stage", list(STAGE_METHODS))
@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda r: {**r, "round": r["round"] - 1}, "round"),
        (lambda r: {**r, "run-id": r["run-id"] + 1}, "run"),
        (lambda r: {**r, "node-id": 99}, "claims node 99"),
        (lambda r: {**r, "stage": Stage.DONE}, "expected a"),
        (lambda r: {**r, "extra": 1}, "unknown key"),
    ],
)
def test_replayed_or_mislabelled_replies_are_rejected(stage: str, mutate: Any, reason: str) -> None:
    config = make_config(NODES)

    class Replaying(_Lenient):
        pass

    method = STAGE_METHODS[stage]
    verdicts: list[bool] = []

    def bad_then_good(self: ServerSession, node_id: int, reply: dict[str, Any]) -> bool:
        if node_id == 3:
            verdicts.append(getattr(ServerSession, method)(self, node_id, mutate(reply)))
        return getattr(ServerSession, method)(self, node_id, reply)

    setattr(Replaying, method, bad_then_good)
    run = run_round(config, server=Replaying(config=config, registry=cohort_of(NODES).registry))
    assert verdicts == [False]
    assert run.result.rejections[0][0] == 3 and reason in run.result.rejections[0][2]
    np.testing.assert_array_equal(run.result.vector, ring_sum(list(run.inputs.values()), 32, 16))


def test_unsampled_node_is_rejected_at_every_stage() -> None:
    config = make_config(NODES)
    run = run_round(config)
    for stage, method in STAGE_METHODS.items():
        reply = {**run.replies[stage][1], "node-id": 77}
        server = ServerSession(config=config, registry=cohort_of(NODES).registry)
        assert not getattr(server, method)(77, reply)
        assert server.rejections == ((77, stage, "node was not sampled"),)


@pytest.mark.parametrize(
    "vector,reason",
    [
        (np.zeros(16, np.uint64), "uint32"),
        (np.zeros(16, np.int64), "uint32"),
        (np.zeros(17, np.uint32), "shape"),
        (np.zeros((4, 4), np.uint32), "shape"),
        (np.full(16, 2**20, np.uint32), "2^20"),
        ([0] * 16, "uint32"),
    ],
)
def test_malformed_masked_vectors_are_rejected(vector: Any, reason: str) -> None:
    config = make_config(NODES, modulus_bits=20)
    run = run_round(config, stop_after=Stage.SHARE_KEYS)
    requests = run.server.masked_input_requests()
    honest = {v: run.sites[v].masked_input(requests[v], vector=run.inputs[v]) for v in NODES}
    assert not run.server.receive_masked_input(2, {**honest[2], "masked-vector": vector})
    assert reason in run.server.rejections[-1][2]
    for v in NODES:
        assert run.server.receive_masked_input(v, honest[v])
    for v, req in signed_unmask_requests(run).items():
        assert run.server.receive_unmask(v, run.sites[v].unmask(req))
    np.testing.assert_array_equal(
        run.server.finish().vector, ring_sum(list(run.inputs.values()), 20, 16)
    )


@pytest.mark.parametrize(
    "bits,vector,reason",
    [
        (16, np.zeros(16, np.uint32), "must be a uint16 array for the ring Z/2^16, got uint32"),
        (16, np.zeros(16, np.uint8), "got uint8"),
        (16, np.zeros(16, np.int16), "got int16"),
        (16, np.zeros(16, ">u2"), "got >u2"),
        (16, np.zeros(16, np.float16), "got float16"),
        (16, np.zeros(15, np.uint16), "shape"),
        (12, np.full(16, 2**12, np.uint16), "holds values >= 2^12"),
        (8, np.zeros(16, np.uint16), "must be a uint8 array for the ring Z/2^8"),
        (5, np.full(16, 2**5, np.uint8), "holds values >= 2^5"),
    ],
)
def test_a_lean_ring_rejects_a_masked_vector_of_the_wrong_dtype_or_range(
    bits: int, vector: np.ndarray, reason: str
) -> None:
    config = make_config(NODES, modulus_bits=bits)
    run = run_round(config, stop_after=Stage.SHARE_KEYS)
    requests = run.server.masked_input_requests()
    honest = {v: run.sites[v].masked_input(requests[v], vector=run.inputs[v]) for v in NODES}
    assert honest[2]["masked-vector"].dtype == ring_dtype(bits)
    assert not run.server.receive_masked_input(2, {**honest[2], "masked-vector": vector})
    assert run.server.rejections[-1][1] == Stage.MASKED_INPUT
    assert run.server.rejections[-1][2].startswith("`masked-vector` ")
    assert reason in run.server.rejections[-1][2]
    for v in NODES:
        assert run.server.receive_masked_input(v, honest[v])
    for v, req in signed_unmask_requests(run).items():
        assert run.server.receive_unmask(v, run.sites[v].unmask(req))
    result = run.server.finish().vector
    assert result.dtype == ring_dtype(bits)
    np.testing.assert_array_equal(result, ring_sum(list(run.inputs.values()), bits, 16))


def test_late_masked_input_is_rejected_and_its_seed_never_requested() -> None:
    config = make_config(NODES)
    run = run_round(config, drop={Stage.MASKED_INPUT: [5]}, stop_after=Stage.MASKED_INPUT)
    requests = signed_unmask_requests(run)
    assert not run.server.receive_masked_input(5, run.replies[Stage.MASKED_INPUT][5])
    assert "stage 'unmask'" in run.server.rejections[-1][2]
    assert all(5 not in r["alive"] and 5 in r["dropped"] for r in requests.values())


def test_unmask_reply_with_other_ids_or_someone_elses_shares_is_rejected() -> None:
    config = make_config(NODES)
    run = run_round(config, stop_after=Stage.MASKED_INPUT)
    requests = signed_unmask_requests(run)
    replies = {v: run.sites[v].unmask(r) for v, r in requests.items()}
    assert not run.server.receive_unmask(1, {**replies[1], "seed-share-ids": [2, 1, 3, 4, 5]})
    assert "differ" in run.server.rejections[-1][2]
    assert not run.server.receive_unmask(
        1, {**replies[1], "seed-shares": replies[2]["seed-shares"]}
    )
    assert "not the sender's own" in run.server.rejections[-1][2]


def test_a_wrong_share_is_rejected_by_its_commitment_and_the_round_still_unmasks() -> None:
    """A site sending a wrong share is caught by the commitment its owner sent at share time:
    its reply is rejected with a named reason, and any t valid shares finish the round.
    """
    config = make_config(NODES, threshold=4)
    run = run_round(config, stop_after=Stage.MASKED_INPUT)
    for v, req in signed_unmask_requests(run).items():
        reply = run.sites[v].unmask(req)
        if v == 2:
            shares = bytearray(reply["seed-shares"])
            shares[-1] ^= 1  # last byte of the last seed share
            reply = {**reply, "seed-shares": bytes(shares)}
        assert run.server.receive_unmask(v, reply) == (v != 2)
    assert "does not match the commitment" in run.server.rejections[-1][2]
    result = run.server.finish()
    np.testing.assert_array_equal(result.vector, ring_sum(list(run.inputs.values()), 32, 16))


def test_a_wrong_share_when_every_share_is_needed_aborts_instead_of_unmasking_wrongly() -> None:
    config = make_config(NODES, threshold=5)
    run = run_round(config, stop_after=Stage.MASKED_INPUT)
    for v, req in signed_unmask_requests(run).items():
        reply = run.sites[v].unmask(req)
        if v == 2:
            reply = {**reply, "key-shares": reply["key-shares"], "seed-shares": bytes(
                b ^ (i == 100) for i, b in enumerate(reply["seed-shares"]))}
        run.server.receive_unmask(v, reply)
    with pytest.raises(SecAggAbort, match="seed shares"):
        run.server.finish()
