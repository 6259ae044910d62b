"""``confide audit RUN_DIR [--format html|json|md] [--out PATH] [--canary-result FILE]``.

The ``confide`` entry point adds the sub-command with :func:`add_audit_parser` and runs it
with :func:`run_audit`. Exit status: 0 report written, no red flags; 1 report written with
red flags (ε that does not recompute, ε below the tight bound, over budget, empirical bound
above the formal ε); 2 bad input: RUN_DIR missing or not a run, or a ledger that fails
verification (the report is still written, with that site UNVERIFIED).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from protocol.console import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fail
from protocol.run_folder import CANARY_AUDIT_FILE

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_RED_FLAGS", "add_audit_parser", "run_audit"]

logger = logging.getLogger(__name__)

#: the report was written and shows red flags
EXIT_RED_FLAGS = EXIT_FAILED


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``audit`` sub-command to ``subparsers`` (from ``add_subparsers()``).

    Sets ``handler=run_audit`` as the parser default, so a dispatcher can call
    ``args.handler(args)``.
    """
    p: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="privacy audit report of a run (per-site eps, recomputation, canaries)",
        description="Write the privacy audit report of RUN_DIR: every site's eps(delta) after "
                    "every round, its recomputation with a second accountant, who took part in "
                    "each aggregate, and an empirical canary audit if one was run. By default "
                    "writes report.html, report.json and report.md into RUN_DIR/audit/.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory to audit")
    p.add_argument("--format", choices=("html", "json", "md"), default=None,
                   help="write only this format (default: all three)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="with --format: the file to write ('-' for stdout); without: the "
                        "directory for all three (default: RUN_DIR/audit)")
    p.add_argument("--canary-result", default=None, metavar="FILE",
                   help="JSON result of simulations/audit_canaries.py to include "
                        f"(default: RUN_DIR/{CANARY_AUDIT_FILE} when present)")
    p.set_defaults(handler=run_audit)
    return p


def _err(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    return fail("audit", msg, code)


def run_audit(args: argparse.Namespace) -> int:
    """Run ``confide audit`` with parsed ``args``; returns the exit status (see module doc)."""
    from privacy.audit.model import AuditInputError, build_report
    from privacy.audit.write import FORMATS, render
    from protocol.io import atomic_write_text
    from protocol.run_folder import RunFolder, audit_report_name

    run_dir = Path(args.run_dir).expanduser()
    canary = getattr(args, "canary_result", None)
    if canary is not None and not Path(canary).is_file():
        return _err(f"--canary-result {canary!r} is not a file")
    try:
        report = build_report(run_dir, canary_result=Path(canary) if canary else None)
    except AuditInputError as exc:
        return _err(str(exc))
    fmt = getattr(args, "format", None)
    out = getattr(args, "out", None)
    written: list[str] = []
    try:
        if fmt is not None and out == "-":
            sys.stdout.write(render(report, fmt))
        elif fmt is not None:
            path = Path(out).expanduser() if out else RunFolder(run_dir).audit_report(fmt)
            if path.is_dir():
                path = path / audit_report_name(fmt)
            atomic_write_text(path, render(report, fmt))
            written.append(str(path))
        else:
            target = Path(out).expanduser() if out else RunFolder(run_dir).audit_dir
            if target.exists() and not target.is_dir():
                return _err(f"--out {out!r} exists and is not a directory (give --format to "
                            "write one file)")
            for f in FORMATS:
                atomic_write_text(target / audit_report_name(f), render(report, f))
                written.append(str(target / audit_report_name(f)))
    except OSError as exc:
        return _err(f"cannot write the report: {exc}")
    out_stream = sys.stderr if out == "-" else sys.stdout
    for path_str in written:
        print(f"confide audit: wrote {path_str}", file=out_stream)
    print(f"confide audit: report SHA-256 {report.sha256}", file=out_stream)
    unverified = [s.site_id for s in report.sites if not s.verification.verified]
    for site in report.sites:
        if not site.verification.verified:
            _err(f"site {site.site_id}: ledger UNVERIFIED: "
                 + "; ".join(site.verification.problems[:3]))
    if unverified:
        return EXIT_BAD_INPUT
    for flag in report.red_flags:
        _err(f"{'[' + flag.site_id + '] ' if flag.site_id else ''}{flag.message}")
    return EXIT_RED_FLAGS if report.red_flags else EXIT_OK
