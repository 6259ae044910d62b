"""The privacy audit report: per-site ε per round, independent recomputation, canary audit."""

from privacy.audit.cli import add_audit_parser, run_audit
from privacy.audit.model import (
    AuditInputError,
    AuditReport,
    build_report,
    report_data,
    report_sha256,
)
from privacy.audit.render_html import render_html
from privacy.audit.render_json import SCHEMA_PATH, load_schema, render_json
from privacy.audit.render_md import render_md
from privacy.audit.write import FORMATS, write_audit

__all__ = [
    "FORMATS",
    "SCHEMA_PATH",
    "AuditInputError",
    "AuditReport",
    "add_audit_parser",
    "build_report",
    "load_schema",
    "render_html",
    "render_json",
    "render_md",
    "report_data",
    "report_sha256",
    "run_audit",
    "write_audit",
]
