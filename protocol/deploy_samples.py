"""Sample ``server.toml`` / ``site.toml`` files, as ``confide keys`` writes them with the keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["server_toml", "site_toml"]


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _v(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _q(value)
    return repr(value)


def server_toml(*, sites: Sequence[str], address: str = "127.0.0.1", fleet_port: int = 9092,
                control_port: int = 9093, metrics_port: int = 9400, keys: str = ".",
                out_dir: str = "runs/deploy", run: Mapping[str, Any] | None = None) -> str:
    """The coordinator's configuration; ``keys`` is the key folder relative to the file."""
    k = keys.rstrip("/")
    # secure aggregation needs a cohort of at least 3 sites
    run = dict(run or {"num-server-rounds": 3, "min-sites": min(3, len(sites)),
                       "local-steps": 2, "dp": True, "secagg": True, "round-timeout": 600.0})
    lines = [
        "# confide server --config THIS_FILE  (paths are relative to this file)",
        "[server]",
        f"address = {_q(address)}        # interface of the SuperLink (sites and `flwr`)",
        f"fleet-port = {fleet_port}            # sites connect here (gRPC + TLS)",
        f"control-port = {control_port}          # `flwr` / ServerApp control API (HTTPS)",
        f"metrics-port = {metrics_port}          # Prometheus text format on 127.0.0.1 (0: off)",
        f"ca-cert = {_q(k + '/server/ca.crt')}",
        f"cert = {_q(k + '/server/server.crt')}  # SAN must name `address`",
        f"key = {_q(k + '/server/server.key')}",
        f"enrolment = {_q(k + '/enrolment.json')}  # sites' identity keys (secure aggregation)",
        f"out-dir = {_q(out_dir)}",
        "startup-timeout = 60.0",
        "run-timeout = 86400.0",
        "",
        "[sites]  # enrolled sites: only these SuperNode public keys may connect",
    ]
    lines += [f"{name} = {_q(f'{k}/server/supernodes/{name}.pub')}" for name in sites]
    lines += ["", "[run]  # protocol.config.RunConfig keys (see README)"]
    lines += [f"{key} = {_v(value)}" for key, value in run.items()]
    return "\n".join(lines) + "\n"


def site_toml(*, name: str, data_path: str, superlink: str = "127.0.0.1:9092",
              keys: str = ".", epsilon: float = 8.0, max_grad_norm: float = 0.01,
              connect_timeout: float = 600.0, extra: Mapping[str, Any] | None = None) -> str:
    """One site's configuration; ``keys`` is the site's key folder relative to the file."""
    k = keys.rstrip("/")
    lines = [
        "# confide client --config THIS_FILE  (paths are relative to this file)",
        "[site]",
        f"name = {_q(name)}",
        f"superlink = {_q(superlink)}   # the coordinator's Fleet API",
        f"ca-cert = {_q(k + '/ca.crt')}           # verifies the coordinator's certificate",
        f"auth-key = {_q(k + '/auth.key')}        # this site's SuperNode key (enrolled there)",
        f"data-path = {_q(data_path)}",
        f"state-dir = {_q(k + '/state')}          # privacy ledger + identity.key",
        f"enrolment = {_q(k + '/enrolment.json')}",
        'model = ""             # "": the coordinator\'s choice (embedded by default)',
        'device = "auto"        # auto: CUDA when present',
        "runtime-port = 0       # local SuperNode runtime API port (0: any free port)",
        f"connect-timeout = {connect_timeout!r}  # give up after this long without the coordinator",
        "activation-grace = 30.0  # retry a refused key this long (coordinator still starting)",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"{key} = {_v(value)}")
    lines += [
        "",
        "[privacy]  # this site's own DP policy: the coordinator cannot change it",
        f"budget-epsilon = {epsilon!r}",
        f"max-grad-norm = {max_grad_norm!r}",
        'accountant = "rdp"',
    ]
    return "\n".join(lines) + "\n"


def relpath(target: Path, start: Path) -> str:
    """``target`` relative to the directory ``start`` (POSIX separators)."""
    import os

    return Path(os.path.relpath(target, start)).as_posix()
