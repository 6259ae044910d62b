"""The audit's site-level section: stated ε equals an independent recomputation; tampering is red."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from privacy.audit import build_report, load_schema, render_html, render_md, report_data
from privacy.audit.site_level import independent_site_epsilon
from privacy.ddg import DDGParams
from protocol.run_folder import RunFolder
from protocol.run_rows import ParticipationRow, RunInfo
from server.site_level_dp import SiteLevelDP


def _records(mode: str, survivors: tuple[int, ...], underflow: str = "account"
             ) -> list[ParticipationRow]:
    sdp = SiteLevelDP(mode=mode, epsilon=8.0, delta=1e-5, clip=0.05, noise_multiplier=-1.0,
                 cohort=0, modulus_bits=32, underflow=underflow, planned_rounds=4)
    rows = []
    for rnd, n in enumerate(survivors, start=1):
        params = sdp.plan(cohort_size=10, dim=5000)
        assert isinstance(params, DDGParams)
        adm = sdp.admit(params, n)
        rec = sdp.release(adm) if adm.ok else {**adm.record, "refused": adm.reason}
        rows.append(ParticipationRow(round=rnd, sampled=(), contributed=(), declined={},
                                     failed={}, released=adm.ok, site_level_dp=rec))
    return rows


def _run_info(run_id: str, config: dict[str, Any]) -> RunInfo:
    return RunInfo(run_id=run_id, created="2026-01-01T00:00:00+0000", config=config,
                   versions={})


def _run_dir(tmp_path: Path, rows: list[ParticipationRow], mode: str = "distributed") -> Path:
    config = {"site-level-dp": True, "site-level-dp-mode": mode, "site-level-dp-epsilon": 8.0,
              "site-level-dp-delta": 1e-5, "site-level-dp-clip": 0.05}
    folder = RunFolder(tmp_path)
    folder.write_run_info(_run_info("r1", config))
    for row in rows:
        folder.append_participation(row)
    return tmp_path


@pytest.mark.parametrize("mode", ["distributed", "central"])
def test_reported_site_epsilon_equals_the_independent_recomputation(tmp_path: Path,
                                                                    mode: str) -> None:
    rows = _records(mode, (10, 7, 10))
    report = build_report(_run_dir(tmp_path, rows, mode))
    sl = report.site_level
    assert sl is not None and sl.matches and not report.red_flags
    released = [r.site_level_dp for r in rows]
    assert sl.epsilon == pytest.approx(released[-1]["epsilon_after"])
    assert sl.epsilon_recomputed == pytest.approx(independent_site_epsilon(released, 1e-5))
    assert sl.epsilon == pytest.approx(sl.epsilon_recomputed, rel=0.01)
    # per round: the survivors and the noise actually in the sum, eps growing
    assert [r.contributors for r in sl.rounds] == [10, 7, 10]
    if mode == "distributed":
        assert sl.rounds[1].noise_variance == pytest.approx(0.7 * sl.rounds[0].noise_variance)
        assert sl.rounds[1].epsilon_round > sl.rounds[0].epsilon_round
    eps = [r.epsilon_after for r in sl.rounds]
    assert eps == sorted(eps) and eps[-1] <= 8.0
    data = report_data(report)
    jsonschema.validate(data, load_schema())
    assert "Site-level DP of the aggregate" in render_md(report)
    assert 'id="site-level"' in render_html(report)


def test_refused_rounds_are_listed_and_spend_nothing(tmp_path: Path) -> None:
    rows = _records("distributed", (10, 8, 10), underflow="refuse")
    sl = build_report(_run_dir(tmp_path, rows)).site_level
    assert sl is not None and sl.matches
    assert [r.released for r in sl.rounds] == [True, False, True]
    assert "calibration cohort" in (sl.rounds[1].refused or "")
    assert sl.rounds[1].epsilon_after is None
    two = independent_site_epsilon([rows[0].site_level_dp, rows[2].site_level_dp], 1e-5)
    assert sl.epsilon_recomputed == pytest.approx(two)


def test_an_understated_or_over_budget_epsilon_is_a_red_flag(tmp_path: Path) -> None:
    rows = _records("distributed", (10, 5))
    rec = dict(rows[1].site_level_dp or {})
    rec["epsilon_after"] *= 0.9  # the coordinator understates
    rows[1] = dataclasses.replace(rows[1], site_level_dp=rec)
    report = build_report(_run_dir(tmp_path, rows))
    assert report.site_level is not None and not report.site_level.matches
    assert any("does not match the recomputation" in f.message for f in report.red_flags)


def test_runs_without_site_level_dp_have_no_section(tmp_path: Path) -> None:
    RunFolder(tmp_path).write_run_info(_run_info("r", {}))
    report = build_report(tmp_path)
    assert report.site_level is None and "site_level" not in report_data(report)
    assert "Site-level DP" not in render_md(report)
