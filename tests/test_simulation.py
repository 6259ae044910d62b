"""End to end through Flower's simulation engine: rounds, metrics, adapters, no leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED, MetricsRow
from protocol.site_log import site_evaluations
from tests.conftest import EMBEDDED, has_embedded

FLOWER_PROCS = ("flower-superlink", "flower-supernode", "flwr-serverapp", "flwr-clientapp",
                "flwr-simulation", "flower-superexec", "raylet", "gcs_server")


def _flower_processes(token: str | None = None) -> list[str]:
    """Live Flower/Ray processes; with ``token``, only those started by that run."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.split(")")[-1].split()[0] == "Z":
            continue
        if token is not None:
            try:
                if f"CONFIDE_SIM_TOKEN={token}".encode() not in (entry / "environ").read_bytes():
                    continue
            except OSError:
                continue
            out.append(f"{entry.name}: {cmd[:120]}")
        elif any(p in cmd for p in FLOWER_PROCS):
            out.append(f"{entry.name}: {cmd[:120]}")
    return out


def _simulate(*args: str, timeout: int = 420, token: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "confide"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if token:
        env["CONFIDE_SIM_TOKEN"] = token
    return subprocess.run([str(exe), "simulate", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _metrics(out: Path) -> list[MetricsRow]:
    return RunFolder(out).read_metrics()  # each row has every required key, typed


def test_tiny_run_writes_every_artifact_and_leaves_no_process(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    token = f"test-{uuid.uuid4().hex}"
    out = tmp_path / "run"
    proc = _simulate("--sites", "3", "--rounds", "2", "--out", str(out), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--local-steps", "2",
                     token=token)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = RunFolder(out)
    rows = _metrics(out)
    assert [r.round for r in rows] == [0, 1, 2]
    for r in rows:  # secure aggregation (the default): the coordinator holds totals only
        assert r.sites == {} and r.eval_contributed == ("alpha", "beta", "gamma")
    own = site_evaluations(folder)  # each site's own figures, in its state directory
    assert {s: sorted(e) for s, e in own.items()} == {s: [0, 1, 2]
                                                       for s in ("alpha", "beta", "gamma")}
    assert rows[1].contributed == ("alpha", "beta", "gamma")
    for n in (0, 1, 2):
        assert (folder.round_adapter(n) / "adapter_model.safetensors").is_file()
    assert (folder.final_adapter / "adapter_config.json").is_file()
    run = folder.read_run_info()
    assert run.config["num-server-rounds"] == 2 and run.versions["flwr"].startswith("1.39")
    assert folder.read_state().status == RUN_COMPLETED
    assert [p.round for p in folder.read_participation()] == [1, 2]
    assert "eval loss" in proc.stdout and "adapter:" in proc.stdout  # summary table printed
    assert _flower_processes(token) == []  # the SuperLink, ServerApp and Ray are all gone


@pytest.mark.skipif(not has_embedded(), reason="embedded model not built")
@pytest.mark.parametrize("flags", [
    # DP (eps 8) and secure aggregation, the run defaults, on shorter, smaller batches:
    # ~45 s instead of ~200 s on 2 cores, held-out loss down ~0.07 then ~0.03 per round
    pytest.param(("--batch-size", "64", "--max-seq-len", "64"), id="batch64-seq64"),
    pytest.param((), id="run-defaults", marks=pytest.mark.slow),  # what `make demo` runs
])
def test_three_sites_two_rounds_on_embedded_model_lower_held_out_loss(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    proc = _simulate("--sites", "3", "--rounds", "2", "--out", str(out),
                     "--max-eval-examples", "64", *flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _metrics(out)
    assert [r.round for r in rows] == [0, 1, 2]
    assert rows[2].eval_loss < rows[1].eval_loss < rows[0].eval_loss
    for site, evs in site_evaluations(RunFolder(out)).items():
        assert evs[2].eval_loss < evs[0].eval_loss, site
    base = AutoModelForCausalLM.from_pretrained(str(EMBEDDED))
    PeftModel.from_pretrained(base, str(RunFolder(out).final_adapter))
