"""The ``confide`` command: a thin dispatcher over the subcommands their packages define.

=============  ==============================  ==========================================
command        defined in                      user
=============  ==============================  ==========================================
``simulate``   :mod:`simulations.simulate`     researcher: N virtual sites on one machine
``audit``      :mod:`privacy.audit.cli`        privacy officer: the report of a RUN_DIR
``keys``       :mod:`server.cli`               coordinator: development keys and configs
``server``     :mod:`server.cli`               coordinator: the run of a real federation
``client``     :mod:`client.cli`               site operator: the site agent, its ledger
=============  ==============================  ==========================================

Each adds its parser with a ``handler`` (parsed args -> exit status) and, if it runs long,
``log_events=True``. Here, and only here: the logging setup
(:func:`protocol.console.configure_logging`), the bad-input exit path (a
:class:`~protocol.console.UsageError` from any handler: one line on stderr, exit status 2)
and Ctrl-C (exit status 130). ``simulations`` is the one layer that may import all four.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from client.cli import add_client_parser
from privacy.audit.cli import add_audit_parser
from protocol.console import EXIT_INTERRUPTED, UsageError, configure_logging, fail
from server.cli import add_server_parsers
from simulations.simulate import add_simulate_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``confide`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="confide",
        description="Federated LoRA fine-tuning with site-enforced DP and secure aggregation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_simulate_parser(sub)
    add_audit_parser(sub)
    add_server_parsers(sub)
    add_client_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``confide`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(events=bool(getattr(args, "log_events", False)))
    try:
        return int(args.handler(args))
    except UsageError as exc:
        return fail(args.command, exc)
    except KeyboardInterrupt:
        print(f"confide {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
