"""The coordinator's subcommands: ``confide keys`` and ``confide server``.

``keys`` writes a development CA, the server certificate, every site's keys, the enrolment
list and sample configs (:mod:`server.devkeys`, :mod:`server.deploy_samples`); ``server``
runs a real federation (:mod:`server.deploy`). Bad input raises a
:class:`~protocol.console.UsageError` (``DeployConfigError``, ``KeysError``), which the
``confide`` dispatcher reports with exit status 2; a run that fails exits with 1.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from protocol.console import EXIT_FAILED, fail

__all__ = ["add_server_parsers"]


def _keys(args: argparse.Namespace) -> int:
    from protocol.io import atomic_write_text
    from protocol.model_ref import ModelError, bundled_sites_dir
    from server.deploy_samples import relpath, server_toml, site_toml
    from server.devkeys import make_keys

    ks = make_keys(Path(args.out), hosts=args.hosts.split(","), sites=args.sites.split(","),
                   force=args.force)
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


def _server(args: argparse.Namespace) -> int:
    from server.deploy import DeployError, run_coordinator
    from server.deploy_config import load_server_config

    cfg = load_server_config(args.config)
    if args.resume is not None:
        cfg = dataclasses.replace(cfg, out_dir=Path(args.resume).expanduser().resolve())
    if args.record_received:
        from protocol.run_folder import RECEIVED_FILE, RECORD_RECEIVED_KEY

        cfg = dataclasses.replace(cfg, run={**cfg.run, RECORD_RECEIVED_KEY: True})
        print(f"confide server: recording every reply received in RUN_DIR/{RECEIVED_FILE}")
    try:
        return run_coordinator(cfg, resume=args.resume is not None)
    except DeployError as exc:
        return fail("server", exc, EXIT_FAILED)


def add_server_parsers(sub: Any) -> None:
    """Add ``keys`` and ``server`` to the ``confide`` subparsers."""
    p = sub.add_parser("keys", help="make a development CA, server certificate, site keys, "
                                    "the enrolment list and sample configs")
    p.add_argument("--out", required=True, help="folder for keys and configs")
    p.add_argument("--hosts", default="127.0.0.1,localhost",
                   help="comma-separated host names / IPs the server certificate is valid for")
    p.add_argument("--sites", default="bank,clinic,law", help="comma-separated site names")
    p.add_argument("--run-dir", default="runs/deploy", help="RUN_DIR written into server.toml")
    p.add_argument("--force", action="store_true", help="replace keys already in --out")
    p.set_defaults(handler=_keys)

    p = sub.add_parser("server", help="run the coordinator: SuperLink (TLS, site auth), the run, "
                                      "metrics; stops what it started at the end")
    p.add_argument("--config", required=True, help="server.toml")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the crashed run in RUN_DIR from its last completed round")
    p.add_argument("--record-received", action="store_true",
                   help="write RUN_DIR/received.jsonl: every reply the coordinator receives "
                        "(records, keys, values; arrays as dtype and shape); off by default, "
                        "or [run] record-received = true")
    p.set_defaults(handler=_server, log_events=True)
