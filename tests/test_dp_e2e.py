"""Site-enforced budgets end to end, and a site restart that must not reset epsilon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from privacy.accounting import epsilon
from privacy.audit import build_report
from privacy.audit.sites import POLICY_FILENAME
from privacy.ledger import PrivacyLedger
from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED
from protocol.wire import Reason, Status
from tests.conftest import REPO
from tests.test_simulation import _simulate


def test_budget_one_over_twenty_planned_rounds_is_never_exceeded(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    out = tmp_path / "run"
    proc = _simulate("--sites", "3", "--rounds", "20", "--out", str(out), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--local-steps", "2",
                     "--batch-size", "16",  # q < 1 on 54 examples: several rounds fit
                     "--epsilon", "1", "--noise-multiplier", "5.0", "--quiet")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = RunFolder(out)
    state = folder.read_state()
    assert state.status == RUN_COMPLETED and "no site can train" in state.stopped_early
    part = folder.read_participation()
    trained_rounds = [p.round for p in part if p.contributed]
    declined_rounds = [p.round for p in part if p.declined]
    assert trained_rounds and declined_rounds and max(trained_rounds) < min(declined_rounds)
    assert all(set(p.declined.values()) == {Reason.BUDGET_EXHAUSTED} for p in part if p.declined)
    assert len(part) < 20  # the run ended once no site could train
    for site in ("alpha", "beta", "gamma"):
        ledger = PrivacyLedger(folder.site_dir(site))
        policy = json.loads((folder.site_dir(site) / POLICY_FILENAME).read_text())
        eps = epsilon(ledger.history(), delta=policy["delta"], accountant="rdp")
        assert eps <= 1.0
        assert max(e.epsilon_after for e in ledger.entries) <= 1.0
        assert any(e.status == "declined" for e in ledger.entries)
        # the reported epsilon equals the recomputation from the ledger's parameters
        last = [e for e in ledger.entries if e.status == "trained"][-1]
        assert abs(last.epsilon_after - eps) <= 0.01 * eps
    # every update and decline carried the site's signed ledger summary; the audit checks it
    report = build_report(out)
    for site in report.sites:
        v = site.verification
        assert (v.verified, v.method, v.signature) == (True, "signature", "valid"), v.problems
        stored = folder.read_ledger_summary(site.site_id)
        assert stored.summary["head"] == PrivacyLedger(folder.site_dir(site.site_id)).head()


_SITE = textwrap.dedent('''
    import os, sys, time
    from flwr.app import ConfigRecord, Context, RecordDict
    from client.local_round import local_update
    from protocol.adapter import initial_adapter_state
    from protocol.config import RunConfig
    from protocol.instructions import RoundInstructions
    from protocol.messages import state_to_record
    from client.model import load_site_model, resolve_device
    model, data, state, rnd, policy = sys.argv[1:6]
    run_config = {"model": model, "data-dir": data, "sites-state-dir": state,
                  "dp-policy": policy, "local-steps": 2, "dp": True}
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 1},
                  state=RecordDict(), run_config=run_config)
    sm = load_site_model(model, device=resolve_device("cpu"), r=8, alpha=16, dropout=0.0,
                         target_modules=["q_proj", "v_proj"])
    arrays = state_to_record(initial_adapter_state(sm.shapes, seed=0))
    cfg = RunConfig.from_mapping(run_config, allow_extra=True)
    instr = RoundInstructions.for_round(cfg.replace(batch_size=8, num_server_rounds=5),
                                        round_num=int(rnd), run_id="restart-run")
    upd = local_update(instr, arrays, ctx)
    print("EPS", upd.status, upd.metrics.get("epsilon"), flush=True)
    time.sleep(600)  # stay up until killed, like a site agent between rounds
''')


def _site_round(tiny_model: Path, data: Path, state: Path, rnd: int, policy: str) -> float:
    proc = subprocess.Popen([sys.executable, "-c", _SITE, str(tiny_model), str(data), str(state),
                             str(rnd), policy], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.startswith("EPS"):
                _, status, eps = line.split()
                assert status == Status.OK
                return float(eps)
            assert time.monotonic() < deadline
        raise AssertionError("site process ended without training")
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
        proc.wait()


def test_killed_site_restarts_and_continues_epsilon_from_its_ledger(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    policy = json.dumps({"budget-epsilon": 50.0, "noise-multiplier": 1.0})
    state = tmp_path / "sites"
    eps1 = _site_round(tiny_model, tiny_sites, state, 1, policy)
    eps2 = _site_round(tiny_model, tiny_sites, state, 2, policy)
    ledger = PrivacyLedger(state / "alpha")
    assert [e.round for e in ledger.entries] == [1, 2]
    assert eps2 > eps1 + 0.1  # composed over both rounds, not restarted from zero
    delta = ledger.entries[0].delta
    assert abs(epsilon(ledger.history(), delta=delta, accountant="rdp") - eps2) <= 0.01 * eps2
    assert abs(epsilon(ledger.history()[:1], delta=delta, accountant="rdp") - eps1) <= 0.01 * eps1
