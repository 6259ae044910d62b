"""``confide server``: run the coordinator of a real federation (Flower deployment engine).

Starts a ``flower-superlink`` with TLS and SuperNode authentication, registers the enrolled
sites' public keys (``flwr supernode register``), submits the Confide app with the run
configuration (``flwr run --stream``), follows the run (log lines, ``RUN_DIR``, Prometheus
metrics) and stops everything it started when the run ends, fails, times out or is
interrupted. ``resume`` continues a crashed run from its last completed round.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from protocol.deploy_config import DeployConfigError
from protocol.procs import find_bin, flower_env, interrupt_on_terminate, kill_tree, toml_value
from protocol.run_folder import RunFolder, RunFolderError
from protocol.run_rows import RUN_COMPLETED, MetricsRow, ParticipationRow, RunState
from server.deploy_config import ServerDeployConfig
from server.fab import stage_app
from server.metrics import RunMetrics, dropped_sites, serve_metrics
from server.progress import RunProgress, quiet_env

__all__ = ["DeployError", "run_coordinator"]

logger = logging.getLogger("confide.deploy")

_ROUND = re.compile(r"\bround (\d+)\b")
_CONNECTION = "confide"


class DeployError(RuntimeError):
    """The coordinator could not start, or a wait ran past its timeout."""


def _env(home: Path, token: str) -> dict[str, str]:
    env = flower_env(token)
    env.update({"FLWR_HOME": str(home), "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1")})
    quiet_env(env)
    return env


def _wait_port(host: str, port: int, *, timeout: float, what: str,
               proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DeployError(f"{what} exited with {proc.returncode} before listening on "
                              f"{host}:{port}:\n" + log.read_text(errors="replace")[-2000:])
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        if time.monotonic() > deadline:
            raise DeployError(f"waited {timeout:.0f} s for {what} to listen on {host}:{port} "
                              f"(see {log})")
        time.sleep(0.2)


def _connect_host(address: str) -> str:
    return "127.0.0.1" if address in ("0.0.0.0", "") else address


@contextlib.contextmanager
def _superlink(cfg: ServerDeployConfig, work: Path, env: dict[str, str],
               token: str) -> Iterator[Path]:
    db = cfg.out_dir / ".superlink" / "state.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    log_path = cfg.out_dir / ".superlink" / "superlink.log"
    log = log_path.open("ab")
    args = [find_bin("flower-superlink"), "--ssl-ca-certfile", str(cfg.ca_cert),
            "--ssl-certfile", str(cfg.cert), "--ssl-keyfile", str(cfg.key),
            "--enable-supernode-auth", "--host", cfg.address, "--port", str(cfg.control_port),
            "--fleet-api-address", f"{cfg.address}:{cfg.fleet_port}",
            "--database", str(db), "--disable-runtime-dependency-installation"]
    for port, what in ((cfg.control_port, "control-port"), (cfg.fleet_port, "fleet-port")):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                s.bind((cfg.address, port))
            except OSError as exc:
                raise DeployError(f"{cfg.path}: [server] `{what}` {port} on {cfg.address} is not "
                                  f"free ({exc.strerror}); another SuperLink running?") from None
    logger.info("starting flower-superlink: Fleet API %s:%d (gRPC, TLS, SuperNode auth), control "
                "%s:%d, log %s", cfg.address, cfg.fleet_port, cfg.address, cfg.control_port,
                log_path)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(work),
                            start_new_session=True)
    try:
        host = _connect_host(cfg.address)
        _wait_port(host, cfg.control_port, timeout=cfg.startup_timeout,
                   what="flower-superlink's control API", proc=proc, log=log_path)
        _wait_port(host, cfg.fleet_port, timeout=cfg.startup_timeout,
                   what="flower-superlink's Fleet API", proc=proc, log=log_path)
        yield log_path
    finally:
        kill_tree(proc, token)
        log.close()


def _register_sites(cfg: ServerDeployConfig, env: dict[str, str]) -> None:
    flwr = find_bin("flwr")
    for name, pub in sorted(cfg.sites.items()):
        try:
            done = subprocess.run([flwr, "supernode", "register", str(pub), _CONNECTION,
                                   "--name", name, "--format", "json"], env=env,
                                  capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise DeployError(f"waited 60 s for `flwr supernode register` of site {name}") from None
        text = done.stdout.strip()
        try:
            doc = json.loads(text[text.index("{"):])
        except ValueError:
            raise DeployError(f"registering site {name} ({pub}) failed: "
                              f"{(done.stdout + done.stderr)[-800:]}") from None
        if doc.get("success"):
            logger.info("enrolled site %s: SuperNode key %s (node %s)", name, pub.name,
                        doc.get("node-id"))
        elif "already in use" in str(doc.get("error-message", "")):
            logger.info("enrolled site %s: SuperNode key %s (already registered)", name, pub.name)
        else:
            raise DeployError(f"registering site {name} ({pub}) failed: "
                              f"{doc.get('error-message', doc)}")


def _check_out_dir(cfg: ServerDeployConfig, resume: bool) -> None:
    folder = RunFolder(cfg.out_dir)
    if resume:
        if not folder.state_path.exists():
            raise DeployConfigError(f"--resume: {str(cfg.out_dir)!r} holds no run to resume")
        try:
            state = folder.read_state()
        except RunFolderError as exc:
            raise DeployConfigError(f"--resume: {exc}") from None
        if state.status == RUN_COMPLETED:
            raise DeployConfigError(f"--resume: the run in {str(cfg.out_dir)!r} already completed "
                                    f"{state.completed_round} rounds")
    elif folder.state_path.exists():
        raise DeployConfigError(f"{cfg.path}: [server] `out-dir` {str(cfg.out_dir)!r} already "
                                "holds a run; pass --resume to continue it or choose another")


def _log_round(rec: MetricsRow, part: ParticipationRow | None) -> None:
    eps = rec.epsilon or {}
    loss = (f"{rec.eval_loss:.4f}" if rec.eval_loss is not None
            else f"unavailable ({rec.eval_unavailable})")
    logger.info("round %d done: %d sampled, %d reporting, %d declined, %d dropped, eval loss %s, "
                "%.1f s, %d bytes received%s", rec.round, len(part.sampled) if part else 0,
                len(part.contributed) if part else 0, len(part.declined) if part else 0,
                dropped_sites(part), loss, float(rec.round_time_s or 0.0),
                rec.bytes_received or 0,
                ("; eps " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(eps.items())))
                if eps else "")


def _pump(stream: TextIO, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_coordinator(cfg: ServerDeployConfig, *, resume: bool = False,
                    out: TextIO = sys.stdout) -> int:
    """Run (or resume) the federated run described by ``cfg``; 0 when it completed."""
    # the operator's server.toml states DP and secure aggregation on or off explicitly (the
    # start-up line below repeats it); the ServerApp's refusal is for Flower's `flwr run .`
    rc = cfg.run_config(resume=resume)
    if not rc.allow_no_privacy:
        rc = rc.replace(allow_no_privacy=True)
    _check_out_dir(cfg, resume)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("coordinator: %d enrolled sites (%s), %d rounds, min %d sites per round, DP %s, "
                "secure aggregation %s, round timeout %.0f s, RUN_DIR %s%s", len(cfg.sites),
                ", ".join(sorted(cfg.sites)), rc.num_server_rounds, rc.min_sites,
                "on" if rc.dp else "off", "on" if rc.secagg else "off", rc.round_timeout,
                cfg.out_dir, " (resume)" if resume else "")
    metrics = RunMetrics(cfg.out_dir, rc.num_server_rounds)
    metrics.refresh()
    try:
        http = serve_metrics(metrics, port=cfg.metrics_port) if cfg.metrics_port else None
    except OSError as exc:
        raise DeployError(f"{cfg.path}: [server] `metrics-port` {cfg.metrics_port} on 127.0.0.1 "
                          f"cannot be used ({exc.strerror}); choose another or 0 for "
                          "none") from None
    token = uuid.uuid4().hex
    stack = contextlib.ExitStack()
    stack.enter_context(interrupt_on_terminate())
    try:
        with tempfile.TemporaryDirectory(prefix="confide-server-") as tmp:
            work = Path(tmp)
            home = work / "flwr-home"
            home.mkdir()
            env = _env(home, token)
            app_dir = stage_app(work / "app", rc.to_mapping())
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n'
                f'address = "{_connect_host(cfg.address)}:{cfg.control_port}"\n'
                f'root-certificates = {toml_value(str(cfg.ca_cert))}\n', encoding="utf-8")
            with _superlink(cfg, work, env, token):
                _register_sites(cfg, env)
                return _follow(cfg, rc, app_dir, env, work, token, metrics, out)
    except KeyboardInterrupt:
        logger.warning("interrupted: stopped the SuperLink and the run; resume with "
                       "`confide server --config %s --resume %s`", cfg.path, cfg.out_dir)
        return 130
    finally:
        stack.close()
        if http is not None:
            http.shutdown()
            http.server_close()


def _follow(cfg: ServerDeployConfig, rc: Any, app_dir: Path, env: dict[str, str],
            work: Path, token: str, metrics: RunMetrics, out: TextIO) -> int:
    args = [find_bin("flwr"), "run", str(app_dir), _CONNECTION, "--stream"]
    proc = subprocess.Popen(args, env=env, cwd=str(work), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    start = time.monotonic()
    last_refresh = 0.0
    display = RunProgress(total_rounds=rc.num_server_rounds, stream=out)
    try:
        display.__enter__()
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                display.feed(line)
                m = _ROUND.search(line)
                if m:
                    metrics.set_round(int(m.group(1)))
            if time.monotonic() - last_refresh > 1.0:
                last_refresh = time.monotonic()
                for rec, part in metrics.refresh():
                    _log_round(rec, part)
            if time.monotonic() - start > cfg.run_timeout:
                raise DeployError(f"waited {cfg.run_timeout:.0f} s ([server] `run-timeout`) for "
                                  f"the run to finish; last completed round "
                                  f"{metrics.current_round}")
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise DeployError("waited 30 s for `flwr run` to exit after its log stream "
                              "ended") from None
    finally:
        display.close()
        kill_tree(proc, token, timeout=5)
    for rec, part in metrics.refresh():
        _log_round(rec, part)
    folder = RunFolder(cfg.out_dir)
    try:
        state: RunState | None = folder.read_state()
    except RunFolderError:
        state = None
    if code != 0 or state is None or state.status != RUN_COMPLETED:
        logger.error("the run did not complete (flwr exit %s, state %s, last round %s); resume "
                     "with `confide server --config %s --resume %s`", code,
                     state.status if state else "missing",
                     state.completed_round if state else "-", cfg.path, cfg.out_dir)
        return 1
    metrics.completed = True
    logger.info("run completed: %d rounds; adapter %s, metrics %s", state.completed_round,
                folder.final_adapter, folder.metrics_path)
    return 0
