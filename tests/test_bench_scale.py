"""``simulations.bench_scale`` end to end at a tiny size: the table, the JSON, the stage times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations import bench_scale

pytestmark = pytest.mark.slow


def test_bench_scale_writes_round_time_stage_times_and_memory_of_one_round(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scale.json"
    assert bench_scale.main(["--sites", "3", "--json", str(out),
                             "--out", str(tmp_path / "runs")]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["sites"] == 3 and row["contributed"] == 3 and row["eval_contributed"] == 3
    assert row["round_s"] > 0 and row["cpu_s"] > 0
    assert 0 < row["peak_rss_largest_bytes"] <= row["peak_rss_total_bytes"]
    stages = row["stage_time_s"]
    for stage in ("secagg: keys", "secagg: shares", "train (masked)", "secagg: consistency",
                  "secagg: unmask", "evaluate (masked)", "eval: unmask"):
        assert stages[stage] >= row["stage_wait_s"].get(stage, 0.0) >= 0
    assert sum(stages.values()) <= row["round_s"] + 1e-6
    assert "train (masked)" in capsys.readouterr().out
