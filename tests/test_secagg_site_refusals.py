"""A site never trusts the server: unsafe unmask lists, replays and tampering are refused."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from privacy.secagg import SecAggError, SiteSession, Stage, StageError
from privacy.secagg.payloads import CIPHERTEXT_LEN
from privacy.secagg.shamir import SHARE_LEN, combine_shares
from protocol import wire
from tests.test_secagg_harness import cohort_of, make_config, run_round, signed_unmask_requests

SPARSE = list(range(10, 22))  # 12 sites, 4-regular graph, threshold 3


def _sparse_until_masked() -> Any:
    config = make_config(SPARSE, degree=4, threshold=3)
    run = run_round(config, stop_after=wire.Stage.MASKED_INPUT)
    return run, signed_unmask_requests(run)


def _expect_abort(site: SiteSession, request: dict[str, Any], match: str) -> None:
    with pytest.raises(SecAggError, match=match):
        site.unmask(request)
    assert site.stage is Stage.ABORTED
    assert site.to_state().get("own-seed-share") is None and site.to_state()["held"] == b"{}"


def test_unmask_naming_a_non_neighbour_is_refused() -> None:
    run, requests = _sparse_until_masked()
    node = SPARSE[0]
    outsider = next(v for v in SPARSE if v != node and v not in run.config.graph().neighbours(node))
    request = {**requests[node], "dropped": [*requests[node]["dropped"], outsider]}
    _expect_abort(run.sites[node], request, f"node {outsider}")


def test_unmask_naming_a_node_alive_and_dropped_is_refused() -> None:
    run, requests = _sparse_until_masked()
    node = SPARSE[0]
    neighbour = run.config.graph().neighbours(node)[0]
    request = {**requests[node], "dropped": [neighbour]}
    _expect_abort(run.sites[node], request, "both alive and dropped")


def test_unmask_listing_the_site_itself_as_dropped_is_refused() -> None:
    run, requests = _sparse_until_masked()
    node = SPARSE[0]
    alive = [v for v in requests[node]["alive"] if v != node]
    _expect_abort(
        run.sites[node], {**requests[node], "alive": alive, "dropped": [node]}, "this site"
    )


def test_unmask_with_fewer_live_holders_than_threshold_is_refused() -> None:
    run, requests = _sparse_until_masked()
    node = SPARSE[0]
    others = [v for v in requests[node]["alive"] if v != node]
    request = {**requests[node], "alive": [node, others[0]], "dropped": others[1:]}
    _expect_abort(run.sites[node], request, "threshold")


def test_one_share_kind_per_neighbour_and_unmask_only_once() -> None:
    config = make_config(SPARSE, degree=4, threshold=3)
    run = run_round(config, drop={wire.Stage.MASKED_INPUT: [SPARSE[1]]})
    for node, reply in run.replies[wire.Stage.UNMASK].items():
        assert not set(reply["seed-share-ids"]) & set(reply["key-share-ids"])
        with pytest.raises(StageError):
            run.sites[node].unmask(run.requests[wire.Stage.UNMASK][node])


def test_contradictory_unmask_lists_never_yield_both_secrets_of_a_site() -> None:
    """A server telling some holders 'd is alive' and others 'd dropped' gets fewer than t
    shares of d's self-mask seed or of its mask key, for every split of d's neighbours.
    """
    nodes = [1, 2, 3, 4, 5, 6, 7]  # complete graph: 7 holders per site, threshold 4
    config = make_config(nodes)
    d = 4
    others = [v for v in nodes if v != d]
    for size in range(len(others) + 1):
        for told_dropped in itertools.combinations(others, size):
            run = run_round(config, stop_after=wire.Stage.MASKED_INPUT)
            genuine = signed_unmask_requests(run)
            seed_shares, key_shares = [], []
            for node in nodes:
                alive = [v for v in nodes if v == node or v == d or v not in told_dropped]
                if node in told_dropped:
                    alive.remove(d)
                dropped = [d] if node in told_dropped else []
                request = {
                    "run-id": config.run_id,
                    "round": config.round,
                    "stage": wire.Stage.UNMASK,
                    "config-digest": config.digest(),
                    "alive": sorted(alive),
                    "dropped": dropped,
                    **{k: genuine[node][k] for k in ("contributors", "signers", "signatures")},
                }
                try:
                    reply = run.sites[node].unmask(request)
                except SecAggError:
                    continue
                for owner, i in zip(reply["seed-share-ids"], itertools.count()):
                    if owner == d:
                        seed_shares.append(
                            reply["seed-shares"][i * SHARE_LEN : (i + 1) * SHARE_LEN]
                        )
                for owner, i in zip(reply["key-share-ids"], itertools.count()):
                    if owner == d:
                        key_shares.append(reply["key-shares"][i * SHARE_LEN : (i + 1) * SHARE_LEN])
            t = config.threshold
            assert len(seed_shares) < t or len(key_shares) < t
            with pytest.raises(SecAggError):
                combine_shares(min(seed_shares, key_shares, key=len), threshold=t)


# ----------------------------------------------------------------------------- replays


def _other_stage(stage: str) -> str:
    if stage in (wire.Stage.UNMASK, wire.Stage.CONSISTENCY_CHECK):
        return wire.Stage.SHARE_KEYS
    return wire.Stage.UNMASK


REPLAYS = [
    ("run-id", lambda r: {**r, "run-id": r["run-id"] + 1}, "run"),
    ("round", lambda r: {**r, "round": r["round"] + 1}, "round"),
    ("stage", lambda r: {**r, "stage": _other_stage(r["stage"])}, "expected a"),
    ("digest", lambda r: {**r, "config-digest": bytes(32)}, "config"),
    ("extra key", lambda r: {**r, "note": 1}, "unknown key"),
    ("missing key", lambda r: {k: v for k, v in r.items() if k != "round"}, "missing key"),
]


@pytest.mark.parametrize("stage", wire.SECAGG_STAGES[1:])
@pytest.mark.parametrize("name,mutate,match", REPLAYS, ids=[r[0] for r in REPLAYS])
def test_requests_for_another_run_round_stage_or_config_are_refused(
    stage: str, name: str, mutate: Any, match: str
) -> None:
    config = make_config([1, 2, 3, 4])
    previous = {
        wire.Stage.SHARE_KEYS: wire.Stage.ADVERTISE_KEYS,
        wire.Stage.MASKED_INPUT: wire.Stage.SHARE_KEYS,
        wire.Stage.CONSISTENCY_CHECK: wire.Stage.MASKED_INPUT,
        wire.Stage.UNMASK: wire.Stage.CONSISTENCY_CHECK,
    }
    run = run_round(config, stop_after=previous[stage])
    nxt = {
        wire.Stage.SHARE_KEYS: run.server.share_keys_requests,
        wire.Stage.MASKED_INPUT: run.server.masked_input_requests,
        wire.Stage.CONSISTENCY_CHECK: run.server.consistency_requests,
        wire.Stage.UNMASK: run.server.unmask_requests,
    }[stage]()
    site = run.sites[1]
    call = getattr(site, stage.replace("-", "_"))
    kwargs = {"vector": run.inputs[1]} if stage == wire.Stage.MASKED_INPUT else {}
    with pytest.raises(SecAggError, match=match):
        call(mutate(nxt[1]), **kwargs)
    assert site.stage is Stage(previous[stage])  # nothing changed: the genuine request works
    call(nxt[1], **kwargs)


def test_advertise_request_for_another_config_is_refused() -> None:
    config = make_config([1, 2, 3, 4])
    other = make_config([1, 2, 3, 4], threshold=4)
    cohort = cohort_of(config.cohort)
    site = SiteSession(
        config=config, node_id=1, identity_key=cohort.identities[1], registry=cohort.registry
    )
    with pytest.raises(SecAggError, match="another config"):
        site.advertise_keys({**other.to_payload(), "stage": wire.Stage.ADVERTISE_KEYS})
    assert site.stage is Stage.SETUP


# ----------------------------------------------------------------------------- tampering


def _share_keys_request(nodes: list[int]) -> tuple[Any, dict[int, dict[str, Any]]]:
    run = run_round(make_config(nodes), stop_after=wire.Stage.ADVERTISE_KEYS)
    return run, run.server.share_keys_requests()


@pytest.mark.parametrize("field", ["signatures", "enc-pks", "mask-pks", "seed-commits"])
def test_tampered_advertisement_relayed_by_the_server_is_refused(field: str) -> None:
    run, requests = _share_keys_request([1, 2, 3, 4])
    data = bytearray(requests[1][field])
    data[3] ^= 1
    with pytest.raises(SecAggError, match="node 2"):
        run.sites[1].share_keys({**requests[1], field: bytes(data)})
    assert run.sites[1].stage is Stage.ABORTED


def test_swapped_advertisements_are_refused() -> None:
    run, requests = _share_keys_request([1, 2, 3, 4])
    request = {**requests[1], "node-ids": list(reversed(requests[1]["node-ids"]))}
    with pytest.raises(SecAggError, match="invalid signature"):
        run.sites[1].share_keys(request)


def test_share_keys_naming_a_non_neighbour_or_unregistered_node_is_refused() -> None:
    nodes = list(range(12))
    run = run_round(make_config(nodes, degree=4, threshold=3), stop_after=wire.Stage.ADVERTISE_KEYS)
    requests = run.server.share_keys_requests()
    outsider = next(v for v in nodes if v and v not in run.config.graph().neighbours(0))
    request = {**requests[0], "node-ids": [outsider, *requests[0]["node-ids"][1:]]}
    with pytest.raises(SecAggError, match=f"node {outsider}, not a neighbour"):
        run.sites[0].share_keys(request)
    config = make_config([1, 2, 3, 4])
    cohort = cohort_of(config.cohort)
    registry = {k: v for k, v in cohort.registry.items() if k != 2}
    run = run_round(config, stop_after=wire.Stage.ADVERTISE_KEYS)
    with pytest.raises(SecAggError, match="node 2 has no identity key"):  # refused on restore
        SiteSession.from_state(
            run.sites[1].to_state(), identity_key=cohort.identities[1], registry=registry
        )


def _masked_input_requests(config: Any) -> tuple[Any, dict[int, dict[str, Any]]]:
    run = run_round(config, stop_after=wire.Stage.SHARE_KEYS)
    return run, run.server.masked_input_requests()


@pytest.mark.parametrize("position", [0, 20, CIPHERTEXT_LEN - 1, CIPHERTEXT_LEN + 50])
def test_tampered_share_ciphertext_is_refused(position: int) -> None:
    run, requests = _masked_input_requests(make_config([1, 2, 3, 4]))
    data = bytearray(requests[1]["ciphertexts"])
    data[position] ^= 0x80
    with pytest.raises(SecAggError, match="failed authentication"):
        run.sites[1].masked_input({**requests[1], "ciphertexts": bytes(data)}, vector=run.inputs[1])
    assert run.sites[1].stage is Stage.ABORTED


def test_swapped_share_ciphertexts_are_refused() -> None:
    run, requests = _masked_input_requests(make_config([1, 2, 3, 4]))
    cts = requests[1]["ciphertexts"]
    swapped = (
        cts[CIPHERTEXT_LEN : 2 * CIPHERTEXT_LEN] + cts[:CIPHERTEXT_LEN] + cts[2 * CIPHERTEXT_LEN :]
    )
    with pytest.raises(SecAggError, match="failed authentication"):
        run.sites[1].masked_input({**requests[1], "ciphertexts": swapped}, vector=run.inputs[1])


def test_share_ciphertext_replayed_from_another_round_is_refused() -> None:
    _, old = _masked_input_requests(make_config([1, 2, 3, 4], round=2))
    run, new = _masked_input_requests(make_config([1, 2, 3, 4], round=3))
    request = {**new[1], "ciphertexts": old[1]["ciphertexts"]}
    with pytest.raises(SecAggError, match="failed authentication"):
        run.sites[1].masked_input(request, vector=run.inputs[1])


def test_masked_input_rejects_wrong_vectors_without_aborting() -> None:
    import numpy as np

    run, requests = _masked_input_requests(make_config([1, 2, 3, 4], modulus_bits=20))
    site = run.sites[1]
    for bad in (np.zeros(16, np.uint64), np.zeros(15, np.uint32), np.full(16, 2**20, np.uint32)):
        with pytest.raises(ValueError, match="vector"):
            site.masked_input(requests[1], vector=bad)
    assert site.stage is Stage.SHARE_KEYS
    site.masked_input(requests[1], vector=run.inputs[1])
