"""The site operator's subcommand: ``confide client [run | export-ledger]``.

``run`` (default) supervises the site's SuperNode (:mod:`client.agent`); ``export-ledger``
verifies the hash chain of the site's privacy ledger and writes a copy. Bad input raises a
:class:`~protocol.console.UsageError` (``DeployConfigError`` for ``site.toml``), which the
``confide`` dispatcher reports with exit status 2; a refusal by the coordinator exits with 3,
giving up on it with 4 (:mod:`client.agent`), a ledger that fails verification with 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from protocol.console import EXIT_FAILED, UsageError, fail

__all__ = ["add_client_parser"]


def _client(args: argparse.Namespace) -> int:
    from client.agent import AgentError, export_ledger, run_agent
    from client.deploy_config import load_site_config

    cfg = load_site_config(args.config)
    try:
        if args.action == "export-ledger":
            if not args.out:
                raise UsageError("export-ledger needs --out PATH", field="--out")
            from privacy.ledger import LedgerError

            try:
                n, head, path = export_ledger(cfg, Path(args.out).expanduser())
            except LedgerError as exc:
                return fail("client", f"the privacy ledger failed verification: {exc}",
                            EXIT_FAILED)
            print(f"site {cfg.name}: ledger verified ({n} entries, head {head}); copy at {path}")
            from client.agent import site_level_export_path
            from privacy.ddg.site_ledger import SITE_LEVEL_LEDGER

            if (cfg.state_dir / SITE_LEVEL_LEDGER).is_file():
                print(f"site {cfg.name}: site-level ledger verified; copy at "
                      f"{site_level_export_path(path)}")
            return 0
        return run_agent(cfg)
    except AgentError as exc:
        return fail("client", exc, exc.code)


def add_client_parser(sub: Any) -> None:
    """Add ``client`` to the ``confide`` subparsers."""
    p = sub.add_parser("client", help="run a site agent (SuperNode) or export its privacy ledger")
    p.add_argument("action", nargs="?", choices=("run", "export-ledger"), default="run",
                   help="run (default): connect to the coordinator and serve rounds; "
                        "export-ledger: verify the ledger's hash chain and write a copy")
    p.add_argument("--config", required=True, help="site.toml")
    p.add_argument("--out", default=None, help="export-ledger: destination file or folder")
    p.set_defaults(handler=_client, log_events=True)
