"""Canaries planted at one site of a real run (``confide simulate --canaries M``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from client.canaries import canary_plan, planted_canaries
from client.site import load_site_data, site_spec
from privacy.audit import build_report
from privacy.audit.sites import POLICY_FILENAME
from privacy.ledger import PrivacyLedger
from protocol.config import ConfigError, RunConfig
from protocol.run_folder import RunFolder
from tests.test_cli import _run
from tests.test_simulation import _simulate


def _cfg(tiny_model: Path, tiny_sites: Path, **kw: object) -> RunConfig:
    return RunConfig.from_mapping({"model": str(tiny_model), "data-dir": str(tiny_sites), **kw})


@pytest.mark.parametrize(("mapping", "needle"), [
    ({"canaries": 10}, "`canary-site` must be the name of the site"),
    ({"canaries": -1}, "`canaries` must be in [0, 100000]"),
    ({"canaries": 10, "canary-site": "a", "canary-length": 1}, "`canary-length` must be in"),
    ({"canaries": 10, "canary-site": "a", "canary-length": 4096}, "max-seq-len=128"),
])
def test_bad_canary_settings_name_the_key(mapping: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=None) as exc:
        RunConfig.from_mapping(mapping)
    assert needle in str(exc.value)


def test_only_the_canary_site_trains_on_exactly_the_in_coins(
    tiny_model: Path, tiny_sites: Path,
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model)
    plain = _cfg(tiny_model, tiny_sites)
    cfg = _cfg(tiny_model, tiny_sites, **{"canaries": 40, "canary-site": "beta"})
    plan = canary_plan(cfg, tok)
    assert plan == canary_plan(cfg, tok)  # the auditor redraws the same canaries and coins
    assert 0 < sum(plan.included) < 40
    specials = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert not specials & {t for s in plan.sequences for t in s}
    for pid, name in enumerate(("alpha", "beta", "gamma")):
        spec = site_spec({"partition-id": pid, "num-partitions": 3}, cfg)
        assert spec.name == name
        base = load_site_data(spec, plain, tok)
        data = load_site_data(spec, cfg, tok)
        extra = data.train[len(base.train):]
        assert data.train[: len(base.train)] == base.train and data.held_out == base.held_out
        if name == "beta":
            assert [e.input_ids for e in extra] == [plan.sequences[i]
                                                   for i in plan.indices(included=True)]
        else:
            assert extra == [] and planted_canaries(cfg, name, tok) == []


def test_unknown_canary_site_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, tiny_sites: Path,
) -> None:
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "run"), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--canaries", "10",
                     "--canary-site", "delta")
    assert code == 2 and "--canary-site 'delta' is not one of the run's sites" in err
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "run"), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--canaries", "-3")
    assert code == 2 and "--canaries must be >= 0, got -3" in err


def test_planted_canaries_are_scored_on_the_released_adapter_against_the_site_epsilon(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path,
) -> None:
    out = tmp_path / "run"
    proc = _simulate("--sites", "3", "--rounds", "2", "--out", str(out), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--local-steps", "3",
                     "--epsilon", "2", "--canaries", "64", "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "canaries: 64 at alpha: empirical eps >=" in proc.stdout
    folder = RunFolder(out)
    doc = json.loads(folder.canary_audit_path.read_text())
    (r,) = doc["runs"]
    ledger = [e for e in PrivacyLedger(folder.site_dir("alpha")).entries if e.status == "trained"]
    assert r["dp"] and r["site_id"] == "alpha" and r["canaries"] == 64
    assert r["formal_epsilon"] == ledger[-1].epsilon_after <= 2.0
    assert r["delta"] == ledger[-1].delta and not r["exceeds_formal"]
    assert 0.0 <= r["epsilon_lower_bound"] <= r["formal_epsilon"]
    # the site's DP accounting counted the planted canaries among its examples
    policy = json.loads((folder.site_dir("alpha") / POLICY_FILENAME).read_text())
    other = json.loads((folder.site_dir("beta") / POLICY_FILENAME).read_text())
    assert policy["num_examples"] == other["num_examples"] + r["included"]
    report = build_report(out)
    assert [e["site_id"] for e in report.empirical] == ["alpha"]
    assert "Empirical audit" in folder.audit_report("md").read_text()
