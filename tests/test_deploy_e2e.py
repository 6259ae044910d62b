"""A real federation on 127.0.0.1: ``confide server`` + three ``confide client`` processes.

TLS and SuperNode authentication on, example-level DP and secure aggregation on. During the run an
unenrolled site and a site without the CA are refused while the run goes on; one site is
killed mid-round (the round completes without it, it rejoins after a restart); the server
is killed mid-round and ``--resume`` finishes with exactly the planned rounds. The coordinator
runs with ``--record-received``: every reply it received from the SuperNodes is in
``RUN_DIR/received.jsonl``, and none carries a per-site loss, count or timing in the clear.
"""

from __future__ import annotations

import time

import pytest

from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED
from protocol.wire import Field, Key, MessageType, Reason
from server.devkeys import make_keys
from tests._deploy import crash, make_deployment, start, stop_all, text, wait_for
from tests._received import clear_per_site

pytestmark = pytest.mark.slow


def test_three_sites_tls_auth_dp_secagg_survive_a_site_kill_and_a_server_crash(tmp_path):
    dep = make_deployment(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    server_log = logs / "server.log"
    server = start(dep, ["server", "--config", str(dep.server_cfg), "--record-received"],
                   server_log)
    try:
        wait_for(lambda: "enrolled site law" in text(server_log), 120, "site registration")
        clients = {name: start(dep, ["client", "--config", str(cfg)], logs / f"{name}.log")
                   for name, cfg in dep.site_cfgs.items()}
        # outsiders: an unenrolled key, and an enrolled site without the coordinator's CA
        other = make_keys(tmp_path / "outsider", hosts=["127.0.0.1"], sites=["mallory"])
        mallory = other.site_dirs["mallory"] / "site.toml"
        mallory.write_text(dep.site_cfgs["bank"].read_text()
                           .replace('name = "bank"', 'name = "mallory"')
                           .replace('activation-grace = 30.0', 'activation-grace = 5.0')
                           .replace('ca-cert = "./ca.crt"', f'ca-cert = "{dep.root / "ca.crt"}"'))
        no_ca = dep.site_cfgs["law"].with_name("no-ca.toml")
        no_ca.write_text(dep.site_cfgs["law"].read_text().replace('ca-cert = "./ca.crt"', ""))
        bad = start(dep, ["client", "--config", str(mallory)], logs / "mallory.log")
        noca = start(dep, ["client", "--config", str(no_ca)], logs / "noca.log")
        assert bad.wait(timeout=120) == 3, text(logs / "mallory.log")
        assert noca.wait(timeout=120) == 3, text(logs / "noca.log")

        # kill one site while round 1 trains; restart it a few seconds later
        wait_for(lambda: MessageType.SECAGG_MASKED in text(logs / "bank.log"), 400,
                 "bank to get round 1's masked-training message")
        crash(clients["bank"])
        time.sleep(3)
        clients["bank"] = start(dep, ["client", "--config", str(dep.site_cfgs["bank"])],
                                logs / "bank-restarted.log")
        folder = RunFolder(dep.run_dir)

        def completed() -> int:  # (round 1's metrics row waits for round 2's evaluation)
            return folder.read_state().completed_round if folder.state_path.exists() else -1

        wait_for(lambda: completed() >= 1 or server.poll() is not None,
                 600, "round 1 to complete without bank")
        assert server.poll() is None, text(server_log)[-3000:]

        # crash the coordinator (no cleanup) in round 2, then resume
        wait_for(lambda: "round 2:" in text(server_log), 300,
                 "round 2 to start")
        crash(server)
        resumed_log = logs / "server-resumed.log"
        resumed = start(dep, ["server", "--config", str(dep.server_cfg), "--resume",
                              str(dep.run_dir), "--record-received"], resumed_log)
        assert resumed.wait(timeout=900) == 0, text(resumed_log)[-4000:]
    finally:
        stop_all(dep)

    folder = RunFolder(dep.run_dir)
    rows = folder.read_metrics()
    assert [r.round for r in rows] == [0, 1, 2], "each planned round exactly once"
    part = {p.round: p for p in folder.read_participation()}
    assert sorted(part) == [1, 2]
    assert part[1].released and "bank" not in part[1].contributed
    assert sorted(part[1].contributed) == ["clinic", "law"]
    # the crash in round 2 may come after its record was written ahead of the unmask: that
    # attempt stays charged, and its resumed re-run is a new attempt that every site which
    # already sent a masked input declines (never two inputs for one round)
    round2 = [p for p in folder.read_participation() if p.round == 2]
    assert "bank" in round2[0].contributed, "the restarted site rejoins a later round"
    assert set(round2[0].epsilon or {}) >= {"clinic", "law"}
    if len(round2) == 2:
        assert round2[0].charged and (round2[0].attempt, round2[1].attempt) == (0, 1)
        assert set(round2[1].declined.values()) <= {Reason.ROUND_ALREADY_CONTRIBUTED}
    else:
        assert set(rows[2].epsilon or {}) >= {"clinic", "law"}
    state = folder.read_state()
    assert state.status == RUN_COMPLETED and state.completed_round == 2

    # what the coordinator received from the real SuperNodes: every stage, nothing per-site
    received = folder.read_received()
    kinds = {r["message_type"] for r in received}
    assert {MessageType.SECAGG_MASKED, MessageType.SECAGG_EVALUATE} <= kinds, kinds
    assert MessageType.TRAIN not in kinds and MessageType.EVALUATE not in kinds
    # (round 0's evaluation comes with round 1's training: eval-in-train)
    assert {r["round"] for r in received} >= {1, 2}
    sites = {r["records"][Key.CONFIG]["values"].get(Field.SITE) for r in received
             if Key.CONFIG in r.get("records", {})}
    assert {"bank", "clinic", "law"} <= sites
    leaks = [(r["round"], r["message_type"], leak) for r in received
             for leak in clear_per_site(r)]
    assert leaks == [], leaks
    assert "resuming run" in text(resumed_log)
    assert "refused this site's key" in text(logs / "mallory.log")
    assert "does not verify" in text(logs / "noca.log")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from protocol.model_ref import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("embedded"))
    model = PeftModel.from_pretrained(base, str(folder.final_adapter))
    assert any("lora_A" in n for n, _ in model.named_parameters())

    from client.agent import export_ledger
    from client.deploy_config import load_site_config

    n, head, path = export_ledger(load_site_config(dep.site_cfgs["law"]), tmp_path / "law.jsonl")
    assert n >= 2 and path.exists() and len(head) == 64

    # the privacy officer's view: the coordinator holds only the sites' signed summaries;
    # law hands over its full ledger, the others are audited from their signatures
    from privacy.audit import build_report

    report = build_report(dep.run_dir)
    assert report.mode == "deployment"
    by_site = {s.site_id: s for s in report.sites}
    assert {"bank", "clinic", "law"} <= set(by_site)
    for site in ("bank", "clinic", "law"):
        v = by_site[site].verification
        assert (v.method, v.signature) == ("signature", "valid"), v.problems
        assert by_site[site].recomputation is not None and by_site[site].recomputation.matches
    import shutil

    from privacy.ledger import LEDGER_FILENAME

    law_dir = folder.site_dir("law")
    law_dir.mkdir(parents=True)
    shutil.copy(path, law_dir / LEDGER_FILENAME)
    law = next(s for s in build_report(dep.run_dir).sites if s.site_id == "law")
    assert law.verification.verified and law.verification.signature == "valid", (
        law.verification.problems)
