"""The site's SuperNode process (client.supernode_process): its own task loop and waits.

Real Flower processes on 127.0.0.1 (a SuperLink, the site's SuperNode started with the
command ``confide client`` uses), and unit checks of the waits it patches:

* only the site's executor can claim the site's tasks: a local process without this
  start's secret is refused (in Flower's own ``subprocess`` isolation anyone on the machine
  may claim them: the contrast is checked too, so the test would see the protection go);
* a ClientApp that raises on one message costs that message an error reply, and the next
  message is answered: the loop never ends on a task;
* the SuperNode's sleeps are capped at the site's ``poll-interval``, its object pulls retry
  after it, and any Flower but the one checked is left as it is.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from client.agent import _env, node_config_arg, supernode_command
from client.deploy_config import SiteDeployConfig, worker_dir
from client.supernode_process import SECRET_NAME, patch_polling, run_executor
from protocol.object_pulls import BACKOFF_CAP_S, FIRST_RETRY_S
from protocol.procs import free_port, kill_tree
from protocol.wire import Field, Key, Status
from tests._local_flower import (
    HELLO_SERVER,
    app_dir,
    flwr_run,
    site_config,
    start_superlink,
    wait_port,
)


def _site(tmp: Path, *, executor: bool) -> SiteDeployConfig:
    return site_config(tmp, executor=executor, worker=executor)


def _flower_args(fleet: int, port: int, node_config: dict[str, Any]) -> list[str]:
    return ["--insecure", "--grpc-rere", "--superlink", f"127.0.0.1:{fleet}", "--host",
            "127.0.0.1", "--port", str(port), "--node-config", node_config_arg(node_config)]


def _acquire(port: int, secret: bytes | None) -> Any:
    """Ask the SuperNode's Runtime API for a task, as a SuperExec would."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.superexec.run_superexec import _SUPEREXEC_AUTH_METHODS

    chain: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        chain.append(SuperExecAuthHttpInterceptor(master_secret=secret,
                                                  protected_methods=_SUPEREXEC_AUTH_METHODS))
    client = RuntimeHttpClient.from_server_address(
        server_address=f"127.0.0.1:{port}", insecure=True, root_certificates=None,
        interceptors=chain)
    try:
        return client.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-clientapp"]))
    finally:
        client.close()


@pytest.mark.parametrize("executor", [True, False], ids=["site-executor", "flower-subprocess"])
def test_only_the_site_executor_can_claim_the_site_tasks(tmp_path: Path, executor: bool) -> None:
    site = _site(tmp_path, executor=executor)
    token = uuid.uuid4().hex
    env = _env(site, token)
    link, _, fleet = start_superlink(tmp_path, env, tmp_path / "home")
    port, log = free_port(), tmp_path / "supernode.log"
    node = subprocess.Popen(supernode_command(site, _flower_args(fleet, port, {})),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=str(tmp_path), start_new_session=True)
    try:
        wait_port(port, node, log)
        if not executor:  # Flower's default: any local process may claim the site's tasks
            assert _acquire(port, None) is not None
            return
        secret_file = worker_dir(site.state_dir) / SECRET_NAME
        assert (secret_file.stat().st_mode & 0o777) == 0o600
        assert (secret_file.parent.stat().st_mode & 0o777) == 0o700
        for secret in (None, b"a guess" * 4):
            with pytest.raises(Exception) as refused:
                _acquire(port, secret)
            assert "auth" in str(refused.value).lower() or "401" in str(refused.value), \
                refused.value
        assert _acquire(port, secret_file.read_bytes()) is not None  # the site's own
    finally:
        kill_tree(node, token, timeout=5)
        kill_tree(link, token, timeout=5)


def test_a_task_that_raises_gets_an_error_reply_and_the_loop_goes_on(tmp_path: Path) -> None:
    import client.app

    out = tmp_path / "replies.json"
    app = app_dir(tmp_path / "app", server=HELLO_SERVER,
                  config={"out": str(out), "count": "2"})
    site = _site(tmp_path, executor=False)
    token = uuid.uuid4().hex
    env = _env(site, token)
    home = tmp_path / "home"
    link, _, fleet = start_superlink(tmp_path, env, home)
    secret = b"s" * 32
    (tmp_path / "secret").write_bytes(secret)
    port, log = free_port(), tmp_path / "supernode.log"
    # Flower's SuperNode in process isolation; this test process is its executor
    node = subprocess.Popen(
        supernode_command(site, [*_flower_args(fleet, port, site.node_config()),
                                 "--isolation", "process", "--superexec-auth-secret-file",
                                 str(tmp_path / "secret")]),
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path),
        start_new_session=True)
    loads: list[str] = []

    def load_app(fab_id: str, fab_version: str, fab_hash: str) -> Any:
        loads.append(fab_hash)
        if len(loads) == 1:
            raise RuntimeError("the site's app failed on this message")
        return client.app.app

    stop = threading.Event()
    loop = threading.Thread(target=run_executor, daemon=True,
                            args=(f"127.0.0.1:{port}", secret, 0.05, load_app, stop))
    try:
        wait_port(port, node, log)
        loop.start()
        output = flwr_run(app, env, home, tmp_path)
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out.exists(), output[-3000:]
        replies = json.loads(out.read_text())
        assert len(replies) == 2 and len(loads) == 2, (replies, loads)
        assert "the site's app failed on this message" in replies[0]["error"], replies
        assert replies[1][Key.CONFIG][Field.STATUS] == Status.OK, replies
        assert loop.is_alive()
    finally:
        stop.set()
        loop.join(timeout=10)
        kill_tree(node, token, timeout=5)
        kill_tree(link, token, timeout=5)


@pytest.fixture()
def supernode_module() -> Any:
    """Flower's SuperNode module; whatever a test patches in it is put back after."""
    from flwr.supernode import start_client_internal as sci

    saved = sci.time, sci.pull_objects
    yield sci
    sci.time, sci.pull_objects = saved


def test_the_supernode_waits_at_most_the_poll_interval(supernode_module: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # what the patch waits through
    assert patch_polling(0.1) is None
    supernode_module.time.sleep(3)  # after an empty pull
    supernode_module.time.sleep(0.5)  # between checks for the ClientApp's reply
    supernode_module.time.sleep(0.02)
    assert slept == [0.1, 0.1, 0.02]
    assert supernode_module.time.monotonic is time.monotonic  # nothing else changes
    pull = supernode_module.pull_objects
    assert pull.keywords == {"initial_backoff": FIRST_RETRY_S, "backoff_cap": BACKOFF_CAP_S}
    assert patch_polling(0.2) is None  # again: from Flower's function, not stacked
    assert supernode_module.pull_objects.func is pull.func


def test_another_flower_is_left_as_it_is(supernode_module: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "1.40.0" if name == "flwr" else real(name))
    why = patch_polling(0.1)
    assert why is not None and "1.40.0" in why
    assert supernode_module.time is time
    assert not hasattr(supernode_module.pull_objects, "keywords")
