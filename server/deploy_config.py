"""The coordinator's deployment configuration file, ``server.toml`` (``confide server``).

Validated on load (the rules of :mod:`protocol.deploy_config`): unknown keys, wrong types,
out-of-range values and missing files are refused with an error that names the file, the
table, the key and the value. Relative paths are taken relative to the file's directory.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.config import ConfigError, RunConfig
from protocol.deploy_config import DeployConfigError, Table, no_other_tables, read_toml
from protocol.enrolment import SITE_NAME, load_enrolment

__all__ = ["ServerDeployConfig", "load_server_config"]

#: run-config keys the server command sets itself (from [server]) or that make no sense here
_RUN_RESERVED = {
    "out-dir": "set `out-dir` in [server]",
    "secagg-enrolment": "set `enrolment` in [server]",
    "resume": "pass --resume RUN_DIR to `confide server`",
    "dp-policy": "each site sets its own policy in the [privacy] table of its site.toml",
    "sites-state-dir": "each site sets `state-dir` in its site.toml",
    "data-dir": "each site sets `data-path` in its site.toml",
    "faults": "fault injection is for simulations",
}


def _host(t: Table, key: str, default: str) -> str:
    value = t.text(key, default)
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
    doc = read_toml(p)
    no_other_tables(p, doc, ("server", "sites", "run"))
    s = Table(p, "server", doc)
    address = _host(s, "address", "127.0.0.1")
    fleet = s.integer("fleet-port", 9092, lo=1, hi=65535)
    control = s.integer("control-port", 9093, lo=1, hi=65535)
    metrics = s.integer("metrics-port", 9400, lo=0, hi=65535)
    if len({fleet, control, metrics} - {0}) < len([x for x in (fleet, control, metrics) if x]):
        raise DeployConfigError(f"{p}: [server] `fleet-port`, `control-port` and `metrics-port` "
                                f"must differ, got {fleet}, {control}, {metrics}")
    ca, cert, key = s.file("ca-cert"), s.file("cert"), s.file("key")
    enrol_text = s.text("enrolment", "")
    s.used.discard("enrolment")
    enrolment = s.file("enrolment") if enrol_text else None
    out_dir = s.file("out-dir", "runs/deploy", exists=False)
    startup = s.number("startup-timeout", 60.0, lo=1.0)
    run_timeout = s.number("run-timeout", 86400.0, lo=1.0)
    s.finish()
    st = Table(p, "sites", doc)
    sites: dict[str, Path] = {}
    for name in st.data:
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
    r = Table(p, "run", doc, required=False)
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
