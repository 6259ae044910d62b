"""What grows with the number of sites grows no faster than the work: counts, not timings.

- Flower's in-memory link state, indexed by node (:mod:`server.sim_linkstate`): one sweep of
  the simulation engine's per-node polling checks each node's own messages, not every stored
  message once per node, and answers exactly as Flower's own method does.
- The consistency check: a contributor set is framed once, however many signatures over it
  a site or the server verifies; an unmask request carries the signatures a site needs, not
  every one.
- The coordinator's stage clock books waits to the stage that waited.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from privacy.secagg import SecAggConfig, keys
from privacy.secagg.consistency import check_signed_set
from protocol.run_rows import MetricsRow
from protocol.wire import Stage
from server import sim_linkstate
from server.stage_clock import StageClock
from tests.test_secagg_harness import make_config, run_round


def _state_with_nodes(n: int) -> tuple[Any, Any, list[int]]:
    """A simulation's in-memory link state with ``n`` nodes and a grid over it."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.task_pb2 import Task  # type: ignore[attr-defined]
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                               ObjectStoreFactory())
    run = Run.create_empty(run_id=4242)
    run.primary_task_id, run.federation_id = 7, NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 4242, SUPERLINK_NODE_ID
    state = factory.state()
    state.run_ids[4242] = RunRecord(run=run)
    state.task_store[7] = Task(task_id=7, run_id=4242)
    nodes = list(_register_nodes(n, factory))
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return state, grid, nodes


def _push(grid: Any, nodes: list[int], per_node: int = 1) -> list[str]:
    msgs = [Message(RecordDict({"c": ConfigRecord({"i": i})}), dst_node_id=nd,
                    message_type="query", group_id="1")
            for i in range(per_node) for nd in nodes]
    return list(grid.push_messages(msgs))


def _sweep(state: Any, nodes: list[int]) -> list[list[str]]:
    """One pass of Flower's ``add_messages_to_queue``: each node's next message, ids only."""
    return [[m.metadata.message_id for m in state.get_message_ins(node_id=nd, limit=1)]
            for nd in nodes]


@pytest.fixture
def restore_linkstate() -> Iterator[None]:
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    saved = {k: InMemoryLinkState.__dict__[k] for k in ("get_message_ins", "store_message_ins")}
    yield
    for k, v in saved.items():
        setattr(InMemoryLinkState, k, v)
    if "_confide_indexed" in InMemoryLinkState.__dict__:
        delattr(InMemoryLinkState, "_confide_indexed")


def _count_checks(state: Any) -> list[int]:
    calls = [0]
    inner = state._check_stored_messages

    def counting(ids: set[str], run_id: int | None = None) -> None:
        calls[0] += len(ids)
        inner(ids, run_id)

    state._check_stored_messages = counting
    return calls


def test_flowers_own_sweep_checks_nodes_times_messages(restore_linkstate: None) -> None:
    state, grid, nodes = _state_with_nodes(40)
    _push(grid, nodes)
    _sweep(state, nodes)  # every message is now delivered, none answered yet
    calls = _count_checks(state)
    _sweep(state, nodes)
    assert calls[0] == 40 * 40  # what the index removes


def test_indexed_sweep_checks_each_nodes_own_messages_only(restore_linkstate: None) -> None:
    assert sim_linkstate.install()
    assert sim_linkstate.installed()
    state, grid, nodes = _state_with_nodes(40)
    _push(grid, nodes)
    _sweep(state, nodes)
    calls = _count_checks(state)
    _sweep(state, nodes)
    assert calls[0] == 40  # one stored message per node, each checked once


def test_indexed_link_state_answers_as_flowers_own(restore_linkstate: None) -> None:
    def scenario() -> list[Any]:
        state, grid, nodes = _state_with_nodes(12)
        ids = _push(grid, nodes, per_node=2)
        order = {mid: i for i, mid in enumerate(ids)}
        seen: list[Any] = [[[order[m] for m in got] for got in _sweep(state, nodes)]]
        state.delete_messages(set(ids[:5]))  # answered and pulled
        seen.append([[order[m] for m in got] for got in _sweep(state, nodes)])
        seen.append([[order[m] for m in got] for got in _sweep(state, nodes)])
        more = _push(grid, nodes[:3])
        order.update({mid: 100 + i for i, mid in enumerate(more)})
        everything = [[order[m.metadata.message_id]
                       for m in state.get_message_ins(node_id=nd, limit=None)] for nd in nodes]
        return [*seen, everything]

    plain = scenario()
    assert sim_linkstate.install()
    assert scenario() == plain


def test_install_is_idempotent_and_only_on_the_checked_flower(
        restore_linkstate: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr

    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    assert not sim_linkstate.install()
    assert not sim_linkstate.installed()
    monkeypatch.undo()
    assert sim_linkstate.install() and sim_linkstate.install()


def test_a_site_frames_the_signed_set_and_digests_the_config_once_for_all_signatures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(list(range(10, 40)), degree=29, vector_length=8)
    run = run_round(config, stop_after=Stage.CONSISTENCY_CHECK)
    request = run.server.unmask_requests()[10]
    site = run.sites[10]
    signed = site._secrets.contributors  # type: ignore[attr-defined]
    digests = [0]
    digest = SecAggConfig.digest

    def counting(self: SecAggConfig) -> bytes:
        digests[0] += 1
        return digest(self)

    monkeypatch.setattr(SecAggConfig, "digest", counting)
    keys._contributors_message.cache_clear()
    check_signed_set(request, config=config, signed=signed, registry=run.sites[10]._registry)
    info = keys._contributors_message.cache_info()
    assert len(request["signers"]) > 10
    assert info.misses == 1  # framed once: O(n) bytes, not O(n) per signature
    assert info.hits == len(request["signers"]) - 1
    assert digests[0] == 1  # the config's O(n) digest: once, not once per signature


def test_an_unmask_request_carries_the_signatures_a_site_needs_not_all() -> None:
    config = make_config(list(range(100, 140)), degree=10, threshold=6, vector_length=8)
    run = run_round(config)
    assert run.result is not None
    need = config.signature_threshold
    for request in run.requests[Stage.UNMASK].values():
        assert len(request["signers"]) == need < len(config.cohort)
        assert len(request["signatures"]) == need * keys.SIGNATURE_LEN
    assert len(run.requests[Stage.UNMASK]) == len(config.cohort)  # every signer is asked


def test_stage_clock_books_each_wait_to_the_innermost_open_stage() -> None:
    clock = StageClock()
    with clock.stage(1, "train (masked)"):
        clock.waited(1, 2.0)
        with clock.stage(1, "inner"):
            clock.waited(1, 0.5)
        time.sleep(0.01)
    clock.waited(1, 0.25)  # outside any stage
    times, waits = clock.pop(1)
    assert set(times) == {"train (masked)", "inner"}
    assert times["train (masked)"] >= times["inner"] >= 0
    assert waits == {"train (masked)": 2.0, "inner": 0.5, "other": 0.25}
    assert clock.pop(1) == ({}, {})


def test_metrics_rows_carry_stage_times_and_refuse_bad_ones() -> None:
    row = MetricsRow.from_json({"round": 1, "eval_loss": 1.0, "eval_perplexity": 2.7,
                                "sites": {}, "stage_time_s": {"secagg: keys": 0.5},
                                "stage_wait_s": {"secagg: keys": 0.4}})
    assert row.to_json()["stage_time_s"] == {"secagg: keys": 0.5}
    with pytest.raises(ValueError, match="stage_wait_s"):
        MetricsRow.from_json({"round": 1, "eval_loss": 1.0, "eval_perplexity": 2.7,
                              "sites": {}, "stage_wait_s": {"secagg: keys": "slow"}})
