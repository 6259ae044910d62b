"""Write the audit report of a RUN_DIR in one or more formats (what a run calls at its end)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from privacy.audit.model import AuditReport, build_report
from privacy.audit.render_html import render_html
from privacy.audit.render_json import render_json
from privacy.audit.render_md import render_md
from protocol.io import atomic_write_text
from protocol.run_folder import RunFolder, audit_report_name

__all__ = ["FORMATS", "RENDERERS", "render", "write_audit"]

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("html", "json", "md")
RENDERERS: Mapping[str, Callable[[AuditReport], str]] = {
    "html": render_html, "json": render_json, "md": render_md,
}


def render(report: AuditReport, fmt: str) -> str:
    """Render the report in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt not in RENDERERS:
        raise ValueError(f"`format` must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return RENDERERS[fmt](report)


def write_audit(
    run_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    canary_result: Path | Mapping[str, Any] | None = None,
) -> tuple[AuditReport, dict[str, Path]]:
    """Build the report of ``run_dir`` and write ``report.<fmt>`` files atomically.

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    out_dir : str or Path, optional
        Where to write; ``RUN_DIR/audit`` by default.
    formats : sequence of {"html", "json", "md"}
        Which files to write.
    canary_result : Path or mapping, optional
        An empirical canary audit to include (default: ``RUN_DIR/canary-audit.json``).

    Returns
    -------
    (AuditReport, dict)
        The report and the path written per format.

    Raises
    ------
    privacy.audit.model.AuditInputError
        If ``run_dir`` is missing or holds no run. A tampered ledger does not raise: the
        report is written with that site UNVERIFIED (check ``report.all_verified``).
    """
    for fmt in formats:
        if fmt not in RENDERERS:
            raise ValueError(f"`format` must be one of {', '.join(FORMATS)}, got {fmt!r}")
    report = build_report(run_dir, canary_result=canary_result)
    target = Path(out_dir) if out_dir is not None else RunFolder(run_dir).audit_dir
    paths: dict[str, Path] = {}
    for fmt in formats:
        path = target / audit_report_name(fmt)
        atomic_write_text(path, render(report, fmt))
        paths[fmt] = path
    logger.info("audit report of %s written to %s (%s)", run_dir, target, ", ".join(formats))
    return report, paths
