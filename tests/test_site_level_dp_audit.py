"""The audit's site-level section: stated ε equals an independent recomputation; tampered: red."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from privacy.audit import build_report, load_schema, render_html, render_md, report_data
from privacy.audit.site_level import independent_site_epsilon
from privacy.ddg import DDGParams, site_level_epsilon
from privacy.ddg.site_ledger import SITE_LEVEL_LEDGER, SiteLevelLedger
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


# ---- each site's own site-level ledger, beside the coordinator's accounting ------------


def _priced_rows(survivors: tuple[int, ...], sites: tuple[str, ...], underflow: str = "refuse"
                 ) -> tuple[list[ParticipationRow], list[DDGParams]]:
    """Distributed rounds with named contributors, and the parameters each site was handed."""
    sdp = SiteLevelDP(mode="distributed", epsilon=8.0, delta=1e-5, clip=0.05,
                      noise_multiplier=-1.0, cohort=0, modulus_bits=32, underflow=underflow,
                      planned_rounds=4)
    rows, handed = [], []
    for rnd, n in enumerate(survivors, start=1):
        params = sdp.plan(cohort_size=10, dim=5000)
        assert isinstance(params, DDGParams)
        handed.append(params)
        adm = sdp.admit(params, n)
        rec = sdp.release(adm) if adm.ok else {**adm.record, "refused": adm.reason}
        rows.append(ParticipationRow(round=rnd, sampled=sites, contributed=sites, declined={},
                                     failed={}, released=adm.ok, site_level_dp=rec))
    return rows, handed


def _site_level_red(report: Any) -> list[Any]:
    return [f for f in report.red_flags if "site-level" in f.message]


def _charge(state_dir: Path, run_id: str, handed: list[DDGParams], rounds: list[int]) -> float:
    """Charge ``rounds`` in a site's own ledger, priced as the site prices them."""
    ledger = SiteLevelLedger(state_dir)
    history = []
    eps = 0.0
    for rnd in rounds:
        record = handed[rnd - 1].round_record(handed[rnd - 1].cohort)
        history.append(record)
        eps = site_level_epsilon(history, delta=1e-5)
        ledger.charge(run_id=run_id, round_num=rnd, record=record, epsilon_after=eps,
                      budget=8.0, delta=1e-5)
    return eps


def test_each_sites_own_site_level_ledger_is_shown_beside_the_report(tmp_path: Path) -> None:
    rows, handed = _priced_rows((10, 10, 10), ("alpha", "beta"))
    root = _run_dir(tmp_path, rows)
    folder = RunFolder(root)
    own = _charge(folder.site_dir("alpha"), "r1", handed, [1, 2, 3])
    _charge(folder.site_dir("alpha"), "earlier", handed, [1])  # another run: not this one's
    report = build_report(root)
    sl = report.site_level
    # (no example-level ledgers in this RUN_DIR: only the site-level flags matter here)
    assert sl is not None and not _site_level_red(report)
    alpha, beta = sl.site_ledgers
    assert (alpha.site_id, alpha.status, alpha.rounds_charged) == ("alpha", "found", (1, 2, 3))
    assert alpha.epsilon == pytest.approx(own)
    assert alpha.coordinator_epsilon == pytest.approx(sl.epsilon)
    assert alpha.epsilon == pytest.approx(sl.epsilon, rel=0.01) and not alpha.exceeds_report
    assert alpha.budget_epsilon == 8.0 and alpha.delta == 1e-5
    # beta's state directory holds no site-level ledger (a deployment, not yet copied in)
    assert beta.status == "missing" and beta.epsilon is None and not beta.exceeds_report
    data = report_data(report)
    jsonschema.validate(data, load_schema())
    assert [s["site_id"] for s in data["site_level"]["site_ledgers"]] == ["alpha", "beta"]
    md = render_md(report)
    assert "site-level ε (site's ledger)" in md and "| alpha | found | 1, 2, 3 |" in md
    html = render_html(report)
    assert 'id="site-ledgers"' in html and "within the report" in html


def test_a_site_ledger_holding_more_than_the_report_states_is_red(tmp_path: Path) -> None:
    # round 2 is refused in the coordinator's record, but alpha paid for it: its vector left
    rows, handed = _priced_rows((10, 8, 10), ("alpha", "beta"))
    assert [r.released for r in rows] == [True, False, True]
    root = _run_dir(tmp_path, rows)
    _charge(RunFolder(root).site_dir("alpha"), "r1", handed, [1, 2, 3])
    report = build_report(root)
    sl = report.site_level
    assert sl is not None
    alpha = sl.site_ledgers[0]
    assert alpha.exceeds_report and alpha.epsilon is not None and sl.epsilon is not None
    assert alpha.epsilon > sl.epsilon * 1.01
    red = _site_level_red(report)
    assert len(red) == 1 and "own site-level ledger" in red[0].message
    assert "round(s) 2" in red[0].message
    jsonschema.validate(report_data(report), load_schema())
    assert "EXCEEDS THE REPORT" in render_md(report)
    assert '<tr class="red"><td>alpha</td>' in render_html(report)


def test_an_unreadable_site_ledger_is_a_warning_and_central_mode_lists_none(tmp_path: Path
                                                                           ) -> None:
    rows, _ = _priced_rows((10, 10), ("alpha",))
    (tmp_path / "d").mkdir()
    (tmp_path / "c").mkdir()
    root = _run_dir(tmp_path / "d", rows)
    (RunFolder(root).site_dir("alpha") / SITE_LEVEL_LEDGER).parent.mkdir(parents=True)
    (RunFolder(root).site_dir("alpha") / SITE_LEVEL_LEDGER).write_text("{}")
    report = build_report(root)
    assert report.site_level is not None and not _site_level_red(report)
    assert report.site_level.site_ledgers[0].status == "unreadable"
    assert any(f.site_id == "alpha" and "site-level ledger" in f.message for f in report.flags)
    central = build_report(_run_dir(tmp_path / "c", _records("central", (10, 10)), "central"))
    assert central.site_level is not None and central.site_level.site_ledgers == ()
    jsonschema.validate(report_data(central), load_schema())
