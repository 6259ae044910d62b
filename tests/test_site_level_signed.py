"""A site's site-level ledger reaches the deployment audit: signed, exported, checked.

The signed ledger summary a site sends with every reply covers its own site-level ledger
(this run's charges, their ε and digest); ``confide client export-ledger`` exports that
ledger beside the privacy ledger, verified and atomically; and ``confide audit`` on a run
whose RUN_DIR holds no site state directories (a deployment) shows each site's site-level ε
from the summaries the coordinator received, and flags an exported file that differs from
what the site signed. Summaries of the first format (no site-level part) still read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from client.app import app
from client.identity import IDENTITY_FILE
from client.privacy_agent import SitePrivacy
from privacy.audit import build_report, load_schema, render_md, report_data
from privacy.ddg import DDGParams, site_level_epsilon
from privacy.ddg.site_ledger import SITE_LEVEL_LEDGER, SiteLevelLedger
from privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from privacy.ledger_summary import (
    SUMMARY_FORMAT_V1,
    check_summary,
    sign_summary,
    site_level_charges_digest,
    verify_summary_signature,
)
from privacy.policy import SitePrivacyPolicy
from privacy.secagg import generate_identity_key, identity_private_bytes
from protocol.config import RunConfig
from protocol.io import atomic_write_json
from protocol.run_folder import RunFolder
from server.app import run_server
from server.site_level_dp import SiteLevelDP
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma")
POLICY = {"budget-epsilon": 50.0, "noise-multiplier": 1.0}


def _params() -> DDGParams:
    sdp = SiteLevelDP(mode="distributed", epsilon=8.0, delta=1e-5, clip=0.05,
                      noise_multiplier=-1.0, cohort=0, modulus_bits=32, underflow="refuse",
                      planned_rounds=4)
    params = sdp.plan(cohort_size=10, dim=5000)
    assert isinstance(params, DDGParams)
    return params


def _charge(state_dir: Path, run_id: str, rounds: list[int]) -> float:
    ledger, history, eps = SiteLevelLedger(state_dir), [], 0.0
    for rnd in rounds:
        record = _params().round_record(10)
        history.append(record)
        eps = site_level_epsilon(history, delta=1e-5)
        ledger.charge(run_id=run_id, round_num=rnd, record=record, epsilon_after=eps,
                      budget=8.0, delta=1e-5)
    return eps


def _site_privacy(state_dir: Path) -> SitePrivacy:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / IDENTITY_FILE).write_bytes(identity_private_bytes(generate_identity_key()))
    policy = SitePrivacyPolicy.from_mapping(POLICY)
    return SitePrivacy.open(policy, state_dir, site="alpha", num_examples=100)


def test_the_signed_summary_covers_this_runs_site_level_charges(tmp_path: Path) -> None:
    # arrange: a site with two site-level charges in this run and one in another
    privacy = _site_privacy(tmp_path)
    eps = _charge(tmp_path, "r1", [1, 2])
    _charge(tmp_path, "other", [1])

    # act
    signed = privacy.signed_summary(tmp_path, run_id="r1", round_num=2)

    # assert: the site-level part is inside what is signed, and checks out
    assert signed is not None
    summary, sig = json.loads(signed[0]), signed[1]
    part = summary["site_level"]
    assert [c["round"] for c in part["charges"]] == [1, 2]
    assert {c["run_id"] for c in part["charges"]} == {"r1"}
    assert part["epsilon"] == pytest.approx(eps)
    assert part["sha256"] == site_level_charges_digest(part["charges"])
    assert check_summary(summary) == []
    from client.identity import load_site_identity

    public = load_site_identity(tmp_path).public_key()
    assert verify_summary_signature(summary, sig, public)
    lowered = {**summary, "site_level": {**part, "epsilon": part["epsilon"] / 2}}
    assert not verify_summary_signature(lowered, sig, public)  # the ε bound is signed
    assert any("site_level.epsilon" in p for p in check_summary(lowered))
    dropped = {**part, "charges": part["charges"][:1]}
    assert any("site_level" in p for p in check_summary({**summary, "site_level": dropped}))


def test_a_format_1_summary_without_a_site_level_part_still_reads(tmp_path: Path) -> None:
    privacy = _site_privacy(tmp_path)
    signed = privacy.signed_summary(tmp_path, run_id="r1", round_num=1)
    assert signed is not None
    old = json.loads(signed[0])
    del old["site_level"]
    old["format"] = SUMMARY_FORMAT_V1
    assert check_summary(old) == []
    key = generate_identity_key()
    from privacy.audit.verify import check_signed_summary
    from privacy.secagg.keys import identity_public_bytes

    check = check_signed_summary({"summary": old, "signature": sign_summary(old, key)},
                                 site="alpha", public_key=identity_public_bytes(key),
                                 label="old")
    assert check.signature == "valid" and not check.problems and check.site_level is None


def test_export_ledger_copies_the_site_level_ledger_verified_and_refuses_a_broken_one(
    tmp_path: Path
) -> None:
    from client.agent import AgentError, export_ledger, site_level_export_path
    from client.deploy_config import load_site_config
    from tests._deploy import make_deployment

    site = load_site_config(make_deployment(tmp_path).site_cfgs["law"])
    PrivacyLedger(site.state_dir).record_round(
        run_id="r", round=1, steps=2, sample_rate=0.1, noise_multiplier=1.0, max_grad_norm=0.01,
        accountant="rdp", delta=1e-5, epsilon_after=0.1)
    _charge(site.state_dir, "r", [1, 2])
    out = tmp_path / "handed-over"
    out.mkdir()

    n, _, path = export_ledger(site, out)

    assert (n, path) == (1, out / LEDGER_FILENAME)
    copy = out / SITE_LEVEL_LEDGER
    assert site_level_export_path(path) == copy
    assert copy.read_bytes() == (site.state_dir / SITE_LEVEL_LEDGER).read_bytes()
    assert site_level_export_path(tmp_path / "law.jsonl") == tmp_path / (
        "law." + SITE_LEVEL_LEDGER)
    # a site-level ledger that does not parse is refused, and nothing is written
    doc = json.loads((site.state_dir / SITE_LEVEL_LEDGER).read_text())
    doc["rounds"][0]["record"] = {"mode": "distributed"}
    atomic_write_json(site.state_dir / SITE_LEVEL_LEDGER, doc)
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(AgentError, match="site-level ledger failed verification"):
        export_ledger(site, again)
    assert list(again.iterdir()) == []


# ---- a real (in-process) run whose RUN_DIR holds no site state: the deployment's view ----


def _run(tmp_path: Path, tiny_model: Path, tiny_sites: Path) -> RunConfig:
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 2, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "site-level-dp": True, "site-level-dp-clip": 0.5, "min-sites": 3, "local-steps": 1,
        "batch-size": 8, "max-seq-len": 32, "max-eval-examples": 4, "device": "cpu",
        "dp": True, "dp-policy": json.dumps(POLICY),
    })
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    with server_identity():
        run_server(LoopbackGrid(app, nodes, cfg.to_mapping()), cfg)  # type: ignore[arg-type]
    return cfg


def _ledgers(report: Any) -> dict[str, Any]:
    assert report.site_level is not None
    return {s.site_id: s for s in report.site_level.site_ledgers}


def test_the_audit_shows_each_sites_signed_site_level_eps_and_flags_an_edited_export(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: two secure rounds with site-level DP; the sites' state stays at the sites
    cfg = _run(tmp_path, tiny_model, tiny_sites)
    folder = RunFolder(cfg.out_dir)
    assert not folder.sites_dir.exists()
    own = {s: SiteLevelLedger(tmp_path / "sites" / s).charges() for s in SITES}
    assert all([c["round"] for c in own[s]] == [1, 2] for s in SITES)

    # act
    report = build_report(cfg.out_dir)

    # assert: each site's site-level eps, after its last charge (round 2), from what it signed
    by_site = _ledgers(report)
    assert set(by_site) == set(SITES)
    for s in SITES:
        row = by_site[s]
        assert (row.status, row.signed, row.rounds_charged) == ("signed", "valid", (1, 2))
        assert row.signed_epsilon == pytest.approx(own[s][-1]["epsilon_after"])
        assert row.epsilon == row.signed_epsilon and not row.exceeds_report
    assert not [f for f in report.red_flags if "site-level" in f.message]
    jsonschema.validate(report_data(report), load_schema())
    assert "| alpha | signed | 1, 2 |" in render_md(report)

    # an exported file that matches what the site signed agrees; an edited one is red
    alpha_dir = folder.site_dir("alpha")
    alpha_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "sites" / "alpha" / SITE_LEVEL_LEDGER, alpha_dir / SITE_LEVEL_LEDGER)
    agreed = _ledgers(build_report(cfg.out_dir))["alpha"]
    assert (agreed.status, agreed.matches_signed) == ("found", True)
    doc = json.loads((alpha_dir / SITE_LEVEL_LEDGER).read_text())
    doc["rounds"][1]["epsilon_after"] *= 0.5
    atomic_write_json(alpha_dir / SITE_LEVEL_LEDGER, doc)
    edited = build_report(cfg.out_dir)
    assert _ledgers(edited)["alpha"].matches_signed is False
    red = [f for f in edited.red_flags if f.site_id == "alpha"]
    assert any("does not match what the site signed" in f.message and "round 2" in f.message
               for f in red)
    assert "DOES NOT MATCH THE SIGNED LEDGER" in render_md(edited)
