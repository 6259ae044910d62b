"""``confide client``: the site agent, a supervised Flower SuperNode.

Starts the site's resident worker (:mod:`client.worker`: model, data and DP stack loaded
once per run; restarted if it dies), then ``flower-supernode`` over gRPC with TLS (the
site's copy of the CA certificate) and SuperNode authentication (the site's ECDSA key),
with the site's node config: data path, state directory (privacy ledger, identity key),
privacy policy, model, device, the worker's socket. While the coordinator is unreachable
it retries with exponential backoff, up to ``connect-timeout`` seconds without a
connection; a certificate that does not verify or a key the coordinator has not enrolled
ends the agent at once with an error that says so. The SuperNode runs through the site's
own process (:func:`supernode_command`, :mod:`client.supernode_process`): with the worker it
runs each message's ClientApp in-process and relays the message to the worker; without, a
fresh process per message runs it (:mod:`client.clientapp_process`). Either way it is the
site's installed ClientApp, never the code of the FAB the coordinator submitted.

``export_ledger`` verifies the hash chain of the site's privacy ledger and writes a copy, with
a verified copy of its site-level ledger beside it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from client.clientapp_process import install_shim
from client.deploy_config import SiteDeployConfig
from protocol.procs import flower_env, free_port, kill_tree, toml_value

if TYPE_CHECKING:
    from client.worker import WorkerSupervisor

__all__ = ["AgentError", "export_ledger", "node_config_arg", "run_agent", "site_level_export_path",
           "supernode_command"]

logger = logging.getLogger("confide.client")

EXIT_REFUSED = 3  # wrong certificate or unenrolled key: retrying cannot help
EXIT_UNREACHABLE = 4  # the coordinator stayed unreachable for connect-timeout seconds
#: A SuperLink keeps a node "online" for 2 heartbeats (2 x 30 s) after it was last heard
#: from, and refuses to activate its key again meanwhile, with the same error as for an
#: unenrolled key. A site that was connected before retries for this long after a crash.
ACTIVATION_GRACE_S = 75.0
_ONLINE_MARK = "supernode-online.json"


class AgentError(RuntimeError):
    """The site agent cannot run (refused by the coordinator, or gave up waiting for it)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def node_config_arg(node_config: dict[str, Any]) -> str:
    """``--node-config`` text: space-separated ``key=value`` with TOML values."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in sorted(node_config.items()))


def _reachable(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host.strip("[]"), int(port)),
                                                                timeout):
        return True
    return False


def _classify(tail: str, cfg: SiteDeployConfig) -> AgentError | None:
    """Recognise a refusal that retrying cannot fix in the SuperNode's last output lines."""
    if "CERTIFICATE_VERIFY_FAILED" in tail or "handshake failed" in tail.lower():
        where = f"`ca-cert` {cfg.ca_cert}" if cfg.ca_cert else "the system CA bundle (no `ca-cert`)"
        return AgentError(
            f"site {cfg.name}: the coordinator's TLS certificate at {cfg.superlink} does not "
            f"verify against {where} ({cfg.path}); ask the coordinator for its CA certificate",
            EXIT_REFUSED)
    if _activation_refused(tail):
        return AgentError(
            f"site {cfg.name}: the coordinator at {cfg.superlink} refused this site's key "
            f"`auth-key` {cfg.auth_key}: it is not enrolled there (send "
            f"{cfg.auth_key.with_suffix('.pub').name} to the coordinator operator to add under "
            "[sites] in server.toml)", EXIT_REFUSED)
    if "[code: 2001]" in tail:
        return AgentError(f"site {cfg.name}: the coordinator requires SuperNode authentication "
                          f"and refused the connection ({cfg.superlink})", EXIT_REFUSED)
    if "Exit Code: 302" in tail or "Exit Code: 303" in tail:
        return AgentError(f"site {cfg.name}: flower-supernode refused `auth-key` {cfg.auth_key}: "
                          f"{tail.strip().splitlines()[-1] if tail.strip() else ''}", EXIT_REFUSED)
    return None


def _activation_refused(tail: str) -> bool:
    return "[code: 2004]" in tail or "Failed to activate SuperNode" in tail


def _was_online(cfg: SiteDeployConfig) -> bool:
    """Whether this site's SuperNode was connected to this coordinator before."""
    import json

    try:
        doc = json.loads((cfg.state_dir / _ONLINE_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("superlink") == cfg.superlink


def _mark_online(cfg: SiteDeployConfig, tail: str) -> None:
    from protocol.io import atomic_write_json

    node = next((line.split("SuperNode ID:")[1].strip() for line in tail.splitlines()
                 if "SuperNode ID:" in line), "")
    atomic_write_json(cfg.state_dir / _ONLINE_MARK, {"superlink": cfg.superlink, "node_id": node,
                                                     "at": time.time()})


def _env(cfg: SiteDeployConfig, token: str) -> dict[str, str]:
    env = flower_env(token)
    # each message's ClientApp process runs the site's installed code, not the FAB's
    shim = install_shim(cfg.state_dir)
    env["PATH"] = os.pathsep.join([str(shim.parent), env["PATH"]])
    env.update({"CONFIDE_SITE_LOG": "1", "FLWR_HOME": str(cfg.state_dir / "flwr-home")})
    if cfg.hf_cache is not None:
        env["HF_HOME"] = str(cfg.hf_cache)
    return env


def supernode_command(cfg: SiteDeployConfig, flower_args: list[str]) -> list[str]:
    """Return the site's SuperNode command: Flower's, through :mod:`client.supernode_process`.

    Its sleeps are capped at the site's ``poll-interval``; with the executor on (and the
    worker), each message's ClientApp runs in that process, not in a fresh one.
    """
    from client.deploy_config import worker_dir

    ours = ["--poll", f"{cfg.poll_interval:g}"]
    if cfg.executor and cfg.worker:
        ours += ["--executor", str(worker_dir(cfg.state_dir))]
    return [sys.executable, "-m", "client.supernode_process", *ours, "--", *flower_args]


def _supernode_args(cfg: SiteDeployConfig, port: int, max_wait: float) -> list[str]:
    args = ["--grpc-rere", "--superlink", cfg.superlink,
            "--auth-supernode-private-key", str(cfg.auth_key), "--host", "127.0.0.1",
            "--port", str(port), "--node-config", node_config_arg(cfg.node_config())]
    if cfg.ca_cert is not None:
        args += ["--root-certificates", str(cfg.ca_cert)]
    if max_wait > 0:
        args += ["--max-wait-time", f"{max_wait:g}"]
    return supernode_command(cfg, args)


def _pump(stream: TextIO, out: TextIO, tail: collections.deque[str], prefix: str,
          gave_up: threading.Event, cfg: SiteDeployConfig, connected: threading.Event) -> None:
    for line in stream:
        tail.append(line)
        if "SuperNode ID:" in line:
            connected.set()
            _mark_online(cfg, line)
        if "Giving up reconnection" in line:
            gave_up.set()  # flower-supernode 1.39 may hang after this: the agent restarts it
        out.write(prefix + line)
        out.flush()


def _wait_supernode(proc: subprocess.Popen[str], gave_up: threading.Event) -> int | None:
    """Wait for the SuperNode's exit code; ``None`` when it gave up reconnecting and was stopped."""
    while True:
        code = proc.poll()
        if code is not None:
            return code
        if gave_up.wait(timeout=0.5):
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(timeout=5)
            return None


def _start_worker(cfg: SiteDeployConfig, out: TextIO) -> WorkerSupervisor | None:
    """Start the site's resident worker (``worker = true``, the default) before the SuperNode.

    It has its own run token: restarting the SuperNode (``kill_tree`` of its token) leaves
    the worker, and the model it holds, running.
    """
    if cfg.worker_socket is None:
        return None
    from client.deploy_config import worker_dir
    from client.worker import WorkerSupervisor

    worker = WorkerSupervisor(cfg.name, cfg.worker_socket, worker_dir(cfg.state_dir),
                              env=_env(cfg, uuid.uuid4().hex), out=out, cwd=cfg.state_dir)
    try:
        worker.start()
    except OSError as exc:
        raise AgentError(f"site {cfg.name}: cannot start its worker (`worker = true` in "
                         f"{cfg.path}): {exc}", 1) from None
    return worker


def run_agent(cfg: SiteDeployConfig, *, out: TextIO = sys.stdout, max_attempts: int = 0) -> int:
    """Run the site's SuperNode until interrupted; retry while the coordinator is unreachable.

    Raises :class:`AgentError` on a refusal, or after ``connect-timeout`` seconds without
    reaching the coordinator. Returns 130 when interrupted (Ctrl-C or SIGTERM).
    """
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    policy = ", ".join(f"{k}={v}" for k, v in cfg.privacy.items()) or "none (trains without DP)"
    logger.info("site %s: coordinator %s, data %s, state %s, device %s, privacy policy: %s",
                cfg.name, cfg.superlink, cfg.data_path, cfg.state_dir, cfg.device, policy)
    token = uuid.uuid4().hex
    worker: WorkerSupervisor | None = None
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.signal(signal.SIGTERM, _terminate)
        # Ctrl-C stops us even when started as a background job of a non-interactive shell,
        # which starts its children with SIGINT ignored (Python then never raises on it)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    backoff, attempts = 1.0, 0
    unreachable_since: float | None = None
    refused_since: float | None = None
    try:
        worker = _start_worker(cfg, out)
        while True:
            if not _reachable(cfg.superlink):
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                waited = now - unreachable_since
                if cfg.connect_timeout and waited >= cfg.connect_timeout:
                    raise AgentError(f"site {cfg.name}: waited {cfg.connect_timeout:.0f} s "
                                     f"(`connect-timeout`) for the coordinator at {cfg.superlink}; "
                                     "it never answered", EXIT_UNREACHABLE)
                logger.warning("site %s: coordinator %s unreachable; retrying in %.0f s",
                               cfg.name, cfg.superlink, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            attempts += 1
            port = cfg.runtime_port or free_port()
            max_wait = min(cfg.connect_timeout, 60.0) if cfg.connect_timeout else 60.0
            logger.info("site %s: starting flower-supernode (attempt %d, TLS %s, runtime API "
                        "127.0.0.1:%d)", cfg.name, attempts,
                        "with CA " + str(cfg.ca_cert) if cfg.ca_cert else "with system CAs", port)
            proc = subprocess.Popen(_supernode_args(cfg, port, max_wait), env=_env(cfg, token),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1, start_new_session=True, cwd=str(cfg.state_dir))
            tail: collections.deque[str] = collections.deque(maxlen=60)
            gave_up, connected = threading.Event(), threading.Event()
            assert proc.stdout is not None
            pump = threading.Thread(target=_pump, args=(proc.stdout, out, tail, f"[{cfg.name}] ",
                                                        gave_up, cfg, connected),
                                    daemon=True)
            pump.start()
            try:
                code = _wait_supernode(proc, gave_up)
                pump.join(timeout=5)
            finally:
                kill_tree(proc, token, timeout=10)
            text = "".join(tail)
            refusal = _classify(text, cfg)
            if refusal is not None and _activation_refused(text):
                # a coordinator that has not registered the keys yet, or that still marks
                # this key online right after a crash, refuses like for an unenrolled key
                before = _was_online(cfg)
                # a coordinator registers the keys a few seconds after its SuperLink opens:
                # a site never connected retries for `activation-grace` (site.toml) first
                grace = max(ACTIVATION_GRACE_S, cfg.activation_grace) if before \
                    else cfg.activation_grace
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since < grace:
                    why = ("it was connected before: the coordinator may still mark it online "
                           "after a crash" if before else "the coordinator may not have "
                           "registered the sites' keys yet")
                    logger.warning("site %s: the coordinator refused to activate this site's "
                                   "key (%s); retrying for up to %.0f s", cfg.name, why, grace)
                    time.sleep(5.0)
                    continue
            if refusal is not None:
                raise refusal
            refused_since = None
            if connected.is_set():
                unreachable_since, backoff = None, 1.0  # it had connected: a fresh window
            unreachable_since = unreachable_since or time.monotonic()
            if max_attempts and attempts >= max_attempts:
                raise AgentError(f"site {cfg.name}: flower-supernode exited with {code} "
                                 f"{attempts} times", EXIT_UNREACHABLE)
            if cfg.connect_timeout and time.monotonic() - unreachable_since >= cfg.connect_timeout:
                raise AgentError(f"site {cfg.name}: waited {cfg.connect_timeout:.0f} s "
                                 f"(`connect-timeout`) to reconnect to the coordinator at "
                                 f"{cfg.superlink}", EXIT_UNREACHABLE)
            logger.warning("site %s: flower-supernode exited with %s (lost the coordinator); "
                           "restarting in %.0f s", cfg.name, code, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
    except KeyboardInterrupt:
        logger.info("site %s: stopped", cfg.name)
        return 130
    finally:
        if worker is not None:
            worker.stop()
        if main:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)


def site_level_export_path(target: Path) -> Path:
    """Where ``export_ledger`` writes the site-level ledger beside the ledger copy ``target``.

    ``site-level-ledger.json`` beside a copy named ``privacy-ledger.jsonl`` (so that a copy into
    ``RUN_DIR/sites/<site>/`` is where the audit reads it), else ``<stem>.site-level-ledger.json``.
    """
    from privacy.ddg.site_ledger import SITE_LEVEL_LEDGER
    from privacy.ledger import LEDGER_FILENAME

    if target.name == LEDGER_FILENAME:
        return target.with_name(SITE_LEVEL_LEDGER)
    return target.with_name(f"{target.stem}.{SITE_LEVEL_LEDGER}")


def _export_site_level(cfg: SiteDeployConfig, target: Path) -> Path | None:
    """Verify the site-level ledger (when the site has one) and copy it atomically."""
    from privacy.ddg.site_ledger import SITE_LEVEL_LEDGER, SiteLevelLedger
    from protocol.io import atomic_write_bytes

    src = cfg.state_dir / SITE_LEVEL_LEDGER
    if not src.is_file():
        return None
    raw = src.read_bytes()
    try:
        SiteLevelLedger(cfg.state_dir)  # validates every charge's record
    except ValueError as exc:
        raise AgentError(f"site {cfg.name}: the site-level ledger failed verification: {exc}",
                         1) from None
    if src.read_bytes() != raw:
        raise AgentError(f"site {cfg.name}: the site-level ledger {src} changed while it was "
                         "exported; run the export again", 1)
    out = site_level_export_path(target)
    atomic_write_bytes(out, raw)
    return out


def export_ledger(cfg: SiteDeployConfig, dest: Path) -> tuple[int, str, Path]:
    """Verify the site's ledgers and write copies to ``dest``; (entries, head hash, path).

    The privacy ledger's hash chain is verified and the file copied to ``dest`` (a folder:
    ``dest/privacy-ledger.jsonl``); the site's site-level ledger, when it has one, is verified
    and copied beside it (:func:`site_level_export_path`). Both copies are written atomically,
    byte for byte, so the audit can check them against what the site signed.
    """
    from privacy.ledger import LEDGER_FILENAME, PrivacyLedger
    from protocol.io import atomic_write_bytes

    ledger = PrivacyLedger(cfg.state_dir)  # raises LedgerError on a broken chain
    src = cfg.state_dir / LEDGER_FILENAME
    if not src.exists():
        raise AgentError(f"site {cfg.name}: no privacy ledger at {src} (the site has not trained "
                         "with DP yet)", 1)
    target = dest / LEDGER_FILENAME if dest.is_dir() else dest
    raw = src.read_bytes()
    if raw != ledger._raw:
        raise AgentError(f"site {cfg.name}: the ledger {src} changed while it was exported; "
                         "run the export again", 1)
    site_level = _export_site_level(cfg, target)
    atomic_write_bytes(target, raw)
    if site_level is not None:
        logger.info("site %s: site-level ledger verified; copy at %s", cfg.name, site_level)
    return len(ledger), ledger.head(), target
