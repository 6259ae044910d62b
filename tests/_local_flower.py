"""Real Flower processes on 127.0.0.1 for tests: a SuperLink, and ``flwr run`` of an app.

A test starts the site side itself (the command ``confide client`` uses,
:func:`client.agent.supernode_command`), so that what runs there is the product's code.
"""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import time
from pathlib import Path

from client.deploy_config import SiteDeployConfig
from protocol.procs import find_bin, free_port

__all__ = ["HELLO_SERVER", "app_dir", "flwr_run", "site_config", "start_superlink",
           "wait_port"]

#: a ServerApp that sends ``query.hello`` to the first node, ``count`` times one after the
#: other, and writes each reply (its config records, or its error) to ``out`` as JSON
HELLO_SERVER = '''
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
    out = []
    for i in range(int(context.run_config["count"])):
        msg = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=nodes[0],
                      message_type="query.hello", group_id=str(i))
        for r in grid.send_and_receive([msg], timeout=120):
            if r.has_error():
                out.append({"error": r.error.reason})
            else:
                out.append({k: dict(v) for k, v in r.content.config_records.items()})
    with open(context.run_config["out"], "w") as fh:
        json.dump(out, fh)
'''


def site_config(tmp: Path, *, executor: bool = True, worker: bool = True) -> SiteDeployConfig:
    """A site ``bank`` with one private record, its state under ``tmp`` (no coordinator yet)."""
    data = tmp / "site-data.jsonl"
    data.write_text(json.dumps({"text": "private record"}) + "\n")
    return SiteDeployConfig(
        path=tmp / "site.toml", name="bank", superlink="", ca_cert=None,
        auth_key=tmp / "unused.key", data_path=data, state_dir=tmp / "state", enrolment=None,
        model="embedded", hf_cache=None, device="cpu", runtime_port=0, connect_timeout=60.0,
        executor=executor, worker=worker)


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Wait until ``port`` on 127.0.0.1 accepts connections (``proc`` must stay alive)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"port {port} not open"
            time.sleep(0.2)


def start_superlink(tmp: Path, env: dict[str, str], home: Path,
                    ) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start an insecure SuperLink; return it, its Control API port and its Fleet API port.

    ``home`` (``FLWR_HOME`` of ``flwr run``) gets a ``config.toml`` naming it ``c``.
    """
    control, fleet = free_port(), free_port()
    log = tmp / "superlink.log"
    proc = subprocess.Popen(
        [find_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1",
         "--port", str(control), "--fleet-api-address", f"127.0.0.1:{fleet}",
         "--disable-runtime-dependency-installation"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=dict(env, FLWR_HOME=str(home)),
        cwd=str(tmp), start_new_session=True)
    wait_port(control, proc, log)
    wait_port(fleet, proc, log)
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "c"\n\n[superlink.c]\n'
        f'address = "127.0.0.1:{control}"\ninsecure = true\n')
    return proc, control, fleet


def app_dir(dest: Path, *, server: str, config: dict[str, str], client: str = "",
            name: str = "testapp") -> Path:
    """Write a Flower app: ``server`` as its ServerApp, ``client`` (if any) as ``client.app``."""
    dest.mkdir(parents=True)
    (dest / "hello_server.py").write_text(server)
    if client:
        (dest / "client").mkdir()
        (dest / "client" / "__init__.py").write_text("")
        (dest / "client" / "app.py").write_text(client)
    values = "\n".join(f'{k} = "{v}"' for k, v in config.items())
    (dest / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "{name}"
        version = "1.0.0"
        dependencies = []

        [tool.flwr.app]
        publisher = "coordinator"

        [tool.flwr.app.components]
        serverapp = "hello_server:app"
        clientapp = "client.app:app"

        [tool.flwr.app.config]
        """) + values + "\n")
    return dest


def flwr_run(app: Path, env: dict[str, str], home: Path, cwd: Path) -> str:
    """``flwr run APP c --stream`` against :func:`start_superlink`'s SuperLink; its output.

    The command must succeed (the ServerApp's own failure shows only in the output).
    """
    run = subprocess.run([find_bin("flwr"), "run", str(app), "c", "--stream"],
                         env=dict(env, FLWR_HOME=str(home)), cwd=str(cwd),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr
