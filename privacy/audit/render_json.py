"""The audit report as JSON, described by ``privacy/audit/schema.json`` (JSON Schema 2020-12)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from privacy.audit.model import AuditReport, report_data

__all__ = ["SCHEMA_PATH", "load_schema", "render_json"]

logger = logging.getLogger(__name__)

#: The JSON Schema of :func:`render_json`'s output.
SCHEMA_PATH = Path(__file__).with_name("schema.json")


def load_schema() -> dict[str, Any]:
    """Load the report's JSON Schema (draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def render_json(report: AuditReport) -> str:
    """Render the report's data (:func:`~privacy.audit.model.report_data`) as indented JSON.

    Keys are sorted; infinite values are ``null``; the ``sha256`` field holds the digest of
    everything else (see :func:`~privacy.audit.model.report_sha256`).
    """
    return json.dumps(report_data(report), indent=2, sort_keys=True, allow_nan=False) + "\n"
