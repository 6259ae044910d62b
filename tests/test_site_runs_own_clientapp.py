"""A coordinator's FAB carries its own ClientApp; a deployed site runs the one it installed.

Real processes on 127.0.0.1: a SuperLink, a SuperNode started with the environment
``confide client`` gives it (:func:`client.agent._env`), and ``flwr run`` of an app whose
ClientApp is a coordinator's replacement for Confide's: it writes a marker file at the site
and replies ``pwned``. The site must answer with its installed ``query.hello`` handler and
never write the marker.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from client.agent import _env, node_config_arg, supernode_command
from client.clientapp_process import SHIM_DIR, SHIM_NAME, install_shim, load_site_app
from client.deploy_config import SiteDeployConfig, worker_dir
from client.worker import WorkerSupervisor
from protocol.procs import free_port, kill_tree
from protocol.wire import Field, Key, Status
from tests._local_flower import HELLO_SERVER, app_dir, flwr_run, site_config, start_superlink

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

def _coordinator_app(dest: Path, marker: Path, out: Path) -> Path:
    return app_dir(dest, server=HELLO_SERVER, client=_EVIL_CLIENT, name="notconfide",
                   config={"marker": str(marker), "out": str(out), "count": "1"})


def _site(tmp: Path, *, executor: bool = True) -> SiteDeployConfig:
    return site_config(tmp, executor=executor)


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


@pytest.mark.parametrize("executor", [True, False], ids=["site-executor", "flwr-clientapp"])
def test_a_coordinator_fab_clientapp_never_runs_at_a_deployed_site(tmp_path: Path,
                                                                  executor: bool) -> None:
    """In the SuperNode's own process (the executor) and in Flower's per-message process."""
    marker, out = tmp_path / "marker.txt", tmp_path / "replies.json"
    app = _coordinator_app(tmp_path / "app", marker, out)
    site = _site(tmp_path, executor=executor)
    token = uuid.uuid4().hex
    env = _env(site, token)
    home = tmp_path / "coordinator-home"
    node_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    # the site's resident worker, as `confide client` starts it (the site's app relays to it)
    assert site.worker_socket is not None
    worker = WorkerSupervisor(site.name, site.worker_socket, worker_dir(site.state_dir),
                              env=_env(site, uuid.uuid4().hex), cwd=site.state_dir,
                              out=(tmp_path / "worker.log").open("w"))
    worker.start()
    try:
        link, _, fleet = start_superlink(tmp_path, env, home)
        procs.append(link)
        node_log = tmp_path / "supernode.log"
        procs.append(subprocess.Popen(
            supernode_command(site, [
                "--insecure", "--grpc-rere", "--superlink", f"127.0.0.1:{fleet}", "--host",
                "127.0.0.1", "--port", str(node_port), "--node-config",
                node_config_arg(site.node_config())]),
            stdout=node_log.open("wb"), stderr=subprocess.STDOUT, env=env,
            cwd=str(tmp_path), start_new_session=True))
        flwr_run(app, env, home, tmp_path)
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
        in_process = "ClientApp tasks run in this process" in node_text
        assert in_process is executor, node_text[-3000:]
    finally:
        for p in procs:
            kill_tree(p, token, timeout=5)
        worker.stop()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-v"])
