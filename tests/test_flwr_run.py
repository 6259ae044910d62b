"""A Flower user can run the app with Flower's own `flwr run .` against a local simulation.

With the `[tool.flwr.app.config]` defaults (DP and secure aggregation off) the ServerApp
refuses to start and says what is off; `allow-no-privacy=true` runs it anyway. The defaults
are the coordinator's choice: a deployed site never takes a DP policy from them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from client.privacy_agent import policy_from_config
from protocol.config import RunConfig
from protocol.procs import toml_value
from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED
from server.privacy_gate import PrivacyOffError, refuse_without_privacy
from simulations.runner import _superlink
from tests.conftest import REPO

_WEAK = '{"budget-epsilon": 1000000.0, "max-grad-norm": 100.0}'


def test_pyproject_app_config_matches_run_config_defaults() -> None:
    app_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app_cfg["config"] == RunConfig().to_mapping()
    assert app_cfg["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}


def test_pyproject_defaults_keep_the_privacy_stack_off_so_the_server_refuses_them() -> None:
    app_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    cfg = RunConfig.from_mapping(app_cfg["config"])
    with pytest.raises(PrivacyOffError) as err:
        refuse_without_privacy(cfg)
    message = str(err.value)
    assert "dp = false" in message and "secagg = false" in message
    assert "allow-no-privacy=true" in message and "confide simulate" in message


@pytest.mark.parametrize("dp, secagg, named", [(True, False, "secagg"), (False, True, "dp")])
def test_the_refusal_names_only_what_is_off(dp: bool, secagg: bool, named: str) -> None:
    cfg = RunConfig(dp=dp, secagg=secagg, secagg_enrolment="enrolment.json" if secagg else "")
    with pytest.raises(PrivacyOffError) as err:
        refuse_without_privacy(cfg)
    other = "secagg" if named == "dp" else "dp"
    assert f"{named} = false" in str(err.value) and f"{other} = false" not in str(err.value)
    refuse_without_privacy(cfg.replace(allow_no_privacy=True))  # meant: no refusal
    refuse_without_privacy(RunConfig(dp=True, secagg=True, secagg_enrolment="e.json"))


def test_a_deployed_site_never_takes_its_dp_policy_from_the_coordinators_run_config() -> None:
    deployed = {"data-path": "/srv/site/data", "site-name": "bank"}
    assert policy_from_config(deployed, _WEAK) is None  # no [privacy]: no DP, declines DP rounds
    own = policy_from_config({**deployed, "dp-budget-epsilon": 2.0}, _WEAK)
    assert own is not None and own.budget_epsilon == 2.0  # the site's own policy rules
    simulated = policy_from_config({"partition-id": 0, "num-partitions": 3}, _WEAK)
    assert simulated is not None and simulated.budget_epsilon == 1e6  # confide simulate's stand-in


def _flwr_run_dot(tmp_path: Path, overrides: dict[str, object]) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = dict(os.environ, FLWR_HOME=str(home), CONFIDE_SIM_TOKEN=f"test-{os.getpid()}",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    with _superlink(tmp_path, env, env["CONFIDE_SIM_TOKEN"]) as port:
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "sim"\n[superlink.sim]\naddress = "127.0.0.1:{port}"\n'
            "insecure = true\n")
        cmd = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
               "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
               "--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)


def test_flwr_run_dot_with_the_defaults_refuses_and_says_what_is_missing(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    out = tmp_path / "run"
    proc = _flwr_run_dot(tmp_path, {"num-server-rounds": 1, "model": str(tiny_model),
                                    "data-dir": str(tiny_sites), "out-dir": str(out)})
    text = proc.stdout + proc.stderr
    assert "refusing to start: the privacy stack is off" in text, text[-3000:]
    assert "dp = false" in text and "secagg = false" in text
    assert not RunFolder(out).state_path.exists()  # no site was asked anything


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
                     "data-dir": str(tiny_sites), "out-dir": str(out),
                     "allow-no-privacy": True}
        cmd = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
               "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
               "--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = RunFolder(out)
    assert folder.read_state().status == RUN_COMPLETED
    assert [r.round for r in folder.read_metrics()] == [0, 1]
