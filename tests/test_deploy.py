"""Deployment, with real processes: keys, validated TOML, metrics, ledger export, refusals."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.deploy_config import load_site_config
from protocol.deploy_config import DeployConfigError
from protocol.enrolment import load_enrolment
from server.deploy_config import load_server_config
from server.devkeys import KeysError, make_keys
from tests._deploy import REPO, make_deployment, start, stop_all, text, tree, wait_for


# keys ------------------------------------------------------------------------------------------
def test_keys_make_a_ca_signed_server_cert_with_sans_openssh_ecdsa_site_keys_and_enrolment(
    tmp_path,
):
    ks = make_keys(tmp_path / "k", hosts=["127.0.0.1", "coord.example.org"], sites=["a", "b"])
    ca = x509.load_pem_x509_certificate(ks.ca_cert.read_bytes())
    srv = x509.load_pem_x509_certificate(ks.server_cert.read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    key = serialization.load_ssh_private_key((ks.site_dirs["a"] / "auth.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert (ks.site_dirs["a"] / "auth.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (ks.site_dirs["a"] / "auth.key").stat().st_mode & 0o077 == 0
    assert set(load_enrolment(str(ks.enrolment))) == {"a", "b"}
    assert (ks.site_dirs["b"] / "state" / "identity.key").stat().st_size == 32


def test_keys_refuse_bad_site_names_bad_hosts_and_overwriting(tmp_path):
    with pytest.raises(KeysError, match="`--sites` entry 'a b'"):
        make_keys(tmp_path / "k", hosts=["127.0.0.1"], sites=["a b"])
    with pytest.raises(KeysError, match="`--hosts` entry 'bad host!'"):
        make_keys(tmp_path / "k", hosts=["bad host!"], sites=["a"])
    make_keys(tmp_path / "k", hosts=["127.0.0.1"], sites=["a"])
    with pytest.raises(KeysError, match="already holds keys"):
        make_keys(tmp_path / "k", hosts=["127.0.0.1"], sites=["a"])


# configs ---------------------------------------------------------------------------------------
def test_generated_configs_load_and_the_site_node_config_carries_its_policy(tmp_path):
    dep = make_deployment(tmp_path)
    cfg = load_server_config(dep.server_cfg)
    assert sorted(cfg.sites) == ["bank", "clinic", "law"] and cfg.fleet_port == dep.fleet
    rc = cfg.run_config()
    assert rc.secagg and rc.dp and rc.out_dir == str(tmp_path / "run")
    site = load_site_config(dep.site_cfgs["bank"])
    nc = site.node_config()
    assert nc["site-name"] == "bank" and nc["dp-budget-epsilon"] == 8.0
    assert nc["secagg-enrolment"].endswith("sites/bank/enrolment.json")


@pytest.mark.parametrize("edit, message", [
    (("[server]", "[server]\ncolour = \"blue\""), r"unknown key `colour` in \[server\]"),
    (("fleet-port = ", "fleet-port = \"9\" #"),
     r"\[server\] `fleet-port` must be an integer, got '9'"),
    (("local-steps = 2", "local-steps = \"ten\""), r"\[run\] `local-steps` must be an integer"),
    (("[run]", "[run]\nout-dir = \"/x\""), r"\[run\] `out-dir` cannot be set here"),
    (("cert = \"./server/server.crt\"", "cert = \"nope.crt\""),
     r"\[server\] `cert`: file not found: '.*nope.crt'"),
    (("[sites]", "[sites]\nmallory = \"./server/ca.crt\""), r"\[sites\] `mallory`.*not an OpenSSH"),
    (("[server]", "[extra]\n[server]"), r"unknown top-level table `extra`"),
])
def test_server_config_errors_name_the_file_the_key_and_the_value(tmp_path, edit, message):
    dep = make_deployment(tmp_path)
    body = dep.server_cfg.read_text()
    assert edit[0] in body
    dep.server_cfg.write_text(body.replace(edit[0], edit[1], 1))
    with pytest.raises(DeployConfigError, match=message) as err:
        load_server_config(dep.server_cfg)
    assert str(dep.server_cfg) in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (("device = \"auto\"", "device = \"tpu\""), r"\[site\] `device` must be one of"),
    (("runtime-port = 0", "runtime-port = true"), r"`runtime-port` must be an integer, got True"),
    (("auth-key = \"./auth.key\"", "auth-key = \"./auth.pub\""), r"not an OpenSSH private key"),
    (("data-path = ", "data-path = \"/no/such/dir\" #"),
     r"`data-path`: file not found: '/no/such/dir'"),
    (("budget-epsilon = 8.0", "budget-epsilon = -1.0"), r"\[privacy\]"),
    (("[privacy]", "[privacy]\nnoise = 1.0"), r"\[privacy\].*noise"),
    (("superlink = ", "superlink = \"nohost\" #"), r"`superlink` must be HOST:PORT, got 'nohost'"),
    (("state-dir = \"./state\"", "state-dir = \"./elsewhere\""), r"`state-dir`: no identity.key"),
    (("[privacy]", "[secagg]\nmax-cohort = 1\n[privacy]"), r"\[secagg\].*`max-cohort`.*got 1"),
    (("[privacy]", "[secagg]\nmax-cohrt = 5\n[privacy]"), r"unknown key `max-cohrt` in \[secagg\]"),
    (("runtime-port = 0", "runtime-port = 0\npoll-interval = 0.001"),
     r"\[site\] `poll-interval` must be >= 0.01"),
    (("runtime-port = 0", "runtime-port = 0\npoll-interval = 120"),
     r"\[site\] `poll-interval` must be <= 60"),
    (("runtime-port = 0", "runtime-port = 0\nexecutor = 1"),
     r"\[site\] `executor` must be true or false"),
    (("runtime-port = 0", "runtime-port = 0\nworker = false\nexecutor = true"),
     r"\[site\] `executor` must be false when `worker` is false"),
])
def test_site_config_errors_name_the_file_the_key_and_the_value(tmp_path, edit, message):
    dep = make_deployment(tmp_path)
    path = dep.site_cfgs["bank"]
    body = path.read_text()
    assert edit[0] in body
    path.write_text(body.replace(edit[0], edit[1], 1))
    with pytest.raises(DeployConfigError, match=message) as err:
        load_site_config(path)
    assert str(path) in str(err.value)


def test_repo_sample_configs_load_against_keys_from_confide_keys(tmp_path):
    work = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", work, ignore=shutil.ignore_patterns("dev"))
    make_keys(work / "dev", hosts=["127.0.0.1", "localhost"], sites=["bank", "clinic", "law"])
    (work.parent / "simulations").symlink_to(REPO / "simulations")
    cfg = load_server_config(work / "server.toml")
    assert sorted(cfg.sites) == ["bank", "clinic", "law"]
    for name in cfg.sites:
        assert load_site_config(work / "sites" / f"{name}.toml").name == name


# metrics ---------------------------------------------------------------------------------------
def test_metrics_exposition_reports_rounds_sites_bytes_and_epsilon(tmp_path):
    from protocol.run_folder import RunFolder
    from protocol.run_rows import MetricsRow, ParticipationRow
    from server.metrics import RunMetrics, serve_metrics

    folder = RunFolder(tmp_path)
    folder.append_metrics(MetricsRow(round=0, eval_loss=5.0, eval_perplexity=148.4, sites={},
                                     round_time_s=2.0, bytes_received=10))
    folder.append_metrics(MetricsRow(round=1, eval_loss=4.5, eval_perplexity=90.0, sites={},
                                     round_time_s=9.5, bytes_received=1000,
                                     epsilon={"bank": 1.5, "law": 2.0}))
    folder.append_participation(ParticipationRow(
        round=1, sampled=("bank", "clinic", "law"), contributed=("bank", "law"), declined={},
        failed={"clinic": "timeout"}, dropped=("clinic",)))
    m = RunMetrics(tmp_path, planned_rounds=3)
    assert [(r.round, p is not None) for r, p in m.refresh()] == [(0, False), (1, True)]
    http = serve_metrics(m, port=0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{http.server_address[1]}/metrics",
                                      timeout=10).read().decode()
    finally:
        http.shutdown()
        http.server_close()
    assert "confide_current_round 1.0" in body and "confide_sites_sampled 3.0" in body
    assert "confide_sites_reporting 2.0" in body and "confide_sites_dropped 1.0" in body
    assert "confide_bytes_received_total 1010.0" in body
    assert 'confide_example_level_epsilon{site="law"} 2.0' in body
    assert "confide_round_duration_seconds 9.5" in body
    assert "confide_eval_loss 4.5" in body


def test_the_eval_loss_gauge_keeps_the_last_evaluation_when_a_round_has_none(tmp_path):
    from protocol.run_folder import RunFolder
    from protocol.run_rows import MetricsRow
    from server.metrics import RunMetrics

    folder = RunFolder(tmp_path)
    folder.append_metrics(MetricsRow(round=0, sites={}, eval_unavailable="aborted"))
    m = RunMetrics(tmp_path, planned_rounds=3)
    m.refresh()
    assert "confide_eval_loss NaN\n" in m.exposition()  # no round evaluated yet
    folder.append_metrics(MetricsRow(round=1, eval_loss=4.5, eval_perplexity=90.0, sites={}))
    folder.append_metrics(MetricsRow(round=2, sites={}, eval_unavailable="aborted"))
    m.refresh()
    body = m.exposition()
    assert "confide_eval_loss 4.5\n" in body and "confide_current_round 2.0" in body


# ledger export ---------------------------------------------------------------------------------
def test_export_ledger_verifies_the_chain_and_refuses_a_tampered_one(tmp_path):
    from client.agent import export_ledger
    from privacy.ledger import LEDGER_FILENAME, LedgerError, PrivacyLedger

    dep = make_deployment(tmp_path)
    site = load_site_config(dep.site_cfgs["law"])
    ledger = PrivacyLedger(site.state_dir)
    for rnd in (1, 2):
        ledger.record_round(run_id="r", round=rnd, steps=2, sample_rate=0.1, noise_multiplier=1.0,
                            max_grad_norm=0.01, accountant="rdp", delta=1e-5,
                            epsilon_after=0.1 * rnd)
    n, head, path = export_ledger(site, tmp_path / "out.jsonl")
    assert n == 2 and head == PrivacyLedger(site.state_dir).head()
    assert path.read_bytes() == (site.state_dir / LEDGER_FILENAME).read_bytes()
    raw = (site.state_dir / LEDGER_FILENAME).read_text().replace('"steps":2', '"steps":1', 1)
    (site.state_dir / LEDGER_FILENAME).write_text(raw)
    with pytest.raises(LedgerError):
        export_ledger(site, tmp_path / "out2.jsonl")
    assert not (tmp_path / "out2.jsonl").exists()


# real processes ----------------------------------------------------------------------------------
def test_client_retries_with_backoff_then_says_what_it_waited_for(tmp_path):
    dep = make_deployment(tmp_path, connect_timeout=3.0)
    log = tmp_path / "client.log"
    proc = start(dep, ["client", "--config", str(dep.site_cfgs["bank"])], log)
    try:
        code = proc.wait(timeout=60)
    finally:
        stop_all(dep)
    out = text(log)
    assert code == 4, out
    assert "unreachable; retrying in 1 s" in out and "retrying in 2 s" in out
    assert f"waited 3 s (`connect-timeout`) for the coordinator at 127.0.0.1:{dep.fleet}" in out


def test_server_refuses_an_unenrolled_key_and_a_site_without_the_ca_then_stops_everything(tmp_path):
    """Real SuperLink (TLS + SuperNode auth) and SuperNodes on 127.0.0.1; Ctrl-C leaves nothing."""
    dep = make_deployment(tmp_path)
    # an outsider with keys from another CA run: its key is not enrolled
    other = make_keys(tmp_path / "outsider", hosts=["127.0.0.1"], sites=["mallory"])
    mallory = other.site_dirs["mallory"] / "site.toml"
    mallory.write_text(dep.site_cfgs["bank"].read_text()
                       .replace('name = "bank"', 'name = "mallory"')
                       .replace('activation-grace = 30.0', 'activation-grace = 5.0')
                       .replace('ca-cert = "./ca.crt"', f'ca-cert = "{dep.root / "ca.crt"}"'))
    # an enrolled site that lacks the coordinator's CA certificate (system CAs only)
    no_ca = dep.site_cfgs["law"].with_name("no-ca.toml")
    no_ca.write_text(dep.site_cfgs["law"].read_text().replace('ca-cert = "./ca.crt"', ""))
    server_log = tmp_path / "server.log"
    server = start(dep, ["server", "--config", str(dep.server_cfg)], server_log)
    try:
        wait_for(lambda: "enrolled site law" in text(server_log) or server.poll() is not None,
                 90, "the server to register the sites")
        assert server.poll() is None, text(server_log)
        members = tree(server)
        t0 = time.monotonic()
        bad = start(dep, ["client", "--config", str(mallory)], tmp_path / "mallory.log")
        noca = start(dep, ["client", "--config", str(no_ca)], tmp_path / "noca.log")
        assert bad.wait(timeout=60) == 3
        assert noca.wait(timeout=60) == 3
        assert time.monotonic() - t0 < 60
        assert "refused this site's key" in text(tmp_path / "mallory.log")
        assert "not enrolled there" in text(tmp_path / "mallory.log")
        assert "does not verify against the system CA bundle" in text(tmp_path / "noca.log")
        urls = f"http://127.0.0.1:{dep.metrics}/metrics"
        exposition = urllib.request.urlopen(urls, timeout=10).read().decode()
        assert "confide_planned_rounds 2.0" in exposition
        assert server.poll() is None, "a refused site must not stop the coordinator"
        server.send_signal(signal.SIGINT)  # Ctrl-C
        # also when this test runs with SIGINT ignored (a background job of a script, as CI)
        assert server.wait(timeout=60) == 130
        time.sleep(1)
        alive = [p for p in members if p.is_running() and p.status() != "zombie"]
        assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
        assert "resume with `confide server" in text(server_log)
    finally:
        stop_all(dep)


def test_bad_config_exits_2_with_the_key_and_file(tmp_path):
    dep = make_deployment(tmp_path)
    dep.site_cfgs["bank"].write_text(dep.site_cfgs["bank"].read_text() + "\n[other]\nx = 1\n")
    done = subprocess.run([sys.executable, "-m", "simulations.cli", "client", "--config",
                           str(dep.site_cfgs["bank"])], capture_output=True, text=True,
                          cwd=str(REPO), timeout=120)
    assert done.returncode == 2
    assert "unknown top-level table `other`" in done.stderr
    assert str(dep.site_cfgs["bank"]) in done.stderr


def test_confide_keys_command_writes_configs_that_load(tmp_path, capsys):
    from simulations.cli import main

    out = tmp_path / "dev"
    assert main(["keys", "--out", str(out), "--hosts", "127.0.0.1,localhost",
                 "--sites", "bank,clinic,law", "--run-dir", str(tmp_path / "run")]) == 0
    assert "confide server --config" in capsys.readouterr().out
    cfg = load_server_config(out / "server.toml")
    assert cfg.out_dir == tmp_path / "run" and cfg.run_config().min_sites == 3
    for name in ("bank", "clinic", "law"):
        site = load_site_config(out / "sites" / name / "site.toml")
        assert site.data_path == (REPO / "simulations" / "data" / "sites" / name).resolve()
    assert main(["keys", "--out", str(out)]) == 2  # refuses to overwrite
    assert "already holds keys" in capsys.readouterr().err


def test_resume_needs_an_unfinished_run_and_a_new_run_needs_an_empty_out_dir(tmp_path):
    import dataclasses

    from protocol.run_folder import RunFolder
    from protocol.run_rows import RUN_COMPLETED, RUN_RUNNING, RunState
    from server.deploy import _check_out_dir

    cfg = load_server_config(make_deployment(tmp_path).server_cfg)
    with pytest.raises(DeployConfigError, match="holds no run to resume"):
        _check_out_dir(cfg, resume=True)
    cfg.out_dir.mkdir(parents=True)
    folder = RunFolder(cfg.out_dir)
    folder.write_state(RunState(run_id="r", completed_round=1, num_rounds=2, status=RUN_RUNNING))
    with pytest.raises(DeployConfigError, match="already holds a run; pass --resume"):
        _check_out_dir(cfg, resume=False)
    _check_out_dir(cfg, resume=True)
    folder.write_state(RunState(run_id="r", completed_round=2, num_rounds=2,
                                status=RUN_COMPLETED))
    with pytest.raises(DeployConfigError, match="already completed 2 rounds"):
        _check_out_dir(dataclasses.replace(cfg), resume=True)


def test_site_toml_secagg_caps_reach_the_node_config_and_only_when_set(tmp_path):
    dep = make_deployment(tmp_path)
    path = dep.site_cfgs["bank"]
    assert not any(k.startswith("secagg-max") for k in load_site_config(path).node_config())
    path.write_text(path.read_text().replace("[privacy]", "[secagg]\nmax-cohort = 50\n"
                                             "min-threshold = 3\n[privacy]", 1))
    node = load_site_config(path).node_config()
    assert node["secagg-max-cohort"] == 50 and node["secagg-min-threshold"] == 3
    assert "secagg-max-degree" not in node
