"""Helpers for the deployment tests: keys, configs on free loopback ports, real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from protocol.procs import free_port
from server.deploy_samples import server_toml, site_toml
from server.devkeys import make_keys

REPO = Path(__file__).resolve().parent.parent
CONFIDE = [sys.executable, "-m", "simulations.cli"]
SITE_DATA = REPO / "simulations" / "data" / "sites"


@dataclass
class Deployment:
    root: Path
    server_cfg: Path
    site_cfgs: dict[str, Path]
    run_dir: Path
    fleet: int
    control: int
    metrics: int
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)


def make_deployment(tmp: Path, *, sites: tuple[str, ...] = ("bank", "clinic", "law"),
                    run: dict[str, Any] | None = None,
                    connect_timeout: float = 600.0) -> Deployment:
    """Keys and configs for a server and ``sites`` on free loopback ports."""
    ks = make_keys(tmp / "keys", hosts=["127.0.0.1", "localhost"], sites=sites)
    fleet, control, metrics = free_port(), free_port(), free_port()
    run = run or {"num-server-rounds": 2, "min-sites": 2, "local-steps": 2, "batch-size": 8,
                  "max-seq-len": 64, "max-eval-examples": 8, "dp": True, "secagg": True,
                  "round-timeout": 120.0}
    server_cfg = ks.root / "server.toml"
    server_cfg.write_text(server_toml(sites=sites, fleet_port=fleet, control_port=control,
                                      metrics_port=metrics, out_dir=str(tmp / "run"), run=run))
    site_cfgs = {}
    for name in sites:
        path = ks.site_dirs[name] / "site.toml"
        path.write_text(site_toml(name=name, data_path=str(SITE_DATA / name),
                                  superlink=f"127.0.0.1:{fleet}", connect_timeout=connect_timeout))
        site_cfgs[name] = path
    return Deployment(ks.root, server_cfg, site_cfgs, tmp / "run", fleet, control, metrics)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
              "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"})
    return e


def start(dep: Deployment, args: list[str], log: Path) -> subprocess.Popen[Any]:
    fh = log.open("wb")
    proc = subprocess.Popen(CONFIDE + args, stdout=fh, stderr=subprocess.STDOUT, env=env(),
                            cwd=str(REPO), start_new_session=True)
    dep.procs.append(proc)
    return proc


def wait_for(pred: Any, timeout: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(poll)


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def tree(proc: subprocess.Popen[Any]) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    return []


def crash(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process and everything it started (a machine crash, no cleanup)."""
    for p in tree(proc):
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def stop_all(dep: Deployment) -> None:
    """Stop every process a test started, gently then by force, children included."""
    members: list[psutil.Process] = []
    for proc in dep.procs:
        members += tree(proc)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in dep.procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in members:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.send_signal(signal.SIGKILL)
