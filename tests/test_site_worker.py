"""The resident site worker over a real Unix-domain socket, with the real handlers.

The per-message ClientApp (``client.app:app``) relays to the worker when the node config names
its socket, and then imports no torch; the socket is the site's own (mode 0600 in a 0700
folder); a relay without a worker fails with a clear error reply; a worker killed in the
middle of a train message is restarted, the ledger keeps its entries and the interrupted
message is never run twice, and the model is loaded once per worker (the site's log shows
``time-model-load`` 0 after the first train message).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict

from client.app import app
from client.deploy_config import (
    NODE_WORKER_SOCKET,
    NODE_WORKER_WAIT,
    POLL_INTERVAL_S,
    worker_socket_path,
)
from client.local_round import MODEL_LOAD
from client.worker import JOURNAL_FILE, WorkerSupervisor
from privacy.ledger import PrivacyLedger
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import state_to_record
from protocol.site_log import TRAIN, read_site_rows
from protocol.wire import Field, Key, MessageType, Status
from tests._loopback import server_identity

REPO = Path(__file__).resolve().parent.parent
_HEAVY = ("torch", "transformers", "peft", "opacus")


def _run_config(tiny_model: Path, steps: int) -> RunConfig:
    return RunConfig.from_mapping({
        "model": str(tiny_model), "local-steps": steps, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", "dp": True, "num-server-rounds": 4,
        "round-timeout": 120.0,
    })


def _node_config(tmp_path: Path, tiny_sites: Path, *, wait: float = 60.0) -> dict[str, Any]:
    state = tmp_path / "state"
    return {"site-name": "alpha", "data-path": str(tiny_sites / "alpha"),
            "state-dir": str(state), "device": "cpu", "dp-budget-epsilon": 8.0,
            "dp-max-grad-norm": 0.01, NODE_WORKER_SOCKET: str(worker_socket_path(state)),
            NODE_WORKER_WAIT: wait}


def _train_message(cfg: RunConfig, round_num: int) -> Message:
    from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config

    lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.target_modules, base_model=cfg.model)
    state = initial_adapter_state(adapter_shapes(cfg.model, lcfg), seed=cfg.lora_seed)
    instr = RoundInstructions.for_round(cfg, round_num=round_num, run_id="worker-test")
    with server_identity():
        return Message(RecordDict({Key.ARRAYS: state_to_record(state),
                                   Key.CONFIG: instr.to_record()}),
                       dst_node_id=7, message_type=MessageType.TRAIN, group_id=str(round_num))


def _supervisor(node_config: dict[str, Any]) -> WorkerSupervisor:
    state = Path(node_config["state-dir"])
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", CONFIDE_SITE_LOG="1")
    sup = WorkerSupervisor("alpha", Path(node_config[NODE_WORKER_SOCKET]), state / "worker",
                           env=env, out=sys.stderr, cwd=REPO)
    sup.start()
    return sup


def _relay_in_subprocess(node_config: dict[str, Any], run_config: dict[str, Any]) -> dict[str, Any]:
    """Relay one ``query.hello`` from a fresh process, as flwr-clientapp would run it."""
    code = f"""
import json, sys
from flwr.app import ConfigRecord, Context, Message, RecordDict
from tests._loopback import server_identity
from client.app import app
with server_identity():
    msg = Message(RecordDict({{"config": ConfigRecord({{}})}}), dst_node_id=7,
                  message_type="query.hello")
ctx = Context(run_id=1, node_id=7, node_config={node_config!r}, state=RecordDict(),
              run_config={run_config!r})
reply = app(msg, ctx)
out = {{"heavy": [m for m in {_HEAVY!r} if m in sys.modules]}}
if reply.has_error():
    out["error"] = reply.error.reason
else:
    out["config"] = dict(reply.content["config"])
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300,
                          check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_relay_without_a_running_worker_replies_with_a_clear_error_and_loads_no_torch(
    tmp_path: Path, tiny_sites: Path
) -> None:
    # arrange: a node config naming a worker socket nobody listens on
    node = _node_config(tmp_path, tiny_sites, wait=1.0)

    # act: the ClientApp in a fresh process, as Flower runs it per message
    out = _relay_in_subprocess(node, RunConfig().to_mapping())

    # assert: an error reply that says what is wrong; no training stack imported
    assert "worker did not answer for 1 s" in out["error"]
    assert out["heavy"] == []


def test_the_worker_socket_is_0600_in_a_0700_folder_and_the_relay_imports_no_torch(
    tmp_path: Path, tiny_sites: Path
) -> None:
    # arrange: a worker started as the agent starts it
    node = _node_config(tmp_path, tiny_sites)
    sock = Path(node[NODE_WORKER_SOCKET])
    sup = _supervisor(node)
    try:
        # act: a hello relayed from a fresh ClientApp process
        out = _relay_in_subprocess(node, RunConfig().to_mapping())
        mode = stat.S_IMODE(os.stat(sock).st_mode)
        folder = stat.S_IMODE(os.stat(sock.parent).st_mode)
    finally:
        sup.stop()

    # assert: the worker answered for the site; only the site's user can open the socket
    assert out.get("config", {}).get(Field.SITE) == "alpha", out
    assert out["config"][Field.STATUS] == Status.OK
    assert out["heavy"] == []
    assert not sock.exists(), "a stopped worker removes its socket"
    assert (mode, folder) == (0o600, 0o700)


def test_a_worker_killed_mid_train_is_restarted_keeps_the_ledger_and_never_runs_a_message_twice(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: a DP site whose worker has trained two rounds (model loaded once)
    node = _node_config(tmp_path, tiny_sites)
    state = Path(node["state-dir"])
    quick, slow = _run_config(tiny_model, 2), _run_config(tiny_model, 4000)
    sup = _supervisor(node)
    try:
        ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                      run_config=quick.to_mapping())
        for rnd in (1, 2):
            reply = app(_train_message(quick, rnd), ctx)
            assert not reply.has_error(), reply.error.reason
            assert reply.content[Key.CONFIG][Field.STATUS] == Status.OK
        before = PrivacyLedger(state)
        n_before, head_before = len(before), before.head()
        journal = state / "worker" / JOURNAL_FILE
        started = len(json.loads(journal.read_text())["started"])

        # act: a long train message; kill the worker (SIGKILL) once it has started it
        slow_ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                           run_config=slow.to_mapping())
        replies: list[Message] = []
        relay = threading.Thread(target=lambda: replies.append(app(_train_message(slow, 3),
                                                                   slow_ctx)))
        relay.start()
        deadline = time.monotonic() + 60
        while len(json.loads(journal.read_text())["started"]) == started:
            assert time.monotonic() < deadline, "the worker never started the message"
            time.sleep(0.02)
        assert sup.proc is not None
        killed = sup.proc.pid
        os.kill(killed, signal.SIGKILL)
        relay.join(timeout=180)
        after_kill = PrivacyLedger(state)

        # a new message after the restart trains again, on a model the new worker loads
        reply4 = app(_train_message(quick, 4), ctx)
        final = PrivacyLedger(state)
        restarted = sup.proc.pid if sup.proc is not None else killed
    finally:
        sup.stop()

    # assert: the interrupted message got an error reply and was not run again
    assert len(replies) == 1 and replies[0].has_error()
    assert "never run twice" in replies[0].error.reason
    assert restarted != killed and sup.starts >= 2
    # the ledger lost nothing and charged nothing twice (its hash chain verified on load)
    assert (len(after_kill), after_kill.head()) == (n_before, head_before)
    assert not reply4.has_error() and reply4.content[Key.CONFIG][Field.STATUS] == Status.OK
    assert len(final) == n_before + 1
    rounds = [e.round for e in final.entries]
    assert sorted(rounds) == sorted(set(rounds)), "one ledger entry per round"
    # the model was loaded by the first train message of each worker process only
    loads = [row[MODEL_LOAD] for row in read_site_rows(state, kind=TRAIN)]
    assert len(loads) == 3 and loads[0] > 0 and loads[1] == 0.0 and loads[2] > 0


@pytest.mark.parametrize("state_dir", ["short", "x" * 120])
def test_the_worker_socket_path_fits_a_unix_socket(tmp_path: Path, state_dir: str) -> None:
    sock = worker_socket_path(tmp_path / state_dir)
    assert len(os.fsencode(str(sock))) <= 100 and sock.name == "worker.sock"
    if state_dir == "short":
        assert sock.parent == tmp_path / state_dir / "worker"


def test_site_toml_worker_switch_names_the_socket_in_the_node_config_only_when_on(
    tmp_path: Path
) -> None:
    from client.deploy_config import load_site_config
    from protocol.deploy_config import DeployConfigError
    from tests._deploy import make_deployment

    path = make_deployment(tmp_path, sites=("bank",)).site_cfgs["bank"]
    on = load_site_config(path)
    assert on.worker and on.node_config()[NODE_WORKER_SOCKET] == str(on.worker_socket)
    assert on.node_config()[NODE_WORKER_WAIT] == 120.0
    text = path.read_text()
    path.write_text(text.replace("[site]", "[site]\nworker = false", 1))
    off = load_site_config(path)
    assert off.worker_socket is None and NODE_WORKER_SOCKET not in off.node_config()
    assert on.executor and not off.executor  # the executor relays to the worker
    assert on.poll_interval == POLL_INTERVAL_S
    path.write_text(text.replace("[site]", "[site]\nworker = \"yes\"", 1))
    with pytest.raises(DeployConfigError, match=r"\[site\] `worker` must be true or false"):
        load_site_config(path)


def test_a_second_worker_of_the_same_site_waits_and_never_takes_over_the_live_socket(
    tmp_path: Path
) -> None:
    import grpc

    from client.relay import PING_METHOD

    sock, journal = tmp_path / "s" / "worker.sock", tmp_path / "state" / "worker"
    args = [sys.executable, "-m", "client.worker", "--socket", str(sock), "--journal-dir",
            str(journal), "--no-warm"]
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def ping() -> int:
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            grpc.channel_ready_future(ch).result(timeout=60)
            return int(ch.unary_unary(PING_METHOD)(b"", timeout=10))

    first = subprocess.Popen(args, env=env, cwd=str(REPO))
    second = None
    try:
        assert ping() == first.pid
        inode = os.stat(sock).st_ino
        second = subprocess.Popen(args, env=env, cwd=str(REPO))
        time.sleep(4)
        assert second.poll() is None and os.stat(sock).st_ino == inode
        assert ping() == first.pid
        first.terminate()
        first.wait(timeout=30)
        assert ping() == second.pid, "the waiting worker takes over once the first stops"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
