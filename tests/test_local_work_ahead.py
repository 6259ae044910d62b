"""A secure round's local work begins at advertise-keys, bound to its session (``client.ahead``).

The adapter and instructions of a secure round travel with its first stage; a site whose
process lives across messages (the resident worker) trains while the coordinator routes keys
and shares, elsewhere the masked-input stage runs the work. The coordinator is the real one
(``server.secure.SecureAggregator`` over a ``server.rounds.RoundDriver``), honest or played
dishonestly; the sites run the unmodified ClientApp over the in-process loopback grid.

* In the background the work overlaps the share-keys stage, and the round it feeds is
  released with every site, as without it.
* What the coordinator chooses cannot make a site train more than it would otherwise: no
  adapter at advertise-keys is refused before any work; a replayed round starts none; a new
  session started over a running one never takes the old session's result, and two pieces
  of work never share the model.
* Work lost with its process (a worker restart) drops the site from that round, and sends
  nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import client.secure_handlers
from client import ahead
from protocol.instructions import RoundInstructions
from protocol.site_log import TRAIN, read_site_rows
from protocol.wire import Key, MessageType, Reason, Stage, Status
from tests.test_eval_in_train import SITES, _coordinator, _rows

AT_ADVERTISE = f"{Stage.ADVERTISE_KEYS}: {Reason.SECAGG_REFUSED}"


@pytest.fixture
def background() -> Iterator[None]:
    """The resident worker's mode: local work runs in a thread from advertise-keys on."""
    ahead.run_in_background()
    try:
        yield
    finally:
        ahead.run_in_background(False)


def test_work_in_the_background_overlaps_the_share_stage_and_the_round_is_released(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, background: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # arrange: each site's work waits (at most 30 s) until that site answered share-keys;
    # only work that runs beside the stages sees it
    shared: dict[int, threading.Event] = {}
    began_before_share: dict[int, bool] = {}
    saw_share: dict[int, bool] = {}
    real_share, real_work = client.secure_handlers.share, client.secure_handlers._train_work

    def share(msg: Message, context: Context) -> Message:
        reply = real_share(msg, context)
        shared.setdefault(context.node_id, threading.Event()).set()
        return reply

    def work(instr: RoundInstructions, arrays: ArrayRecord, context: Context) -> Any:
        event = shared.setdefault(context.node_id, threading.Event())
        began_before_share[context.node_id] = not event.is_set()
        saw_share[context.node_id] = event.wait(30.0)
        return real_work(instr, arrays, context)

    monkeypatch.setattr(client.secure_handlers, "share", share)
    monkeypatch.setattr(client.secure_handlers, "_train_work", work)
    from tests._loopback import server_identity

    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        t0 = time.perf_counter()
        new, part, carried = driver.secure.round(1, state, nodes, driver.instructions(1),
                                                 evaluate=True)
        took = time.perf_counter() - t0

    assert took < 30.0  # no site's work sat out its wait: it ran beside the share stage
    assert began_before_share == {n: True for n in nodes}  # work began at advertise-keys
    assert saw_share == {n: True for n in nodes}
    assert new is not None and part["released"] is True and part["contributed"] == list(SITES)
    assert carried is not None and carried.num_examples > 0
    assert all(_rows(tmp_path, s, TRAIN) == [1] for s in SITES)


class _NoAdapterAtAdvertise:
    """A coordinator of the earlier wire: the adapter and instructions only at stage 3."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        out = []
        for m in messages:
            if m.metadata.message_type == MessageType.SECAGG_ADVERTISE:
                content = RecordDict({k: v for k, v in m.content.items()
                                      if k not in (Key.ARRAYS, Key.CONFIG)})
                m = Message(content, dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id)
            out.append(m)
        return type(self.grid).send_and_receive(self.grid, out, timeout=timeout)


def test_an_advertise_request_without_the_rounds_work_is_refused_before_training(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, background: None,
) -> None:
    from tests._loopback import server_identity

    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        grid = driver.grid
        grid.send_and_receive = _NoAdapterAtAdvertise(grid).send_and_receive  # type: ignore[method-assign]
        new, part, _ = driver.secure.round(1, state, nodes, driver.instructions(1))

    assert new is None and part["released"] is False
    assert part["failed"] == {s: AT_ADVERTISE for s in SITES}
    assert all(_rows(tmp_path, s, TRAIN) == [] for s in SITES)


def test_a_replayed_round_starts_no_work_and_is_declined(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, background: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests._loopback import server_identity

    started: list[bool] = []  # per advertise-keys request: whether work was begun
    real_start = ahead.start

    def start(context: Context, binding: bytes, record: ConfigRecord, arrays: ArrayRecord,
              work: Any) -> None:
        started.append(work is not None)
        real_start(context, binding, record, arrays, work)

    monkeypatch.setattr(ahead, "start", start)
    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        first, part, _ = driver.secure.round(1, state, nodes, driver.instructions(1))
        # act: the coordinator runs round 1 again (a new attempt, the same adapter)
        again, part2, _ = driver.secure.round(1, state, nodes, driver.instructions(1),
                                              attempt=1)

    assert first is not None and part["released"] is True
    assert again is None and part2["released"] is False
    assert part2["declined"] == {s: Reason.ROUND_ALREADY_CONTRIBUTED for s in SITES}
    assert started == [True] * len(SITES) + [False] * len(SITES)  # no work for the replay
    assert all(_rows(tmp_path, s, TRAIN) == [1] for s in SITES)  # trained once


def _ctx(node: int = 7) -> Context:
    return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})


def _instr(round_num: int) -> ConfigRecord:
    from protocol.config import RunConfig

    return RoundInstructions.for_round(RunConfig(), round_num=round_num, run_id="r").to_record()


def _arrays(value: float) -> ArrayRecord:
    from protocol.messages import state_to_record

    return state_to_record({"w": np.full(2, value, np.float32)})


def test_a_new_session_over_running_work_never_takes_the_old_result_nor_shares_the_model(
    background: None,
) -> None:
    from protocol.messages import record_to_state

    inside: list[str] = []
    release_old = threading.Event()

    def work(instr: RoundInstructions, arrays: ArrayRecord, context: Context) -> Any:
        with ahead.MODEL_LOCK:  # as training and evaluation take it
            inside.append(f"in {instr.round_num}")
            if instr.round_num == 1:
                release_old.wait(10.0)
            inside.append(f"out {instr.round_num}")
            return instr.round_num, float(record_to_state(arrays)["w"][0])

    context = _ctx()
    ahead.start(context, b"session-1", _instr(1), _arrays(1.0), work)
    time.sleep(0.2)  # the first session's work holds the model
    # act: the coordinator opens another session while the first one's work still runs
    ahead.start(context, b"session-2", _instr(2), _arrays(2.0), work)
    with pytest.raises(KeyError):  # the first session's work is gone with its session
        ahead.result(context, b"session-1", ahead.instructions(context, b"session-1"), work)
    threading.Timer(0.3, release_old.set).start()
    outcome = ahead.result(context, b"session-2", ahead.instructions(context, b"session-2"),
                           work)

    assert outcome == (2, 2.0)
    assert inside == ["in 1", "out 1", "in 2", "out 2"]  # one at a time on the model


def test_work_lost_with_its_process_drops_the_site_and_sends_nothing(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, background: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests._loopback import server_identity

    real_masked = client.secure_handlers.masked_train
    gamma: list[int] = []

    def restarted(msg: Message, context: Context) -> Message:
        if context.node_id in gamma:  # gamma's worker restarted after its work was done
            job = ahead._jobs.pop(context.node_id)
            job.done.wait(30.0)
        return real_masked(msg, context)

    monkeypatch.setattr(client.secure_handlers, "masked_train", restarted)
    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        gamma.append(next(n for n, s in driver.site_names.items() if s == "gamma"))
        replies: list[Message] = []
        grid = driver.grid
        send = grid.send_and_receive

        def keep(messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
            out = send(messages, timeout=timeout)
            replies.extend(r for r in out if r.metadata.src_node_id in gamma)
            return out

        grid.send_and_receive = keep  # type: ignore[method-assign]
        new, part, _ = driver.secure.round(1, state, nodes, driver.instructions(1))

    assert new is not None and part["released"] is True
    assert part["contributed"] == ["alpha-0", "alpha-1", "beta"]
    assert part["failed"] == {"gamma": f"{Reason.TRAINING_FAILED} (LocalWorkLost)"}
    masked = [r for r in replies if r.metadata.message_type == MessageType.SECAGG_MASKED]
    assert len(masked) == 1 and Key.SECAGG not in masked[0].content  # nothing masked sent
    status = dict(masked[0].content[Key.CONFIG])
    assert status["status"] == Status.FAILED
    # the work itself ran (and wrote the site's own log) in the process that is gone
    assert [r["round"] for r in read_site_rows(tmp_path / "sites" / "gamma", kind=TRAIN)] == [1]


def test_a_site_that_sets_work_ahead_false_runs_the_work_at_the_masked_input_stage(
    background: None,
) -> None:
    ran: list[int] = []

    def work(instr: RoundInstructions, arrays: ArrayRecord, context: Context) -> Any:
        ran.append(instr.round_num)
        return instr.round_num

    context = Context(run_id=1, node_id=7, node_config={"work-ahead": False},
                      state=RecordDict(), run_config={})
    ahead.start(context, b"session-1", _instr(1), _arrays(1.0), work)
    time.sleep(0.1)
    assert ran == [] and 7 not in ahead._jobs  # nothing began at advertise-keys
    instr = ahead.instructions(context, b"session-1")
    assert ahead.result(context, b"session-1", instr, work) == 1 and ran == [1]


def test_work_ahead_in_site_toml_reaches_the_node_config(tmp_path: Path) -> None:
    from client.deploy_config import NODE_WORK_AHEAD, load_site_config
    from server.deploy_samples import site_toml

    path = tmp_path / "site.toml"
    path.write_text(site_toml(name="bank", data_path=str(tmp_path), superlink="127.0.0.1:9092",
                              extra={"work-ahead": False}))
    assert load_site_config(path, check_files=False).node_config()[NODE_WORK_AHEAD] is False
    path.write_text(site_toml(name="bank", data_path=str(tmp_path), superlink="127.0.0.1:9092",
                              extra={"work-ahead": 1}))
    with pytest.raises(Exception, match="work-ahead.*must be true or false"):
        load_site_config(path, check_files=False)


class _SkipsShareKeys:
    """A coordinator that sends the share-keys stage's request as the masked-input one."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        out = []
        for m in messages:
            if m.metadata.message_type == MessageType.SECAGG_SHARE:
                m = Message(m.content, dst_node_id=m.metadata.dst_node_id,
                            message_type=MessageType.SECAGG_MASKED, group_id=m.metadata.group_id)
            out.append(m)
        return type(self.grid).send_and_receive(self.grid, out, timeout=timeout)


def test_a_masked_input_request_out_of_order_is_refused_before_the_work_runs(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path,
) -> None:
    # the site's work runs at the masked-input stage (not in the background) here
    from tests._loopback import server_identity

    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        grid = driver.grid
        grid.send_and_receive = _SkipsShareKeys(grid).send_and_receive  # type: ignore[method-assign]
        new, part, _ = driver.secure.round(1, state, nodes, driver.instructions(1))

    assert new is None and part["released"] is False
    assert set(part["failed"]) == set(SITES)
    assert all(_rows(tmp_path, s, TRAIN) == [] for s in SITES)  # nothing trained, nothing spent
