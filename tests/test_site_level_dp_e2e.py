"""Site-level DP end to end through Flower: sites add the noise, a dropout below the cohort is
refused before unmasking, and the audit's site-level ε recomputes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from privacy.audit import build_report
from protocol.adapter import load_adapter_dir
from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED
from protocol.wire import Stage
from tests.test_simulation import _simulate


def test_site_level_dp_run_releases_noised_sums_and_refuses_an_under_noised_round(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    out = tmp_path / "run"
    proc = _simulate("--sites", "3", "--rounds", "2", "--out", str(out), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--local-steps", "1",
                     "--dp", "off", "--site-level-dp", "on", "--site-level-clip", "0.5",
                     "--faults", f"beta@{Stage.MASKED_INPUT}@2", "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = RunFolder(out)
    first, second = folder.read_participation()[:2]
    assert first.site_level_dp is not None and second.site_level_dp is not None
    assert first.released and first.site_level_dp["released"]
    assert first.site_level_dp["contributors"] == first.site_level_dp["cohort"] == 3
    assert first.site_level_dp["noise_variance"] > 0
    assert first.site_level_dp["epsilon_after"] <= 8.0
    # beta crashed after training: 2 of 3 noised vectors, below the cohort -> never unmasked
    assert second.released is False and second.site_level_dp["released"] is False
    assert "calibration cohort" in second.site_level_dp["refused"]
    r1, _ = load_adapter_dir(folder.round_adapter(1))
    r2, _ = load_adapter_dir(folder.round_adapter(2))
    for k in r1:
        np.testing.assert_array_equal(r1[k], r2[k])

    report = build_report(out)
    sl = report.site_level
    assert sl is not None and sl.matches
    assert not [f for f in report.red_flags if f.site_id is None]  # (no example-level ledgers)
    assert [r.released for r in sl.rounds] == [True, False]
    assert sl.epsilon == sl.rounds[0].epsilon_after
    assert abs(sl.epsilon - sl.epsilon_recomputed) <= 0.01 * sl.epsilon


def test_the_run_stops_when_the_next_round_would_exceed_the_site_budget(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # z = 0.8: one round of 3 sites costs site eps ~6.1, a second would reach ~9.2 > 8
    out = tmp_path / "run"
    proc = _simulate("--sites", "3", "--rounds", "3", "--out", str(out), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--local-steps", "1",
                     "--dp", "off", "--site-level-dp", "on", "--site-level-clip", "0.5",
                     "--site-level-noise-multiplier", "0.8", "--site-level-epsilon", "8", "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = RunFolder(out)
    parts = folder.read_participation()
    assert [p.round for p in parts] == [1, 2]
    released, refused = parts[0].site_level_dp, parts[1].site_level_dp
    assert released is not None and refused is not None
    assert released["released"] and released["epsilon_after"] < 8.0
    assert refused["budget_exhausted"] and "site-level budget" in refused["refused"]
    assert parts[1].contributed == () and parts[1].released is False
    # nothing trained or evaluated after
    assert [m.round for m in folder.read_metrics()] == [0, 1]
    state = folder.read_state()
    assert state.status == RUN_COMPLETED and state.completed_round == 1
    assert "site-level budget" in state.stopped_early
    final, _ = load_adapter_dir(folder.final_adapter)
    r1, _ = load_adapter_dir(folder.round_adapter(1))
    for k in r1:
        np.testing.assert_array_equal(final[k], r1[k])
    sl = build_report(out).site_level
    assert sl is not None and sl.matches and sl.epsilon < 8.0
    assert [r.released for r in sl.rounds] == [True, False]


@pytest.mark.slow
def test_bench_site_level_dp_writes_the_four_variants_as_json(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    from simulations.bench_site_level_dp import main

    out = tmp_path / "bench.json"
    assert main(["--sites", "3", "--rounds", "1", "--local-steps", "1", "--batch-size", "8",
                 "--model", str(tiny_model), "--data", str(tiny_sites),
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["none", "example", "distributed", "central"]
    for r in rows:
        assert {"variant", "site_level_epsilon", "perplexity"} <= set(r)
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
    assert rows[0]["site_level_epsilon"] is None and rows[1]["site_level_epsilon"] is None
    assert 0 < rows[2]["site_level_epsilon"] <= 8.0 and 0 < rows[3]["site_level_epsilon"] <= 8.0
