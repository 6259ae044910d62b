"""A site's deployment configuration file, ``site.toml`` (``confide client``).

Validated on load (the rules of :mod:`protocol.deploy_config`): unknown keys, wrong types,
out-of-range values and missing files are refused with an error that names the file, the
table, the key and the value. Relative paths are taken relative to the file's directory.

``site.toml``::

    [site]
    name = "bank"
    superlink = "127.0.0.1:9092"   # the coordinator's Fleet API
    ca-cert = "ca.crt"             # verifies the coordinator's certificate
    auth-key = "auth.key"          # SuperNode auth private key (ECDSA, OpenSSH format)
    data-path = "/srv/bank/data"   # file or folder of the site's records
    state-dir = "state"            # privacy ledger and identity.key
    enrolment = "enrolment.json"   # this site's copy of the enrolment list
    model = ""                     # base model here (path or hub id; "": the coordinator's)
    hf-cache = ""                  # Hugging Face cache directory ("": default)
    device = "auto"                # auto | cpu | cuda
    precision = "auto"             # auto (bf16 autocast on a CUDA GPU with bf16) | fp32 | bf16
    gradient-checkpointing = false # recompute activations in backward (larger models)
    base-quantization = "none"     # none | 4bit (bitsandbytes NF4 base weights, CUDA only)
    runtime-port = 0               # local port of the SuperNode runtime API (0: any free)
    connect-timeout = 600.0        # give up after this long without the coordinator (0: never)
    activation-grace = 30.0        # retry a refused key this long (not registered yet?)
    worker = true                  # keep model, data and DP stack in a resident worker
    worker-wait = 120.0            # how long a message waits for a (re)starting worker
    executor = true                # run each message's ClientApp in the SuperNode's process
    work-ahead = true              # with the worker: train from a round's first stage on
    poll-interval = 0.1            # seconds between the SuperNode's checks (Flower's own: 3)

    [privacy]                # the site's own DP policy (privacy.policy.SitePrivacyPolicy keys)
    budget-epsilon = 8.0

    [secagg]                 # the site's own caps on secure-aggregation rounds (optional)
    max-cohort = 10000       # most sites a round may sample
    max-degree = 64          # most masking neighbours (a complete graph: cohort - 1)
    min-threshold = 2        # fewest contributors a round's threshold may ask for
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.policy import PolicyError, SitePrivacyPolicy
from privacy.secagg import SiteLimits
from protocol.config import BASE_QUANTIZATIONS, DEVICES, PRECISIONS
from protocol.deploy_config import DeployConfigError, Table, no_other_tables, read_toml
from protocol.enrolment import SITE_NAME
from protocol.model_ref import ModelError, resolve_model

__all__ = ["COMPUTE_KEYS", "NODE_ENROLMENT", "NODE_WORKER_SOCKET", "NODE_WORKER_WAIT",
           "NODE_WORK_AHEAD", "POLL_INTERVAL_S", "WORKER_WAIT_S", "SiteDeployConfig",
           "load_site_config", "worker_dir", "worker_socket_path"]

#: node-config key of the site's own copy of the enrolment list; a site that has one answers
#: only under secure aggregation (client.handlers.requires_secure_aggregation)
NODE_ENROLMENT = "secagg-enrolment"

#: ``[site]`` keys of the site's own compute settings, passed on as node-config keys of the
#: same name (client.compute.site_compute reads them over the run config's)
COMPUTE_KEYS = ("precision", "gradient-checkpointing", "base-quantization")

#: node-config key of the site's resident worker's Unix-domain socket: with it, the per-message
#: ClientApp only relays each message to that worker (client.relay); without it (simulation,
#: tests) the ClientApp runs the handlers itself
NODE_WORKER_SOCKET = "worker-socket"
#: node-config key: seconds a relayed message waits for a (re)starting worker
NODE_WORKER_WAIT = "worker-wait"
#: default of `worker-wait` (site.toml) and of a node config without it
WORKER_WAIT_S = 120.0

#: node-config key (``work-ahead`` in site.toml, with the worker): false runs a secure round's
#: local work at its masked-input stage instead of from its advertise-keys stage on
NODE_WORK_AHEAD = "work-ahead"

#: default of `poll-interval` (site.toml): the longest the site's SuperNode sleeps between
#: pulls and checks (client.supernode_process); Flower 1.39's own sleeps are 3 s and 0.5 s
POLL_INTERVAL_S = 0.1

#: a Unix-domain socket path must fit ``sockaddr_un.sun_path`` (108 bytes on Linux)
_MAX_SOCKET_PATH = 100


def worker_dir(state_dir: Path) -> Path:
    """Return the worker's own folder in the state directory (mode 0700): its journal."""
    return state_dir / "worker"


def worker_socket_path(state_dir: Path) -> Path:
    """Where the site's worker listens: ``<state-dir>/worker/worker.sock``.

    When that path is too long for a Unix-domain socket, a private folder of this user in
    the temporary directory, named by a hash of the state directory, holds it instead (the
    worker creates it with mode 0700 and refuses one it does not own).
    """
    sock = worker_dir(state_dir) / "worker.sock"
    if len(os.fsencode(str(sock))) <= _MAX_SOCKET_PATH:
        return sock
    tag = hashlib.sha256(os.fsencode(str(state_dir.resolve()))).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"confide-{os.getuid()}-{tag}" / "worker.sock"


@dataclass(frozen=True)
class SiteDeployConfig:
    """What ``confide client`` needs: coordinator address, TLS and auth files, the node config."""

    path: Path
    name: str
    superlink: str
    ca_cert: Path | None
    auth_key: Path
    data_path: Path
    state_dir: Path
    enrolment: Path | None
    model: str
    hf_cache: Path | None
    device: str
    runtime_port: int
    connect_timeout: float
    activation_grace: float = 30.0
    privacy: Mapping[str, Any] = field(default_factory=dict)
    #: the ``[secagg]`` caps as node-config keys (``secagg-max-cohort`` ...), when set
    secagg_limits: Mapping[str, int] = field(default_factory=dict)
    #: run the handlers in a resident worker (``worker``; off: one fresh process per message)
    worker: bool = True
    worker_wait: float = WORKER_WAIT_S
    #: run each message's ClientApp in the SuperNode's process (``executor``; needs the worker)
    executor: bool = True
    poll_interval: float = POLL_INTERVAL_S
    #: with the worker, begin a secure round's local work at its first stage (``work-ahead``)
    work_ahead: bool = True
    #: the site's compute settings (:data:`COMPUTE_KEYS`); the device is :attr:`device`
    compute: Mapping[str, Any] = field(default_factory=dict)

    @property
    def worker_socket(self) -> Path | None:
        """The worker's socket, or ``None`` when the site runs without a worker."""
        return worker_socket_path(self.state_dir) if self.worker else None

    def node_config(self) -> dict[str, Any]:
        """Build the SuperNode's node config (the ClientApp's ``context.node_config``)."""
        out: dict[str, Any] = {
            "site-name": self.name, "data-path": str(self.data_path),
            "state-dir": str(self.state_dir), "device": self.device,
        }
        if self.enrolment is not None:
            out[NODE_ENROLMENT] = str(self.enrolment)
        if self.model:
            out["model"] = self.model
        out.update(self.compute)
        if self.worker_socket is not None:
            out[NODE_WORKER_SOCKET] = str(self.worker_socket)
            out[NODE_WORKER_WAIT] = self.worker_wait
            out[NODE_WORK_AHEAD] = self.work_ahead
        out.update({f"dp-{k}": v for k, v in self.privacy.items()})
        out.update(self.secagg_limits)
        return out


def load_site_config(path: str | Path, *, check_files: bool = True) -> SiteDeployConfig:
    """Read and validate ``site.toml``."""
    p = Path(path).expanduser().resolve()
    doc = read_toml(p)
    no_other_tables(p, doc, ("site", "privacy", "secagg"))
    s = Table(p, "site", doc)
    name = s.text("name")
    if not SITE_NAME.match(name):
        raise s.error("name", "must be letters, digits, '.', '_' or '-'")
    superlink = s.text("superlink", "127.0.0.1:9092")
    host, _, port = superlink.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise s.error("superlink", "must be HOST:PORT")
    ca_text = s.text("ca-cert", "")
    s.used.discard("ca-cert")
    ca = s.file("ca-cert", exists=check_files) if ca_text else None
    auth = s.file("auth-key", exists=check_files)
    if check_files and not auth.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        raise DeployConfigError(f"{s.where('auth-key')}: {str(auth)!r} is not an OpenSSH private "
                                "key (Flower 1.39 needs ECDSA in OpenSSH format, e.g. from "
                                "`confide keys` or `ssh-keygen -t ecdsa -b 384 -N ''`)")
    data = s.file("data-path", exists=check_files)
    state = s.file("state-dir", exists=False)
    enrol_text = s.text("enrolment", "")
    s.used.discard("enrolment")
    enrolment = s.file("enrolment", exists=check_files) if enrol_text else None
    if check_files and enrolment is not None and not (state / "identity.key").is_file():
        raise DeployConfigError(f"{s.where('state-dir')}: no identity.key in {str(state)!r} "
                                "(secure aggregation needs the site's Ed25519 identity key; "
                                "`confide keys` makes one)")
    model = s.text("model", "")
    cache_text = s.text("hf-cache", "")
    s.used.discard("hf-cache")
    cache = s.file("hf-cache", exists=False) if cache_text else None
    device = s.text("device", "auto")
    if device not in DEVICES:
        raise s.error("device", f"must be one of {DEVICES}")
    compute = _compute(s, device, check_machine=check_files)
    runtime_port = s.integer("runtime-port", 0, lo=0, hi=65535)
    timeout = s.number("connect-timeout", 600.0)
    grace = s.number("activation-grace", 30.0)
    worker, executor, ahead = (_flag(s, key) for key in ("worker", "executor", "work-ahead"))
    if executor and not worker and "executor" in s.data:
        raise s.error("executor", "must be false when `worker` is false (the executor relays "
                      "each message to the site's worker)")
    worker_wait = s.number("worker-wait", WORKER_WAIT_S, lo=1.0)
    poll = s.number("poll-interval", POLL_INTERVAL_S, lo=0.01, hi=60.0)
    s.finish()
    pr = Table(p, "privacy", doc, required=False)
    if pr.data:
        try:
            SitePrivacyPolicy.from_mapping(pr.data)
        except PolicyError as exc:
            raise DeployConfigError(f"{p}: [privacy] {exc}") from None
    if model:
        try:
            model = resolve_model(model) if model != "embedded" else model
        except ModelError as exc:
            raise DeployConfigError(f"{s.where('model')}: {exc}") from None
    return SiteDeployConfig(p, name, superlink, ca, auth, data, state, enrolment, model, cache,
                            device, runtime_port, timeout, grace, dict(pr.data),
                            _secagg_limits(p, doc), worker, worker_wait, executor and worker,
                            poll, ahead, compute)


def _flag(s: Table, key: str, default: bool = True) -> bool:
    value = s.data.get(key, default)
    s.used.add(key)
    if type(value) is not bool:
        raise s.error(key, "must be true or false")
    return value


def _compute(s: Table, device: str, *, check_machine: bool) -> dict[str, Any]:
    """Read the ``[site]`` compute keys; with ``check_machine``, check them against this one.

    The machine check (CUDA present, bfloat16, bitsandbytes) imports torch, so it runs only
    for the settings that need it (``precision = "bf16"``, 4-bit weights).
    """
    precision = s.text("precision", "auto")
    if precision not in PRECISIONS:
        raise s.error("precision", f"must be one of {PRECISIONS}")
    s.used.add("gradient-checkpointing")
    checkpointing = s.data.get("gradient-checkpointing", False)
    if type(checkpointing) is not bool:
        raise s.error("gradient-checkpointing", "must be true or false")
    quantization = s.text("base-quantization", "none")
    if quantization not in BASE_QUANTIZATIONS:
        raise s.error("base-quantization", f"must be one of {BASE_QUANTIZATIONS}")
    if quantization == "4bit" and device == "cpu":
        raise s.error("base-quantization", "must be 'none' when `device` is 'cpu' (4-bit "
                      "base weights need CUDA)")
    if check_machine and (precision == "bf16" or quantization == "4bit"):
        from client.compute import resolve_compute

        try:
            resolve_compute(device=device, precision=precision,
                            gradient_checkpointing=checkpointing,
                            base_quantization=quantization)
        except ModelError as exc:
            raise DeployConfigError(f"{s.path}: [site] {exc}") from None
    return dict(zip(COMPUTE_KEYS, (precision, checkpointing, quantization), strict=True))


def _secagg_limits(p: Path, doc: Mapping[str, Any]) -> dict[str, int]:
    """Read the ``[secagg]`` table's caps, checked as :class:`SiteLimits` checks them."""
    t = Table(p, "secagg", doc, required=False)
    if not t.data:
        return {}
    default = SiteLimits()
    present = set(t.data)
    values = {key: t.integer(key, getattr(default, key.replace("-", "_")), lo=lo, hi=10**6)
              for key, lo in (("max-cohort", 3), ("max-degree", 2), ("min-threshold", 2))}
    t.finish()
    given = {k: v for k, v in values.items() if k in present}
    try:
        SiteLimits(**{k.replace("-", "_"): v for k, v in given.items()})
    except ValueError as exc:
        raise DeployConfigError(f"{p}: [secagg] {exc}") from None
    return {f"secagg-{k}": v for k, v in given.items()}
