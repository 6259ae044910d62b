"""``confide keys``, ``confide server`` and ``confide client``: a real federation (deployment)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_deploy_parsers"]

EXIT_BAD_INPUT = 2


def _logging() -> None:
    """One line per event, with a timestamp, on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    for name in ("confide", "server", "client", "protocol", "privacy"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False


def _fail(command: str, exc: object, code: int = EXIT_BAD_INPUT) -> int:
    print(f"confide {command}: error: {exc}", file=sys.stderr, flush=True)
    return code


# keys ----------------------------------------------------------------------------------------
def _keys(args: argparse.Namespace) -> int:
    from protocol.deploy_samples import relpath, server_toml, site_toml
    from protocol.io import atomic_write_text
    from protocol.keys import KeysError, make_keys
    from protocol.model_ref import ModelError, bundled_sites_dir

    try:
        ks = make_keys(Path(args.out), hosts=args.hosts.split(","), sites=args.sites.split(","),
                       force=args.force)
    except KeysError as exc:
        return _fail("keys", exc)
    try:
        demo = bundled_sites_dir()
    except ModelError:
        demo = None
    host = args.hosts.split(",")[0].strip()
    atomic_write_text(ks.root / "server.toml", server_toml(
        sites=list(ks.site_dirs), address=host, out_dir=relpath(Path(args.run_dir).resolve(),
                                                               ks.root)))
    placeholders = []
    for name, sdir in ks.site_dirs.items():
        data = demo / name if demo is not None and (demo / name).exists() else None
        if data is None:
            placeholders.append(name)
        atomic_write_text(sdir / "site.toml", site_toml(
            name=name, data_path=str(data) if data else f"/path/to/{name}/data",
            superlink=f"{host}:9092"))
    print(f"wrote development keys and configs to {ks.root}:")
    print(f"  CA certificate   {ks.ca_cert}   (ca.key: keep private; development only)")
    print(f"  server           {ks.server_cert} (SAN: {args.hosts}), {ks.root / 'server.toml'}")
    for name, sdir in ks.site_dirs.items():
        print(f"  site {name:<11} {sdir / 'site.toml'} (auth.key, state/identity.key, ca.crt)")
    print(f"  enrolment list   {ks.enrolment}")
    if placeholders:
        print(f"  edit `data-path` in the site.toml of: {', '.join(placeholders)}")
    print("next: confide server --config " + str(ks.root / "server.toml"))
    print("      confide client --config " + str(next(iter(ks.site_dirs.values())) / "site.toml")
          + "   (one terminal per site)")
    return 0


def _add_keys(sub: Any) -> None:
    p = sub.add_parser("keys", help="make a development CA, server certificate, site keys, "
                                    "the enrolment list and sample configs")
    p.add_argument("--out", required=True, help="folder for keys and configs")
    p.add_argument("--hosts", default="127.0.0.1,localhost",
                   help="comma-separated host names / IPs the server certificate is valid for")
    p.add_argument("--sites", default="bank,clinic,law", help="comma-separated site names")
    p.add_argument("--run-dir", default="runs/deploy", help="RUN_DIR written into server.toml")
    p.add_argument("--force", action="store_true", help="replace keys already in --out")
    p.set_defaults(handler=_keys)


# server --------------------------------------------------------------------------------------
def _server(args: argparse.Namespace) -> int:
    from protocol.deploy_config import DeployConfigError, load_server_config
    from server.deploy import DeployError, run_coordinator

    _logging()
    try:
        cfg = load_server_config(args.config)
        if args.resume is not None:
            cfg = dataclasses.replace(cfg, out_dir=Path(args.resume).expanduser().resolve())
        return run_coordinator(cfg, resume=args.resume is not None)
    except DeployConfigError as exc:
        return _fail("server", exc)
    except DeployError as exc:
        return _fail("server", exc, 1)


def _add_server(sub: Any) -> None:
    p = sub.add_parser("server", help="run the coordinator: SuperLink (TLS, site auth), the run, "
                                      "metrics; stops what it started at the end")
    p.add_argument("--config", required=True, help="server.toml")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the crashed run in RUN_DIR from its last completed round")
    p.set_defaults(handler=_server)


# client --------------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> int:
    from client.agent import AgentError, export_ledger, run_agent
    from protocol.deploy_config import DeployConfigError, load_site_config

    _logging()
    try:
        cfg = load_site_config(args.config)
    except DeployConfigError as exc:
        return _fail("client", exc)
    try:
        if args.action == "export-ledger":
            if not args.out:
                return _fail("client", ValueError("export-ledger needs --out PATH"))
            from privacy.ledger import LedgerError

            try:
                n, head, path = export_ledger(cfg, Path(args.out).expanduser())
            except LedgerError as exc:
                return _fail("client", f"the privacy ledger failed verification: {exc}", 1)
            print(f"site {cfg.name}: ledger verified ({n} entries, head {head}); copy at {path}")
            return 0
        return run_agent(cfg)
    except AgentError as exc:
        return _fail("client", exc, exc.code)


def _add_client(sub: Any) -> None:
    p = sub.add_parser("client", help="run a site agent (SuperNode) or export its privacy ledger")
    p.add_argument("action", nargs="?", choices=("run", "export-ledger"), default="run",
                   help="run (default): connect to the coordinator and serve rounds; "
                        "export-ledger: verify the ledger's hash chain and write a copy")
    p.add_argument("--config", required=True, help="site.toml")
    p.add_argument("--out", default=None, help="export-ledger: destination file or folder")
    p.set_defaults(handler=_client)


def add_deploy_parsers(sub: Any) -> None:
    """Register ``keys``, ``server`` and ``client`` on the ``confide`` subparsers."""
    _add_keys(sub)
    _add_server(sub)
    _add_client(sub)
