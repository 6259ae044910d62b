"""The audit report: ε recomputes, second accountant, schema, tampering, digest, Markdown, CLI.

:func:`write_run_dir` writes the RUN_DIR a simulation produces (run info, metrics and
participation rows through :class:`~protocol.run_folder.RunFolder`, each site's ledger and
policy) with the real :class:`~privacy.ledger.PrivacyLedger` and accountants, so these tests
need no simulation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from privacy.accounting import Mechanism, epsilon
from privacy.audit import build_report, load_schema, render_html, render_json, render_md
from privacy.audit.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_RED_FLAGS, add_audit_parser, run_audit
from privacy.audit.model import report_data
from privacy.audit.sites import POLICY_FILENAME
from privacy.ledger import LEDGER_FILENAME, PrivacyLedger, canonical_json
from privacy.policy import SitePrivacyPolicy
from protocol.run_folder import RunFolder, audit_report_name
from protocol.run_rows import MetricsRow, ParticipationRow, RunInfo
from protocol.wire import Reason

RUN_ID = "run-test"
STEPS, Q, SIGMA, C = 8, 0.05, 1.2, 1.0
#: site -> (accountant, budget); gamma's small budget makes it decline round 3.
SITES = {"alpha": ("rdp", 8.0), "beta": ("prv", 6.0), "gamma": ("rdp", 1.5)}


def write_run_dir(root: Path, *, rounds: int = 3, understate: str | None = None,
                  understate_by: float = 10.0,
                  noise_sources: dict[str, str] | None = None) -> Path:
    """Write a 3-site RUN_DIR as the simulation does.

    alpha (RDP) also has one entry of an earlier run; beta (PRV) trains in round 2 but drops
    out of the secure aggregate; gamma (RDP, small budget) declines once its budget would
    be exceeded. ``understate`` names a site whose ledger states the true ε divided by
    ``understate_by``. ``noise_sources`` gives a site's recorded noise source (default: none
    recorded, as in ledgers written before sources were).
    """
    root.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(root)
    folder.write_run_info(RunInfo(
        run_id=RUN_ID, created="2026-01-01T00:00:00+0000",
        config={"num-server-rounds": rounds, "local-steps": STEPS, "batch-size": 16,
                "lora-r": 8, "aggregation": "frozen-a"},
        versions={"python": "3.11.7", "opacus": "1.6.0", "confide": "0.1.0"},
    ))
    ledgers, deltas = {}, {}
    for site, (accountant, budget) in SITES.items():
        sdir = folder.site_dir(site)
        policy = SitePrivacyPolicy(budget_epsilon=budget, accountant=accountant,
                                   max_grad_norm=C, noise_multiplier=SIGMA)
        n = 400
        deltas[site] = policy.resolve_delta(n)
        sdir.mkdir(parents=True)
        (sdir / POLICY_FILENAME).write_text(json.dumps(
            {**policy.to_mapping(), "site": site, "num_examples": n, "delta": deltas[site]}))
        ledgers[site] = PrivacyLedger(sdir)
    prior = ledgers["alpha"]
    prior.record_round(run_id="run-earlier", round=1, steps=4, sample_rate=0.1,
                       noise_multiplier=1.5, max_grad_norm=C, accountant="rdp",
                       delta=deltas["alpha"],
                       epsilon_after=epsilon([Mechanism(0.1, 1.5, 4)], delta=deltas["alpha"]))

    folder.append_metrics(MetricsRow(round=0, eval_loss=3.0, eval_perplexity=20.1, sites={}))
    for rnd in range(1, rounds + 1):
        contributed: list[str] = []
        dropped: list[str] = []
        declined: dict[str, str] = {}
        eps_reported = {}
        for site, (accountant, budget) in SITES.items():
            led, delta = ledgers[site], deltas[site]
            hist = [*led.history(), Mechanism(Q, SIGMA, STEPS)]
            eps = epsilon(hist, delta=delta, accountant=accountant)
            if eps > budget:
                led.record_decline(run_id=RUN_ID, round=rnd, reason=Reason.BUDGET_EXHAUSTED,
                                   accountant=accountant, delta=delta,
                                   epsilon_after=led.epsilon(delta=delta, accountant=accountant),
                                   sample_rate=Q, noise_multiplier=SIGMA, max_grad_norm=C)
                declined[site] = Reason.BUDGET_EXHAUSTED
                continue
            stated = eps / understate_by if site == understate else eps
            led.record_round(run_id=RUN_ID, round=rnd, steps=STEPS, sample_rate=Q,
                             noise_multiplier=SIGMA, max_grad_norm=C, accountant=accountant,
                             delta=delta, epsilon_after=stated,
                             noise_source=(noise_sources or {}).get(site))
            eps_reported[site] = stated
            (dropped if site == "beta" and rnd == 2 else contributed).append(site)
        threshold = 2
        released = len(contributed) >= threshold
        folder.append_participation(ParticipationRow(
            round=rnd, sampled=tuple(sorted(SITES)), contributed=tuple(contributed),
            declined=declined, failed={}, dropped=tuple(dropped), threshold=threshold,
            released=released))
        folder.append_metrics(MetricsRow(
            round=rnd, eval_loss=3.0 - 0.2 * rnd, eval_perplexity=20.0 - rnd, sites={},
            contributed=tuple(contributed), released=released, epsilon=eps_reported))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_dir(tmp_path_factory.mktemp("audit") / "run")


@pytest.fixture(scope="module")
def report(run_dir: Path) -> Any:
    return build_report(run_dir)


def _site(report: Any, name: str) -> Any:
    return next(s for s in report.sites if s.site_id == name)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="confide")
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_report_epsilon_equals_same_accountant_recomputation_from_its_own_data(report: Any
                                                                                ) -> None:
    data = report_data(report)
    for site in data["sites"]:
        history = [Mechanism(r["sample_rate"], r["noise_multiplier"], r["steps"])
                   for r in site["rounds"] if r["status"] == "trained"]
        again = epsilon(history, delta=site["delta"], accountant=site["accountant"])
        assert site["epsilon"] == pytest.approx(again, rel=0.01), site["site_id"]
        assert site["recomputation"]["matches"] is True
        assert site["recomputation"]["relative_error"] <= 0.01
        for r in site["rounds"]:
            assert r["epsilon_after"] == pytest.approx(r["epsilon_recomputed"], rel=0.01)
    assert not report.red_flags and report.all_verified


def test_second_accountant_is_the_other_one_and_shown_next_to_stated(report: Any) -> None:
    alpha, beta = _site(report, "alpha"), _site(report, "beta")
    assert (alpha.recomputation.second, beta.recomputation.second) == ("prv", "rdp")
    for s in (alpha, beta):
        assert s.recomputation.second_epsilon is not None
        assert s.recomputation.second_epsilon == pytest.approx(s.epsilon, rel=0.5)
        assert not s.recomputation.below_tight
    assert alpha.recomputation.second_epsilon < alpha.epsilon  # PRV is tighter than RDP
    html, md = render_html(report), render_md(report)
    assert f"{alpha.recomputation.second_epsilon:.4g} (prv)" in html
    assert f"{beta.recomputation.second_epsilon:.4g} (rdp)" in md


def test_rounds_declined_dropped_and_aggregates_are_reported(report: Any) -> None:
    gamma, beta, alpha = _site(report, "gamma"), _site(report, "beta"), _site(report, "alpha")
    assert gamma.rounds_declined >= 1 and gamma.declined[0].reason == Reason.BUDGET_EXHAUSTED
    assert gamma.budget_left is not None and gamma.budget_left >= 0
    assert beta.rounds_dropped == 1 and beta.rounds_trained == 3
    assert alpha.epsilon_before_run > 0 and alpha.rounds[0].run_id == "run-earlier"
    assert [p.round for p in alpha.epsilon_series] == [0, 1, 2, 3]
    r2 = next(r for r in report.rounds if r.round == 2)
    assert "beta" in r2.dropped and "beta" not in r2.contributed and r2.threshold == 2


def test_json_validates_against_the_documented_schema(report: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(render_json(report))
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
    site = data["sites"][0]
    for key in ("site_id", "epsilon", "delta", "accountant", "budget_epsilon", "verified"):
        assert key in site
    for key in ("round", "steps", "sample_rate", "noise_multiplier", "max_grad_norm",
                "epsilon_after"):
        assert key in site["rounds"][0]


def test_sha256_is_present_reproducible_and_covers_the_data(run_dir: Path, report: Any
                                                            ) -> None:
    data = json.loads(render_json(report))
    digest = data.pop("sha256")
    assert digest == report.sha256 and len(digest) == 64
    assert hashlib.sha256(canonical_json(data)).hexdigest() == digest
    assert build_report(run_dir).sha256 == digest
    assert digest in render_html(report) and digest in render_md(report)


def test_markdown_renders_sites_rounds_and_recomputation(report: Any) -> None:
    md = render_md(report)
    assert md.startswith(f"# Privacy audit — run {RUN_ID}")
    for name in SITES:
        assert f"### {name} — VERIFIED" in md
    assert "| round | sampled | in aggregate |" in md and Reason.BUDGET_EXHAUSTED in md
    assert "second accountant" in md and "UNVERIFIED" not in md


def test_tampered_ledger_line_is_detected_and_shown_unverified(tmp_path: Path) -> None:
    root = write_run_dir(tmp_path / "run")
    path = RunFolder(root).site_dir("beta") / LEDGER_FILENAME
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["noise_multiplier"] = 5.0  # claim more noise than was used, hash left as is
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")

    report = build_report(root)

    beta = _site(report, "beta")
    assert not beta.verification.verified and not beta.verification.chain_intact
    assert any("modified" in p for p in beta.verification.problems)
    assert [r.intact for r in beta.rounds] == [True, False, True]
    assert _site(report, "alpha").verification.verified
    assert any(f.severity == "red" and f.site_id == "beta" for f in report.flags)
    html = render_html(report)
    assert '<span class="bad">UNVERIFIED</span>' in html
    assert ".bad, .red { color: var(--red)" in html
    assert "**UNVERIFIED**" in render_md(report)
    assert _cli(["audit", str(root)]) == EXIT_BAD_INPUT
    assert RunFolder(root).audit_report("html").is_file()


def test_ledger_cut_short_is_unverified_although_its_chain_holds(tmp_path: Path) -> None:
    root = write_run_dir(tmp_path / "run")
    path = RunFolder(root).site_dir("alpha") / LEDGER_FILENAME
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-1]))

    alpha = _site(build_report(root), "alpha")

    assert alpha.verification.chain_intact and not alpha.verification.verified
    assert any("round 3" in p for p in alpha.verification.problems)


def test_understated_epsilon_is_flagged_red(tmp_path: Path) -> None:
    root = write_run_dir(tmp_path / "run", understate="alpha")

    report = build_report(root)

    rc = _site(report, "alpha").recomputation
    assert not rc.matches and rc.below_tight
    assert any("below the tight" in f.message for f in report.red_flags)
    assert _cli(["audit", str(root), "--format", "md", "--out", str(tmp_path / "r.md")]) == (
        EXIT_RED_FLAGS)


def test_cli_writes_all_three_formats_by_default(run_dir: Path, tmp_path: Path) -> None:
    assert _cli(["audit", str(run_dir), "--out", str(tmp_path / "out")]) == EXIT_OK
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        audit_report_name(f) for f in ("html", "json", "md")]


def test_cli_missing_run_dir_is_exit_2_with_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["audit", str(tmp_path / "nope")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert run_audit(argparse.Namespace(run_dir=str(tmp_path), format=None, out=None,
                                        canary_result=None)) == EXIT_BAD_INPUT


def test_empirical_audit_results_are_shown_and_an_excess_is_flagged_red(tmp_path: Path
                                                                        ) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    root = write_run_dir(tmp_path / "run")
    common = {"site_id": "alpha", "canaries": 1000, "included": 500, "k_in": 100,
              "k_out": 100, "guesses": 200, "candidates": 4, "confidence": 0.95,
              "delta": 1e-5, "accountant": "rdp"}
    runs = [{**common, "correct": 200, "epsilon_lower_bound": 3.4, "formal_epsilon": None,
             "dp": False, "training": {"steps": 600}},
            {**common, "correct": 190, "epsilon_lower_bound": 2.5, "formal_epsilon": 2.0,
             "dp": True}]
    RunFolder(root).canary_audit_path.write_text(json.dumps({"runs": runs}))

    report = build_report(root)

    assert [e["exceeds_formal"] for e in report.empirical] == [False, True]
    assert any("exceeds the formal" in f.message for f in report.red_flags)
    jsonschema.validate(json.loads(render_json(report)), load_schema(),
                        cls=jsonschema.Draft202012Validator)
    assert "∞ (no DP)" in render_html(report) and "implementation or accounting" in render_md(
        report)


def test_garbage_ledger_line_and_missing_policy_still_render(tmp_path: Path) -> None:
    root = write_run_dir(tmp_path / "run")
    folder = RunFolder(root)
    with (folder.site_dir("gamma") / LEDGER_FILENAME).open("a") as fh:
        fh.write("{not json\n")
    (folder.site_dir("alpha") / POLICY_FILENAME).unlink()

    report = build_report(root)

    gamma, alpha = _site(report, "gamma"), _site(report, "alpha")
    assert not gamma.verification.verified and "malformed" in gamma.verification.problems[0]
    assert gamma.rounds and alpha.budget_epsilon is None and alpha.verification.verified
    assert any(f.site_id == "alpha" and POLICY_FILENAME in f.message for f in report.flags)
    for render in (render_html, render_md, render_json):
        assert render(report)
