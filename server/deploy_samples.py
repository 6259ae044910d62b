"""Sample ``server.toml`` / ``site.toml`` files, as ``confide keys`` writes them with the keys.

The coordinator's development tool hands each site its folder with a sample ``site.toml``
(read by :mod:`client.deploy_config`); the coordinator's own is read by
:mod:`server.deploy_config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol.procs import toml_value as _v  # a TOML value, as for --run-config

__all__ = ["relpath", "server_toml", "site_toml"]


def server_toml(*, sites: Sequence[str], address: str = "127.0.0.1", fleet_port: int = 9092,
                control_port: int = 9093, metrics_port: int = 9400, keys: str = ".",
                out_dir: str = "runs/deploy", run: Mapping[str, Any] | None = None) -> str:
    """Render the coordinator's configuration; ``keys`` is the key folder relative to the file."""
    k = keys.rstrip("/")
    # secure aggregation needs a cohort of at least 3 sites
    run = dict(run or {"num-server-rounds": 3, "min-sites": min(3, len(sites)),
                       "local-steps": 2, "dp": True, "secagg": True, "round-timeout": 600.0})
    lines = [
        "# confide server --config THIS_FILE  (paths are relative to this file)",
        "[server]",
        f"address = {_v(address)}        # interface of the SuperLink (sites and `flwr`)",
        f"fleet-port = {fleet_port}            # sites connect here (gRPC + TLS)",
        f"control-port = {control_port}          # `flwr` / ServerApp control API (HTTPS)",
        f"metrics-port = {metrics_port}          # Prometheus text format on 127.0.0.1 (0: off)",
        f"ca-cert = {_v(k + '/server/ca.crt')}",
        f"cert = {_v(k + '/server/server.crt')}  # SAN must name `address`",
        f"key = {_v(k + '/server/server.key')}",
        f"enrolment = {_v(k + '/enrolment.json')}  # sites' identity keys (secure aggregation)",
        f"out-dir = {_v(out_dir)}",
        "startup-timeout = 60.0",
        "run-timeout = 86400.0",
        "",
        "[sites]  # enrolled sites: only these SuperNode public keys may connect",
    ]
    lines += [f"{name} = {_v(f'{k}/server/supernodes/{name}.pub')}" for name in sites]
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
        f"name = {_v(name)}",
        f"superlink = {_v(superlink)}   # the coordinator's Fleet API",
        f"ca-cert = {_v(k + '/ca.crt')}           # verifies the coordinator's certificate",
        f"auth-key = {_v(k + '/auth.key')}        # this site's SuperNode key (enrolled there)",
        f"data-path = {_v(data_path)}",
        f"state-dir = {_v(k + '/state')}          # privacy ledger + identity.key",
        f"enrolment = {_v(k + '/enrolment.json')}",
        'model = ""             # "": the coordinator\'s choice (embedded by default)',
        'device = "auto"        # auto: CUDA when present',
        '# precision = "auto"   # default; auto: bf16 autocast on a GPU that has it, else fp32',
        "# gradient-checkpointing = false",
        '# base-quantization = "none"  # "4bit": QLoRA base weights (CUDA + bitsandbytes only)',
        "# worker = true        # default: one resident process holds the model for the run",
        "# worker-wait = 120.0  # seconds a message waits for a restarting worker",
        "# executor = true      # default: messages run in the SuperNode's process (worker on)",
        "# poll-interval = 0.1  # default: longest SuperNode wait between checks (Flower: 3 s)",
        "# work-ahead = true    # default: train from a secure round's first stage (worker on)",
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
    return Path(os.path.relpath(target, start)).as_posix()
