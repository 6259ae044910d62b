"""A site bounds its own work and refuses shared identities and low-order keys."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from privacy.secagg import SecAggError, SiteSession, keys
from privacy.secagg.cohort import SiteLimits, cohort_registry
from privacy.secagg.config import SecAggConfig
from privacy.secagg.graph import NeighbourGraph
from privacy.secagg.guard import GUARD_FILE, RoundGuard
from privacy.secagg.keys import generate_identity_key
from tests.test_secagg_harness import cohort_of, make_config, run_round

LOW_ORDER = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def _huge_request(n: int) -> dict[str, object]:
    return {
        "stage": "advertise-keys",
        "run-id": 1,
        "round": 1,
        "attempt": 0,
        "cohort": list(range(n)),
        "threshold": n // 2 + 1,
        "degree": n - 1,
        "graph-seed": bytes(32),
        "modulus-bits": 32,
        "vector-length": 16,
    }


def test_a_20000_node_complete_cohort_is_refused_in_bounded_memory_and_time() -> None:
    request = _huge_request(20_000)
    key = generate_identity_key()
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(SecAggError, match="cap"):
        SiteSession.from_request(request, node_id=0, identity_key=key, registry={})
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1 << 20  # well under a MB: nothing grew with the cohort


def test_the_cohort_cap_comes_from_the_sites_own_limits() -> None:
    request = _huge_request(40)
    with pytest.raises(SecAggError, match="degree 39 exceeds this site's cap of 20"):
        SiteSession.from_request(
            request,
            node_id=0,
            identity_key=generate_identity_key(),
            registry={},
            limits=SiteLimits(max_degree=20),
        )
    with pytest.raises(SecAggError, match="cohort of 40 sites exceeds"):
        SiteSession.from_request(
            request,
            node_id=0,
            identity_key=generate_identity_key(),
            registry={},
            limits=SiteLimits(max_cohort=30, max_degree=64),
        )
    with pytest.raises(SecAggError, match="below this site's minimum 25"):
        SiteSession.from_request(
            request,
            node_id=0,
            identity_key=generate_identity_key(),
            registry={},
            limits=SiteLimits(min_threshold=25),
        )
    with pytest.raises(ValueError, match="max_degree"):
        SiteLimits(max_degree=True)  # type: ignore[arg-type]


def test_a_large_sparse_graph_is_built_in_linear_memory() -> None:
    nodes = tuple(range(50_000))
    tracemalloc.start()
    graph = NeighbourGraph(nodes, 20, bytes(32))
    near = graph.neighbours(12345)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(near) == 20 and all(graph.are_neighbours(12345, v) for v in near)
    assert peak < 24 << 20  # order + positions, no n x degree table
    complete = NeighbourGraph(tuple(range(20_000)), 19_999, bytes(32))
    assert complete.are_neighbours(1, 19_999) and not complete.are_neighbours(5, 5)


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order-8", "p-1"])
@pytest.mark.parametrize("which", ["enc-pk", "mask-pk"])
def test_a_correctly_signed_low_order_key_is_rejected_at_advertise(
    point: bytes, which: str
) -> None:
    config = make_config([1, 2, 3, 4, 5])
    cohort = cohort_of(config.cohort)
    run = run_round(config, stop_after="advertise-keys")
    server = type(run.server)(config=config, registry=cohort.registry)
    server.advertise_requests()
    reply = dict(run.replies["advertise-keys"][2])
    reply[which] = point
    reply["signature"] = keys.sign_advertisement(
        cohort.identities[2],
        config.binding,
        node_id=2,
        enc_pk=reply["enc-pk"],
        mask_pk=reply["mask-pk"],
        seed_commit=reply["seed-commit"],
    )
    assert not server.receive_advertisement(2, reply)
    assert "low order" in server.rejections[-1][2]
    for v in (1, 3, 4, 5):  # the others go on: the round is not lost
        assert server.receive_advertisement(v, run.replies["advertise-keys"][v])
    requests = server.share_keys_requests()
    assert 2 not in requests and all(2 not in r["node-ids"] for r in requests.values())
    # and a site handed one by the coordinator refuses it
    forged = run.server.share_keys_requests()[1]
    i = forged["node-ids"].index(2)
    field = f"{which}s"
    data = bytearray(forged[field])
    data[32 * i : 32 * (i + 1)] = point
    sigs = bytearray(forged["signatures"])
    sigs[64 * i : 64 * (i + 1)] = reply["signature"]
    with pytest.raises(SecAggError, match="low order"):
        run.sites[1].share_keys({**forged, field: bytes(data), "signatures": bytes(sigs)})


def test_two_nodes_with_one_key_or_one_name_are_refused() -> None:
    config = make_config([1, 2, 3, 4])
    cohort = cohort_of(config.cohort)
    shared = {**cohort.registry, 4: cohort.registry[3]}
    with pytest.raises(SecAggError, match="nodes 3 and 4 share one identity key"):
        SiteSession(config=config, node_id=1, identity_key=cohort.identities[1], registry=shared)
    with pytest.raises(ValueError, match="share one identity key"):
        type(run_round(config, stop_after="advertise-keys").server)(config=config, registry=shared)
    enrolment = {"alice": b"a" * 32, "mallory": b"m" * 32, "bob": b"b" * 32}
    names = {1: "alice", 2: "mallory", 3: "mallory", 4: "mallory", 5: "mallory"}
    with pytest.raises(SecAggError, match="both 'mallory'"):
        cohort_registry(names, enrolment)
    with pytest.raises(SecAggError, match="not enrolled"):
        cohort_registry({1: "eve"}, enrolment)
    with pytest.raises(SecAggError, match="share one identity key"):
        cohort_registry({1: "alice", 2: "bob"}, {"alice": b"k" * 32, "bob": b"k" * 32})
    assert cohort_registry({1: "alice", 2: "bob"}, enrolment) == {1: b"a" * 32, 2: b"b" * 32}


def test_a_site_refuses_a_registry_giving_it_another_key() -> None:
    config = make_config([1, 2, 3])
    cohort = cohort_of(config.cohort)
    with pytest.raises(SecAggError, match="another identity key"):
        SiteSession(
            config=config,
            node_id=1,
            identity_key=generate_identity_key(),
            registry=cohort.registry,
        )


# ----------------------------------------------------------------------------- round guard


def test_round_guard_allows_one_masked_input_per_round_and_unmask_of_that_attempt(
    tmp_path: Path,
) -> None:
    guard = RoundGuard(tmp_path)
    guard.claim_masked_input(7, 3, 0)
    with pytest.raises(SecAggError, match="already sent a masked input"):
        RoundGuard(tmp_path).claim_masked_input(7, 3, 1)  # a fresh process sees the record
    with pytest.raises(SecAggError, match="already sent a masked input"):
        guard.claim_masked_input(7, 3, 0)
    with pytest.raises(SecAggError, match="no masked input in attempt 1"):
        guard.claim_unmask(7, 3, 1)
    guard.claim_unmask(7, 3, 0)
    with pytest.raises(SecAggError, match="already helped unmask"):
        guard.claim_unmask(7, 3, 0)
    guard.claim_masked_input(7, 4, 0)  # other rounds and runs are independent
    guard.claim_masked_input(8, 3, 0)
    assert RoundGuard(tmp_path).record(7, 3) == {"masked-input": 0, "unmask": 0}
    assert not list(tmp_path.glob(".secagg-rounds.*"))  # no temporary file left behind


def test_a_damaged_round_record_is_never_taken_for_an_empty_one(tmp_path: Path) -> None:
    (tmp_path / GUARD_FILE).write_text("{not json")
    with pytest.raises(SecAggError, match="unreadable"):
        RoundGuard(tmp_path).claim_masked_input(1, 1, 0)
    (tmp_path / GUARD_FILE).write_text('{"version": 9, "rounds": {}}')
    with pytest.raises(SecAggError, match="unknown format"):
        RoundGuard(tmp_path).claim_masked_input(1, 1, 0)
    with pytest.raises(ValueError, match="attempt"):
        RoundGuard(tmp_path / "x").claim_masked_input(1, 1, -1)


def test_a_site_with_a_guard_never_sends_two_masked_inputs_for_a_round(tmp_path: Path) -> None:
    config = make_config([1, 2, 3, 4])
    guards = {v: RoundGuard(tmp_path / str(v)) for v in config.cohort}
    run_round(config, site_kwargs=lambda v: {"guard": guards[v]})
    again = make_config([1, 2, 3, 4], graph_seed=bytes([9]) * 32, attempt=1)
    with pytest.raises(SecAggError, match="already sent a masked input"):
        run_round(again, site_kwargs=lambda v: {"guard": guards[v]})
    assert guards[1].record(config.run_id, config.round) == {"masked-input": 0, "unmask": 0}


# ----------------------------------------------------------------------------- site-level DP


def test_the_signed_contributor_count_is_exposed_and_checked_at_unmask() -> None:
    from tests.test_secagg_harness import signed_unmask_requests

    config = make_config([1, 2, 3, 4, 5, 6])
    run = run_round(config, stop_after="masked-input", drop={"masked-input": [6]})
    requests = signed_unmask_requests(run)
    assert run.sites[1].signed_contributors == (1, 2, 3, 4, 5)
    with pytest.raises(SecAggError, match="holds 5 sites, fewer than the 6"):
        run.sites[1].unmask(requests[1], min_contributors=6)
    reply = run.sites[2].unmask(requests[2], min_contributors=5)
    assert reply["seed-share-ids"] == [1, 2, 3, 4, 5] and reply["key-share-ids"] == [6]


def test_config_binds_the_attempt() -> None:
    a = make_config([1, 2, 3])
    b = make_config([1, 2, 3], attempt=1)
    assert a.digest() != b.digest()
    assert SecAggConfig.from_payload(b.to_payload()) == b
    assert a.signature_threshold == 2 and make_config(list(range(20))).signature_threshold == 11
