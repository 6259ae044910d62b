"""The audit's second opinion is a second implementation: Google's dp-accounting (RDP, PLD)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privacy.accounting import Mechanism, epsilon
from privacy.audit import build_report, load_schema, render_json, render_md
from privacy.audit.google_accounting import PLD_RTOL, google_epsilons
from privacy.audit.recompute import prv_bounds, recompute
from tests.test_audit_report import write_run_dir

HISTORIES = [
    [Mechanism(0.05, 1.2, 24)],
    [Mechanism(0.01, 1.1, 1000)],
    [Mechanism(0.1, 0.8, 200), Mechanism(0.05, 1.2, 300)],
    [Mechanism(1.0, 1.0, 3)],
]


@pytest.mark.parametrize("history", HISTORIES, ids=lambda h: "+".join(
    f"q{m.sample_rate:g}s{m.noise_multiplier:g}x{m.steps}" for m in h))
def test_dp_accounting_agrees_with_the_projects_accountants(history: list[Mechanism]) -> None:
    delta = 1e-5
    g_rdp, g_pld = google_epsilons(history, delta=delta)
    ours_rdp = epsilon(history, delta=delta, accountant="rdp")
    low, _, up = prv_bounds(history, delta=delta)
    assert g_rdp == pytest.approx(ours_rdp, rel=0.005)  # two RDP implementations, own orders
    assert low - 1e-3 <= g_pld <= up + 1e-3  # PLD inside the PRV error bracket
    assert g_pld <= g_rdp  # the tight value is below the RDP upper bound


def test_no_steps_cost_nothing_and_zero_noise_costs_everything() -> None:
    assert google_epsilons([], delta=1e-5) == (0.0, 0.0)
    assert google_epsilons([Mechanism(0.1, 0.0, 3)], delta=1e-5) == (float("inf"),) * 2


def test_a_stated_eps_3_percent_below_pld_is_flagged_where_the_prv_bound_misses_it() -> None:
    history, delta = [Mechanism(0.02, 2.0, 24)], 1e-5
    _, pld = google_epsilons(history, delta=delta)
    low = recompute(history, stated=0.97 * pld, delta=delta, accountant="prv")
    assert low.below_pld and low.google_pld == pytest.approx(pld)
    assert not low.below_tight  # the PRV lower bound (error 0.01 absolute) lets it through
    fair = recompute(history, stated=(1 - PLD_RTOL / 2) * pld, delta=delta, accountant="prv")
    assert not fair.below_pld


def test_the_audit_shows_both_implementations_and_every_noise_source(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", understate="alpha", understate_by=1.3,
                        noise_sources={"alpha": "csprng", "beta": "seeded"})
    report = build_report(run)
    sites = {s.site_id: s for s in report.sites}
    assert (sites["alpha"].noise_source, sites["beta"].noise_source,
            sites["gamma"].noise_source) == ("csprng", "seeded", "unrecorded")
    for s in report.sites:
        rc = s.recomputation
        assert rc is not None and rc.google_rdp is not None and rc.google_pld is not None
        assert rc.google_error is None
    assert sites["alpha"].recomputation.below_pld  # type: ignore[union-attr]
    assert not sites["beta"].recomputation.below_pld  # type: ignore[union-attr]
    flags = [(f.severity, f.site_id, f.message) for f in report.flags]
    assert any(sev == "red" and site == "alpha" and "dp-accounting's PLD" in msg
               for sev, site, msg in flags)
    assert any(site == "beta" and "seeded by the site's secret seed" in msg
               for _, site, msg in flags)
    assert any(site == "gamma" and "does not record the noise source" in msg
               for _, site, msg in flags)
    assert not any(site == "alpha" and "noise" in msg for _, site, msg in flags)
    md = render_md(report)
    assert "dp-accounting RDP / PLD" in md and "| seeded |" in md
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads(render_json(report))
    jsonschema.validate(data, load_schema(), cls=jsonschema.Draft202012Validator)
    beta = next(s for s in data["sites"] if s["site_id"] == "beta")
    assert beta["noise_source"] == "seeded"
    assert {r["noise_source"] for r in beta["rounds"] if r["status"] == "trained"} == {"seeded"}
