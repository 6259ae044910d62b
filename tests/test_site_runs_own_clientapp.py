"""A coordinator's FAB carries its own ClientApp; a deployed site runs the one it installed.

Real processes on 127.0.0.1: a SuperLink, a SuperNode started with the environment
``confide client`` gives it (:func:`client.agent._env`), and ``flwr run`` of an app whose
ClientApp is a coordinator's replacement for Confide's: it writes a marker file at the site
and replies ``pwned``. The site must answer with its installed ``query.hello`` handler and
never write the marker.
"""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from client.agent import _env, node_config_arg
from client.clientapp_process import SHIM_DIR, SHIM_NAME, install_shim, load_site_app
from client.deploy_config import SiteDeployConfig, worker_dir
from client.worker import WorkerSupervisor
from protocol.procs import find_bin, free_port, kill_tree
from protocol.wire import Field, Key, Status

_EVIL_CLIENT = '''
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query("hello")
def hello(msg, context):
    Path(context.run_config["marker"]).write_text("the coordinator's code ran at the site")
    return Message(RecordDict({"config": ConfigRecord({"status": "pwned"})}), reply_to=msg)
'''

_EVIL_SERVER = '''
import json
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    deadline = time.time() + 120
    nodes = []
    while not nodes and time.time() < deadline:
        nodes = sorted(grid.get_node_ids())
        time.sleep(0.2)
    msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n,
                    message_type="query.hello") for n in nodes]
    out = []
    for r in grid.send_and_receive(msgs, timeout=120):
        if r.has_error():
            out.append({"error": r.error.reason})
        else:
            out.append({k: dict(v) for k, v in r.content.config_records.items()})
    with open(context.run_config["out"], "w") as fh:
        json.dump(out, fh)
'''


def _coordinator_app(dest: Path, marker: Path, out: Path) -> Path:
    (dest / "client").mkdir(parents=True)
    (dest / "client" / "__init__.py").write_text("")
    (dest / "client" / "app.py").write_text(_EVIL_CLIENT)
    (dest / "evil_server.py").write_text(_EVIL_SERVER)
    (dest / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "notconfide"
        version = "1.0.0"
        dependencies = []

        [tool.flwr.app]
        publisher = "coordinator"

        [tool.flwr.app.components]
        serverapp = "evil_server:app"
        clientapp = "client.app:app"

        [tool.flwr.app.config]
        marker = "{marker}"
        out = "{out}"
        """))
    return dest


def _site(tmp: Path) -> SiteDeployConfig:
    data = tmp / "site-data.jsonl"
    data.write_text(json.dumps({"text": "private record"}) + "\n")
    return SiteDeployConfig(
        path=tmp / "site.toml", name="bank", superlink="", ca_cert=None,
        auth_key=tmp / "unused.key", data_path=data, state_dir=tmp / "state", enrolment=None,
        model="embedded", hf_cache=None, device="cpu", runtime_port=0, connect_timeout=60.0)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"port {port} not open"
            time.sleep(0.2)


def test_the_agent_puts_the_site_clientapp_first_on_the_supernode_path(tmp_path: Path) -> None:
    cfg = _site(tmp_path)
    env = _env(cfg, "token")
    first = Path(env["PATH"].split(":")[0])
    assert first == cfg.state_dir / SHIM_DIR
    shim = first / SHIM_NAME
    assert shim.is_file() and (shim.stat().st_mode & 0o777) == 0o700
    assert (first.stat().st_mode & 0o777) == 0o700
    assert "from client.clientapp_process import main" in shim.read_text()
    assert install_shim(cfg.state_dir) == shim  # idempotent: rewritten in place


def test_the_site_loader_returns_the_installed_app_whatever_the_fab() -> None:
    import client.app

    assert load_site_app("coordinator/notconfide", "1.0.0", "ab" * 32) is client.app.app


def test_a_coordinator_fab_clientapp_never_runs_at_a_deployed_site(tmp_path: Path) -> None:
    marker, out = tmp_path / "marker.txt", tmp_path / "replies.json"
    app = _coordinator_app(tmp_path / "app", marker, out)
    site = _site(tmp_path)
    token = uuid.uuid4().hex
    env = _env(site, token)
    home = tmp_path / "coordinator-home"
    home.mkdir()
    control, fleet, node_port = (free_port() for _ in range(3))
    procs: list[subprocess.Popen[bytes]] = []
    # the site's resident worker, as `confide client` starts it (the site's app relays to it)
    assert site.worker_socket is not None
    worker = WorkerSupervisor(site.name, site.worker_socket, worker_dir(site.state_dir),
                              env=_env(site, uuid.uuid4().hex), cwd=site.state_dir,
                              out=(tmp_path / "worker.log").open("w"))
    worker.start()
    try:
        link_log = tmp_path / "superlink.log"
        link_env = dict(env, FLWR_HOME=str(home))
        procs.append(subprocess.Popen(
            [find_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1",
             "--port", str(control), "--fleet-api-address", f"127.0.0.1:{fleet}",
             "--disable-runtime-dependency-installation"],
            stdout=link_log.open("wb"), stderr=subprocess.STDOUT, env=link_env,
            cwd=str(tmp_path), start_new_session=True))
        _wait_port(control, procs[0], link_log)
        _wait_port(fleet, procs[0], link_log)
        node_log = tmp_path / "supernode.log"
        procs.append(subprocess.Popen(
            [find_bin("flower-supernode"), "--insecure", "--grpc-rere", "--superlink",
             f"127.0.0.1:{fleet}", "--host", "127.0.0.1", "--port", str(node_port),
             "--node-config", node_config_arg(site.node_config())],
            stdout=node_log.open("wb"), stderr=subprocess.STDOUT, env=env,
            cwd=str(tmp_path), start_new_session=True))
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "c"\n\n[superlink.c]\n'
            f'address = "127.0.0.1:{control}"\ninsecure = true\n')
        run = subprocess.run([find_bin("flwr"), "run", str(app), "c", "--stream"],
                             env=link_env, cwd=str(tmp_path), capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        replies = json.loads(out.read_text())
        node_text = node_log.read_text(errors="replace")
        assert not marker.exists(), "the coordinator's ClientApp ran at the site"
        assert len(replies) == 1, (replies, node_text[-3000:])
        status = replies[0][Key.CONFIG]
        assert status[Field.STATUS] == Status.OK and status[Field.SITE] == "bank", replies
        assert "is not executed" in node_text, node_text[-3000:]
    finally:
        for p in procs:
            kill_tree(p, token, timeout=5)
        worker.stop()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-v"])
