"""A Flower user can run the app with Flower's own `flwr run .` against a local simulation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

from protocol.config import RunConfig
from protocol.procs import toml_value
from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED
from simulations.runner import _superlink
from tests.conftest import REPO


def test_pyproject_app_config_matches_run_config_defaults() -> None:
    app_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app_cfg["config"] == RunConfig().to_mapping()
    assert app_cfg["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}


def test_flwr_run_dot_completes_on_a_local_simulation(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = dict(os.environ, FLWR_HOME=str(home), CONFIDE_SIM_TOKEN=f"test-{os.getpid()}",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    out = tmp_path / "run"
    with _superlink(tmp_path, env, env["CONFIDE_SIM_TOKEN"]) as port:
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "sim"\n[superlink.sim]\naddress = "127.0.0.1:{port}"\n'
            "insecure = true\n")
        overrides = {"num-server-rounds": 1, "local-steps": 2, "model": str(tiny_model),
                     "data-dir": str(tiny_sites), "out-dir": str(out)}
        cmd = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
               "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
               "--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = RunFolder(out)
    assert folder.read_state().status == RUN_COMPLETED
    assert [r.round for r in folder.read_metrics()] == [0, 1]
