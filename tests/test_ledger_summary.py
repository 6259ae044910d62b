"""Signed ledger summaries: signing, and what the audit makes of them.

The RUN_DIR comes from :func:`tests.test_audit_report.write_run_dir` (real ledgers and
accountants); each site's summary is made and signed exactly as the site agent does
(:meth:`client.privacy_agent.SitePrivacy.signed_summary`), with real Ed25519 keys.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from client.privacy_agent import SitePrivacy
from privacy.audit import build_report, load_schema, render_html, render_md
from privacy.audit.model import report_data
from privacy.audit.sites import POLICY_FILENAME
from privacy.ledger import LEDGER_FILENAME, LedgerEntry, PrivacyLedger
from privacy.ledger_summary import (
    make_summary,
    sign_summary,
    summary_entries,
    verify_summary_signature,
)
from privacy.policy import SitePrivacyPolicy
from privacy.secagg import generate_identity_key, identity_private_bytes
from privacy.secagg.keys import identity_public_bytes
from protocol.run_folder import RunFolder
from server.rundir import RunDir
from tests.test_audit_report import RUN_ID, SITES, write_run_dir


def _signed_run(root: Path) -> Path:
    """Build write_run_dir's folder plus identity keys, the enrolment list and signed summaries.

    Each site's summary is stored through the coordinator's own RunDir.save_ledger_summary.
    """
    write_run_dir(root)
    enrolment = {}
    for site in SITES:
        sdir = RunFolder(root).site_dir(site)
        key = generate_identity_key()
        (sdir / "identity.key").write_bytes(identity_private_bytes(key))
        enrolment[site] = identity_public_bytes(key).hex()
        policy_doc = json.loads((sdir / POLICY_FILENAME).read_text())
        policy = SitePrivacyPolicy.from_mapping(
            {k: v for k, v in policy_doc.items() if k not in ("site", "num_examples", "delta")})
        privacy = SitePrivacy(policy, PrivacyLedger(sdir), site, policy_doc["num_examples"], {})
        signed = privacy.signed_summary(sdir, run_id=RUN_ID, round_num=3)
        assert signed is not None
        RunDir(root).save_ledger_summary(site, *signed, round_num=3, node_id=1)
    RunFolder(root).enrolment_path.write_text(json.dumps(enrolment))
    return root


def _site(report: Any, name: str) -> Any:
    return next(s for s in report.sites if s.site_id == name)


def _summary_path(root: Path, site: str) -> Path:
    return RunFolder(root).ledger_summary_path(site)


def _rechain(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recompute every hash so an edited chain is internally consistent again."""
    prev = "0" * 64
    out = []
    for raw in entries:
        e = LedgerEntry(**{**raw, "prev_hash": prev, "hash": ""})
        e = LedgerEntry(**{**asdict(e), "hash": e.compute_hash()})
        out.append(asdict(e))
        prev = e.hash
    return out


def test_signature_covers_every_field_and_only_the_site_key_verifies() -> None:
    key, other = generate_identity_key(), generate_identity_key()
    summary = make_summary([], site="bank", run_id="r", round_num=1,
                           policy={"budget-epsilon": 4.0})
    sig = sign_summary(summary, key)
    assert verify_summary_signature(summary, sig, key.public_key())
    assert not verify_summary_signature(summary, sig, other.public_key())
    for field, value in (("round", 2), ("site", "law"), ("policy", {"budget-epsilon": 40.0})):
        assert not verify_summary_signature({**summary, field: value}, sig, key.public_key())
    assert not verify_summary_signature(summary, "zz" + sig[2:], key.public_key())
    assert summary_entries(summary) == []


def test_signed_summaries_verify_and_name_the_method(tmp_path: Path) -> None:
    root = _signed_run(tmp_path / "run")

    report = build_report(root)

    for site in SITES:
        v = _site(report, site).verification
        assert (v.verified, v.method, v.signature) == (True, "signature", "valid"), v.problems
    jsonschema.validate(report_data(report), load_schema())
    assert "signature: valid" in render_html(report)
    assert "signature: valid" in render_md(report)


def test_without_the_full_ledger_the_signed_summary_alone_gives_the_same_epsilon(
    tmp_path: Path,
) -> None:
    full = build_report(_signed_run(tmp_path / "run"))
    root = tmp_path / "deployment"
    shutil.copytree(tmp_path / "run", root)
    for site in SITES:  # a deployment: the coordinator holds no site directory at all
        shutil.rmtree(RunFolder(root).site_dir(site))

    report = build_report(root)

    for site in SITES:
        a, b = _site(full, site), _site(report, site)
        assert b.verification.verified and b.verification.signature == "valid"
        assert b.epsilon == pytest.approx(a.epsilon, rel=1e-12)
        assert b.recomputation is not None and b.recomputation.matches
        assert [r.round for r in b.rounds] == [r.round for r in a.rounds]
        assert b.budget_epsilon == SITES[site][1]  # the signed policy
    assert any("export-ledger" in f.message for f in report.flags)


def test_a_tampered_summary_is_shown_unverified_even_when_its_chain_is_rebuilt(
    tmp_path: Path,
) -> None:
    root = _signed_run(tmp_path / "run")
    shutil.rmtree(RunFolder(root).site_dir("beta"))
    path = _summary_path(root, "beta")
    doc = json.loads(path.read_text())
    entries = doc["summary"]["entries"]
    entries[1]["noise_multiplier"] = 5.0  # claim more noise than was used
    doc["summary"]["entries"] = _rechain(entries)
    doc["summary"]["head"] = doc["summary"]["entries"][-1]["hash"]
    path.write_text(json.dumps(doc))

    report = build_report(root)

    beta = _site(report, "beta")
    assert not beta.verification.verified and beta.verification.signature == "invalid"
    assert any("signature INVALID" in p for p in beta.verification.problems)
    assert _site(report, "alpha").verification.verified
    assert any(f.severity == "red" and f.site_id == "beta" for f in report.red_flags)
    assert '<span class="bad">UNVERIFIED</span> (signature: invalid)' in render_html(report)


def test_a_ledger_rewritten_after_signing_no_longer_matches_the_signed_head(
    tmp_path: Path,
) -> None:
    root = _signed_run(tmp_path / "run")
    path = RunFolder(root).site_dir("alpha") / LEDGER_FILENAME
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    entries[2]["noise_multiplier"] = 9.0
    path.write_text("".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
                            for e in _rechain(entries)))
    PrivacyLedger(path.parent)  # its own chain holds: only the signature can catch this

    alpha = _site(build_report(root), "alpha")

    assert not alpha.verification.verified and alpha.verification.chain_intact
    assert any("edited after signing" in p for p in alpha.verification.problems)


def test_a_summary_from_an_unenrolled_site_cannot_verify(tmp_path: Path) -> None:
    root = _signed_run(tmp_path / "run")
    enrolment = json.loads(RunFolder(root).enrolment_path.read_text())
    del enrolment["gamma"]
    RunFolder(root).enrolment_path.write_text(json.dumps(enrolment))

    gamma = _site(build_report(root), "gamma")

    assert not gamma.verification.verified and gamma.verification.signature == "no-key"


def test_coordinator_ignores_a_summary_with_an_unsafe_site_name(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.save_ledger_summary("../../etc/x", "{}", "00", round_num=1, node_id=3)
    rd.save_ledger_summary("bank", "not json", "00", round_num=1, node_id=3)
    assert not rd.ledger_summaries.exists()
