"""Deployment configuration files (TOML): ``server.toml`` (coordinator), ``site.toml`` (site).

Both are validated on load: unknown keys, wrong types, out-of-range values and missing
files are refused with an error that names the file, the table, the key and the value.
Relative paths are taken relative to the configuration file's own directory.

``server.toml``::

    [server]                 # where and how the SuperLink runs
    address = "127.0.0.1"    # interface for the Fleet API (sites) and the control API
    fleet-port = 9092        # sites connect here (gRPC, TLS)
    control-port = 9093      # `flwr` and the ServerApp (HTTPS, loopback)
    metrics-port = 9400      # Prometheus text format on 127.0.0.1 (0: off)
    ca-cert = "server/ca.crt"
    cert = "server/server.crt"
    key = "server/server.key"
    enrolment = "enrolment.json"   # identity public keys of the sites (secure aggregation)
    out-dir = "runs/deploy"        # RUN_DIR
    startup-timeout = 60.0         # seconds to wait for the SuperLink to listen
    run-timeout = 86400.0          # seconds the whole run may take

    [sites]                  # enrolled sites: name -> SuperNode auth public key (OpenSSH)
    bank = "server/supernodes/bank.pub"

    [run]                    # the run configuration (protocol.config.RunConfig keys)
    num-server-rounds = 3

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
    runtime-port = 0               # local port of the SuperNode runtime API (0: any free)
    connect-timeout = 600.0        # give up after this long without the coordinator (0: never)
    activation-grace = 30.0        # retry a refused key this long (not registered yet?)

    [privacy]                # the site's own DP policy (privacy.policy.SitePrivacyPolicy keys)
    budget-epsilon = 8.0
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.config import ConfigError, RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli (a Flower dependency) is the same parser
    import tomli as tomllib

__all__ = ["DeployConfigError", "ServerDeployConfig", "SiteDeployConfig", "load_server_config",
           "load_site_config"]

#: run-config keys the server command sets itself (from [server]) or that make no sense here
_RUN_RESERVED = {
    "out-dir": "set `out-dir` in [server]",
    "secagg-enrolment": "set `enrolment` in [server]",
    "resume": "pass --resume RUN_DIR to `confide server`",
    "site-dp-policy": "each site sets its own policy in the [privacy] table of its site.toml",
    "sites-state-dir": "each site sets `state-dir` in its site.toml",
    "data-dir": "each site sets `data-path` in its site.toml",
    "faults": "fault injection is for simulations",
}
_DEVICES = ("auto", "cpu", "cuda")


class DeployConfigError(ValueError):
    """A deployment configuration file is unreadable or invalid."""


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DeployConfigError(f"cannot read configuration file {str(path)!r}: "
                                f"{exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeployConfigError(f"{path}: not valid TOML: {exc}") from None


class _Table:
    """Typed reads from one TOML table; every error names the file, table and key."""

    def __init__(self, path: Path, name: str, doc: Mapping[str, Any], *, required: bool = True):
        self.path, self.name = path, name
        value = doc.get(name)
        if value is None:
            if required:
                raise DeployConfigError(f"{path}: missing table [{name}]")
            value = {}
        if not isinstance(value, dict):
            raise DeployConfigError(f"{path}: `{name}` must be a table [{name}], got {value!r}")
        self.data: dict[str, Any] = value
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}: [{self.name}] `{key}`"

    def error(self, key: str, rule: str) -> DeployConfigError:
        value = self.data.get(key)
        return DeployConfigError(f"{self.where(key)} {rule}, got {value!r}")

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise DeployConfigError(f"{self.path}: [{self.name}] is missing `{key}`")
            return default
        return self.data[key]

    def str(self, key: str, default: Any = None) -> str:
        value = self._get(key, default if default is not None else _REQUIRED)
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def int(self, key: str, default: int, *, lo: int, hi: int) -> int:
        value = self._get(key, default)
        if type(value) is not int:
            raise self.error(key, "must be an integer")
        if not lo <= value <= hi:
            raise self.error(key, f"must be in [{lo}, {hi}]")
        return value

    def float(self, key: str, default: float, *, lo: float = 0.0) -> float:
        value = self._get(key, default)
        if type(value) not in (int, float):
            raise self.error(key, "must be a number")
        if not value >= lo:
            raise self.error(key, f"must be >= {lo:g}")
        return float(value)

    def file(self, key: str, default: Any = None, *, is_dir: bool = False,
             exists: bool = True) -> Path:
        text = self.str(key, default)
        if not text.strip():
            raise self.error(key, "must be a path")
        p = Path(text).expanduser()
        p = p if p.is_absolute() else (self.path.parent / p)
        p = p.resolve()
        if exists and not p.exists():
            raise DeployConfigError(f"{self.where(key)}: file not found: {str(p)!r}")
        if exists and is_dir and not p.is_dir():
            raise DeployConfigError(f"{self.where(key)}: not a directory: {str(p)!r}")
        return p

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            key = unknown[0]
            known = ", ".join(sorted(self.used))
            raise DeployConfigError(f"{self.path}: unknown key `{key}` in [{self.name}] (value "
                                    f"{self.data[key]!r}); known keys: {known}")


_REQUIRED = object()


def _no_other_tables(path: Path, doc: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key, value in doc.items():
        if key not in allowed:
            kind = "table" if isinstance(value, dict) else "key"
            raise DeployConfigError(f"{path}: unknown top-level {kind} `{key}` (value {value!r}); "
                                    f"allowed tables: {', '.join(f'[{a}]' for a in allowed)}")


def _host(t: _Table, key: str, default: str) -> str:
    value = t.str(key, default)
    if not value or any(c.isspace() or c in "/:" for c in value):
        raise t.error(key, "must be a host name or IPv4 address")
    return value


@dataclass(frozen=True)
class ServerDeployConfig:
    """What ``confide server`` needs: SuperLink endpoints, TLS files, enrolled sites, the run."""

    path: Path
    address: str
    fleet_port: int
    control_port: int
    metrics_port: int
    ca_cert: Path
    cert: Path
    key: Path
    enrolment: Path | None
    out_dir: Path
    startup_timeout: float
    run_timeout: float
    sites: dict[str, Path]
    run: Mapping[str, Any] = field(default_factory=dict)

    def run_config(self, *, resume: bool = False) -> RunConfig:
        """The validated RunConfig of this deployment (paths filled in from [server])."""
        mapping = dict(self.run)
        mapping["out-dir"] = str(self.out_dir)
        mapping["resume"] = resume
        if self.enrolment is not None:
            mapping["secagg-enrolment"] = str(self.enrolment)
        mapping.setdefault("min-sites", min(len(self.sites), 3))  # secagg: a cohort of >= 3
        try:
            return RunConfig.from_mapping(mapping)
        except ConfigError as exc:
            raise DeployConfigError(f"{self.path}: [run] {exc}") from None


def load_server_config(path: str | Path) -> ServerDeployConfig:
    """Read and validate ``server.toml``."""
    p = Path(path).expanduser().resolve()
    doc = _read(p)
    _no_other_tables(p, doc, ("server", "sites", "run"))
    s = _Table(p, "server", doc)
    address = _host(s, "address", "127.0.0.1")
    fleet = s.int("fleet-port", 9092, lo=1, hi=65535)
    control = s.int("control-port", 9093, lo=1, hi=65535)
    metrics = s.int("metrics-port", 9400, lo=0, hi=65535)
    if len({fleet, control, metrics} - {0}) < len([x for x in (fleet, control, metrics) if x]):
        raise DeployConfigError(f"{p}: [server] `fleet-port`, `control-port` and `metrics-port` "
                                f"must differ, got {fleet}, {control}, {metrics}")
    ca, cert, key = s.file("ca-cert"), s.file("cert"), s.file("key")
    enrol_text = s.str("enrolment", "")
    s.used.discard("enrolment")
    enrolment = s.file("enrolment") if enrol_text else None
    out_dir = s.file("out-dir", "runs/deploy", exists=False)
    startup = s.float("startup-timeout", 60.0, lo=1.0)
    run_timeout = s.float("run-timeout", 86400.0, lo=1.0)
    s.finish()
    st = _Table(p, "sites", doc)
    sites: dict[str, Path] = {}
    for name in st.data:
        from protocol.keys import SITE_NAME

        if not SITE_NAME.match(name):
            raise st.error(name, "is not a valid site name (letters, digits, '.', '_', '-')")
        sites[name] = st.file(name)
        text = sites[name].read_text(encoding="utf-8", errors="replace").strip()
        if not text.startswith("ecdsa-sha2-nistp"):
            raise DeployConfigError(
                f"{st.where(name)}: {str(sites[name])!r} is not an OpenSSH ECDSA public key "
                "(Flower's SuperNode authentication needs `ecdsa-sha2-nistp256/384/521`)")
    if not sites:
        raise DeployConfigError(f"{p}: [sites] must list at least one enrolled site")
    r = _Table(p, "run", doc, required=False)
    for run_key in r.data:
        if run_key in _RUN_RESERVED:
            raise DeployConfigError(f"{r.where(run_key)} cannot be set here "
                                    f"({_RUN_RESERVED[run_key]}), got {r.data[run_key]!r}")
    cfg = ServerDeployConfig(p, address, fleet, control, metrics, ca, cert, key, enrolment,
                             out_dir, startup, run_timeout, sites, dict(r.data))
    rc = cfg.run_config()
    if rc.secagg and enrolment is None:
        raise DeployConfigError(f"{p}: [server] `enrolment` is required when [run] `secagg` is "
                                "true (the sites' identity public keys)")
    if enrolment is not None:
        from protocol.enrolment import load_enrolment

        try:
            enrolled = load_enrolment(str(enrolment))
        except ValueError as exc:
            raise DeployConfigError(f"{s.where('enrolment')}: {exc}") from None
        missing = sorted(set(sites) - set(enrolled))
        if rc.secagg and missing:
            raise DeployConfigError(f"{p}: [sites] {missing} have no identity key in the "
                                    f"enrolment list {str(enrolment)!r}")
    if rc.min_sites > len(sites):
        raise DeployConfigError(f"{p}: [run] `min-sites` must be <= the {len(sites)} enrolled "
                                f"sites, got {rc.min_sites}")
    return cfg


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

    def node_config(self) -> dict[str, Any]:
        """The SuperNode's node config (what the ClientApp reads as ``context.node_config``)."""
        out: dict[str, Any] = {
            "site-name": self.name, "data-path": str(self.data_path),
            "state-dir": str(self.state_dir), "device": self.device,
        }
        if self.enrolment is not None:
            out["secagg-enrolment"] = str(self.enrolment)
        if self.model:
            out["model"] = self.model
        out.update({f"dp-{k}": v for k, v in self.privacy.items()})
        return out


def load_site_config(path: str | Path, *, check_files: bool = True) -> SiteDeployConfig:
    """Read and validate ``site.toml``."""
    p = Path(path).expanduser().resolve()
    doc = _read(p)
    _no_other_tables(p, doc, ("site", "privacy"))
    s = _Table(p, "site", doc)
    from protocol.keys import SITE_NAME

    name = s.str("name")
    if not SITE_NAME.match(name):
        raise s.error("name", "must be letters, digits, '.', '_' or '-'")
    superlink = s.str("superlink", "127.0.0.1:9092")
    host, _, port = superlink.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise s.error("superlink", "must be HOST:PORT")
    ca_text = s.str("ca-cert", "")
    s.used.discard("ca-cert")
    ca = s.file("ca-cert", exists=check_files) if ca_text else None
    auth = s.file("auth-key", exists=check_files)
    if check_files and not auth.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        raise DeployConfigError(f"{s.where('auth-key')}: {str(auth)!r} is not an OpenSSH private "
                                "key (Flower 1.39 needs ECDSA in OpenSSH format, e.g. from "
                                "`confide keys` or `ssh-keygen -t ecdsa -b 384 -N ''`)")
    data = s.file("data-path", exists=check_files)
    state = s.file("state-dir", exists=False)
    enrol_text = s.str("enrolment", "")
    s.used.discard("enrolment")
    enrolment = s.file("enrolment", exists=check_files) if enrol_text else None
    if check_files and enrolment is not None and not (state / "identity.key").is_file():
        raise DeployConfigError(f"{s.where('state-dir')}: no identity.key in {str(state)!r} "
                                "(secure aggregation needs the site's Ed25519 identity key; "
                                "`confide keys` makes one)")
    model = s.str("model", "")
    cache_text = s.str("hf-cache", "")
    s.used.discard("hf-cache")
    cache = s.file("hf-cache", exists=False) if cache_text else None
    device = s.str("device", "auto")
    if device not in _DEVICES:
        raise s.error("device", f"must be one of {_DEVICES}")
    runtime_port = s.int("runtime-port", 0, lo=0, hi=65535)
    timeout = s.float("connect-timeout", 600.0)
    grace = s.float("activation-grace", 30.0)
    s.finish()
    pr = _Table(p, "privacy", doc, required=False)
    if pr.data:
        from privacy.policy import PolicyError, SitePrivacyPolicy

        try:
            SitePrivacyPolicy.from_mapping(pr.data)
        except PolicyError as exc:
            raise DeployConfigError(f"{p}: [privacy] {exc}") from None
    if model:
        from protocol.model_ref import ModelError, resolve_model

        try:
            model = resolve_model(model) if model != "embedded" else model
        except ModelError as exc:
            raise DeployConfigError(f"{s.where('model')}: {exc}") from None
    return SiteDeployConfig(p, name, superlink, ca, auth, data, state, enrolment, model, cache,
                            device, runtime_port, timeout, grace, dict(pr.data))
