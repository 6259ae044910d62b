"""RUN_DIR, the folder a run leaves behind: every name in it, one reader and one writer.

Layout (names are the constants below)::

    run.json                      RunInfo: run id, configuration, versions
    state.json                    RunState: the last completed round (written last per round)
    metrics.jsonl                 MetricsRow per round: evaluation, contributors, epsilon
    pending-metrics.json          the rounds whose metrics row waits for the evaluation of
                                  their adapter (``eval-in-train``: it comes with the next
                                  round), so a resumed run still writes them
    participation.jsonl           ParticipationRow per round: sampled, declined, failed
    rounds/<n>/adapter/           the global adapter after round n (round 0: the initial one)
    adapter/                      the final adapter (a copy of the last round's)
    enrolment.json                the enrolment list the run used (secure aggregation)
    ledger-summaries/<site>.json  LedgerSummaryRecord: a site's signed ledger summary
    sites/<site>/                 a site's own state, in a simulation (ledger, policy)
    canary-audit.json             an empirical canary audit (``{"runs": [...]}``), optional
    received.jsonl                one line per reply the coordinator received (what records,
                                  keys and values; arrays as dtype/shape), when the run
                                  config sets ``record-received`` (off by default)
    audit/report.<fmt>            the privacy audit report (html, json, md)

:class:`RunFolder` writes every file atomically (:mod:`protocol.io`); rows are JSON lines
with sorted keys, documents indented JSON with sorted keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from protocol.io import atomic_write_json, atomic_write_text
from protocol.run_rows import (
    LedgerSummaryRecord,
    MetricsRow,
    ParticipationRow,
    RowError,
    RunInfo,
    RunState,
)

__all__ = [
    "ADAPTER_DIR",
    "AUDIT_DIR",
    "CANARY_AUDIT_FILE",
    "ENROLMENT_FILE",
    "LEDGER_SUMMARIES_DIR",
    "METRICS_FILE",
    "PARTICIPATION_FILE",
    "PENDING_METRICS_FILE",
    "RECEIVED_FILE",
    "RECORD_RECEIVED_KEY",
    "ROUNDS_DIR",
    "RUN_FILE",
    "SITES_DIR",
    "STATE_FILE",
    "RunFolder",
    "RunFolderError",
    "audit_report_name",
]

RUN_FILE = "run.json"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
PARTICIPATION_FILE = "participation.jsonl"
PENDING_METRICS_FILE = "pending-metrics.json"
ROUNDS_DIR = "rounds"
ADAPTER_DIR = "adapter"
ENROLMENT_FILE = "enrolment.json"
LEDGER_SUMMARIES_DIR = "ledger-summaries"
SITES_DIR = "sites"
CANARY_AUDIT_FILE = "canary-audit.json"
RECEIVED_FILE = "received.jsonl"
#: the run-config key (and ``confide server`` flag ``--record-received``) that turns it on
RECORD_RECEIVED_KEY = "record-received"
AUDIT_DIR = "audit"

_HEX = "0123456789abcdef"
_R = TypeVar("_R", MetricsRow, ParticipationRow)
_D = TypeVar("_D", RunState, RunInfo, LedgerSummaryRecord)
#: Called with a message for each line a reader skips; without one the reader raises.
OnBadLine = Callable[[str], None] | None


def audit_report_name(fmt: str) -> str:
    """File name of the audit report in format ``fmt`` (``report.html`` ...)."""
    return f"report.{fmt}"


class RunFolderError(ValueError):
    """A file of RUN_DIR is unreadable or does not match the schema (names file and line)."""


class RunFolder:
    """The files of one RUN_DIR: paths, typed reads, atomic writes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # paths -------------------------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        """``run.json``: the run's id, configuration and versions."""
        return self.root / RUN_FILE

    @property
    def state_path(self) -> Path:
        """``state.json``: the last completed round."""
        return self.root / STATE_FILE

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: one metrics row per round."""
        return self.root / METRICS_FILE

    @property
    def participation_path(self) -> Path:
        """``participation.jsonl``: one participation row per round."""
        return self.root / PARTICIPATION_FILE

    @property
    def rounds_dir(self) -> Path:
        """``rounds/``: one folder per round."""
        return self.root / ROUNDS_DIR

    def round_adapter(self, round_num: int) -> Path:
        """Return ``rounds/<round_num>/adapter/``, the global adapter after that round."""
        return self.rounds_dir / str(round_num) / ADAPTER_DIR

    @property
    def final_adapter(self) -> Path:
        """``adapter/``: the final adapter."""
        return self.root / ADAPTER_DIR

    @property
    def enrolment_path(self) -> Path:
        """``enrolment.json``: the enrolment list the run used."""
        return self.root / ENROLMENT_FILE

    @property
    def ledger_summaries(self) -> Path:
        """``ledger-summaries/``: the sites' signed ledger summaries."""
        return self.root / LEDGER_SUMMARIES_DIR

    def ledger_summary_path(self, site: str) -> Path:
        """Return ``ledger-summaries/<site>.json``, ``site``'s signed ledger summary."""
        return self.ledger_summaries / f"{site}.json"

    @property
    def sites_dir(self) -> Path:
        """``sites/``: the sites' own state, in a simulation."""
        return self.root / SITES_DIR

    def site_dir(self, site: str) -> Path:
        """Return ``sites/<site>/``, ``site``'s own state in a simulation."""
        return self.sites_dir / site

    @property
    def canary_audit_path(self) -> Path:
        """``canary-audit.json``: an empirical canary audit, optional."""
        return self.root / CANARY_AUDIT_FILE

    @property
    def audit_dir(self) -> Path:
        """``audit/``: the privacy audit reports."""
        return self.root / AUDIT_DIR

    @property
    def pending_metrics_path(self) -> Path:
        """``pending-metrics.json``: metrics rows waiting for their adapter's evaluation."""
        return self.root / PENDING_METRICS_FILE

    @property
    def received_path(self) -> Path:
        """``received.jsonl``: what the coordinator received, one line per reply."""
        return self.root / RECEIVED_FILE

    def audit_report(self, fmt: str) -> Path:
        """Return ``audit/report.<fmt>``, the audit report in format ``fmt``."""
        return self.audit_dir / audit_report_name(fmt)

    # writers -----------------------------------------------------------------------------
    def write_run_info(self, info: RunInfo) -> None:
        """Write ``run.json`` atomically."""
        atomic_write_json(self.run_path, info.to_json())

    def write_state(self, state: RunState) -> None:
        """Write ``state.json`` atomically."""
        atomic_write_json(self.state_path, state.to_json())

    def append_metrics(self, row: MetricsRow) -> None:
        """Append ``row`` to ``metrics.jsonl`` (the file is rewritten atomically)."""
        self._append(self.metrics_path, row.to_json())

    def append_participation(self, row: ParticipationRow) -> None:
        """Append ``row`` to ``participation.jsonl`` (rewritten atomically)."""
        self._append(self.participation_path, row.to_json())

    def replace_last_participation(self, row: ParticipationRow) -> None:
        """Replace the last row (the same round's write-ahead row) by ``row``, atomically."""
        lines = (self.participation_path.read_text(encoding="utf-8").splitlines()
                 if self.participation_path.exists() else [])
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines or json.loads(lines[-1]).get("round") != row.round:
            raise RunFolderError(f"no participation row of round {row.round} to replace")
        line = json.dumps(row.to_json(), sort_keys=True, allow_nan=False)
        atomic_write_text(self.participation_path, "".join(x + "\n" for x in lines[:-1])
                          + line + "\n")

    def write_pending_metrics(self, digest: str, rows: list[dict[str, Any]]) -> None:
        """Write the rows waiting for the evaluation of the adapter ``digest``, atomically.

        Each row is a metrics row without its evaluation fields; no rows: the file is removed.
        """
        if not rows:
            self.pending_metrics_path.unlink(missing_ok=True)
            return
        atomic_write_json(self.pending_metrics_path, {"digest": digest, "rows": rows})

    def read_pending_metrics(self) -> tuple[str, list[dict[str, Any]]]:
        """Read the adapter digest and rows of ``pending-metrics.json`` (``("", [])``: none).

        :class:`RunFolderError` names a malformed field.
        """
        if not self.pending_metrics_path.exists():
            return "", []
        doc = self.read_json_object(self.pending_metrics_path)
        digest, rows = doc.get("digest"), doc.get("rows")
        name = self.pending_metrics_path.name
        if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set(_HEX):
            raise RunFolderError(f"{name}: `digest` must be a SHA-256 hex digest, got "
                                 f"{digest!r}")
        if not isinstance(rows, list) or not rows:
            raise RunFolderError(f"{name}: `rows` must be a non-empty list, got {rows!r}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or type(row.get("round")) is not int:
                raise RunFolderError(f"{name}: `rows[{i}]` must be an object with an integer "
                                     f"`round`, got {row!r}")
        return digest, rows

    def write_ledger_summary(self, record: LedgerSummaryRecord) -> None:
        """Write ``record`` to ``ledger-summaries/<site>.json`` atomically."""
        atomic_write_json(self.ledger_summary_path(record.site), record.to_json())

    def append_received(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` to ``received.jsonl`` (appended in place: one write per exchange)."""
        if not rows:
            return
        text = "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows)
        self.root.mkdir(parents=True, exist_ok=True)
        with self.received_path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    def read_received(self) -> list[dict[str, Any]]:
        """Every line of ``received.jsonl`` (none when the run did not record them)."""
        return [row for _, row in self._lines(self.received_path, lambda _m: None)]

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        line = json.dumps(record, sort_keys=True, allow_nan=False)
        atomic_write_text(path, existing + line + "\n")

    def truncate_rows_after(self, round_num: int) -> None:
        """Drop the metrics / participation lines of rounds after ``round_num`` (kept as is).

        A participation row written ahead of an unmask (``"charged": true``) is kept: that
        aggregate may have been released, so its charge stands on resume.
        """
        for path in (self.metrics_path, self.participation_path):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                if int(row["round"]) <= round_num or (
                        path == self.participation_path and row.get("charged") is True):
                    kept.append(line)
            atomic_write_text(path, "".join(k + "\n" for k in kept))
        if self.pending_metrics_path.exists():
            digest, rows = self.read_pending_metrics()
            self.write_pending_metrics(digest, [r for r in rows if r["round"] <= round_num])

    # readers -----------------------------------------------------------------------------
    def read_state(self) -> RunState:
        """``state.json``; :class:`RunFolderError` when missing or malformed."""
        return self._document(self.state_path, RunState)

    def read_run_info(self) -> RunInfo:
        """``run.json``; :class:`RunFolderError` when missing or malformed."""
        return self._document(self.run_path, RunInfo)

    def read_ledger_summary(self, site: str) -> LedgerSummaryRecord:
        """``ledger-summaries/<site>.json`` as received (its signature is not checked here)."""
        return self._document(self.ledger_summary_path(site), LedgerSummaryRecord)

    def read_metrics(self, on_bad_line: OnBadLine = None) -> list[MetricsRow]:
        """Every row of ``metrics.jsonl`` (none when it does not exist yet)."""
        return self._typed(self.metrics_path, MetricsRow, on_bad_line)

    def read_participation(self, on_bad_line: OnBadLine = None) -> list[ParticipationRow]:
        """Every row of ``participation.jsonl`` (none when it does not exist yet)."""
        return self._typed(self.participation_path, ParticipationRow, on_bad_line)

    def unreleased_rounds(self) -> list[str]:
        """One line per planned round that released no aggregate, with the recorded reason.

        A round counts as released when any of its participation rows (any attempt) says so.
        For each other round: every attempt's ``abort_reason`` (or that none was recorded) and
        the sites that declined or failed; planned rounds the run never reached (from
        ``run.json``'s ``num-server-rounds``) say where the run stopped and why
        (``state.json``'s ``stopped_early``). Empty when every planned round was released.
        Never raises on a damaged folder: lines that do not parse are skipped.
        """
        rows = self.read_participation(on_bad_line=lambda _msg: None)
        by_round: dict[int, list[ParticipationRow]] = {}
        for row in rows:
            by_round.setdefault(row.round, []).append(row)
        out = []
        for rnd in sorted(by_round):
            attempts = by_round[rnd]
            if any(r.released is True for r in attempts):
                continue
            for r in attempts:
                tried = "" if len(attempts) == 1 else f" (attempt {r.attempt or 0})"
                why = r.abort_reason or "no abort reason recorded"
                sites = "; ".join(f"{what} {', '.join(f'{k} ({v})' for k, v in sorted(m.items()))}"
                                  for what, m in (("declined:", r.declined),
                                                  ("failed:", r.failed)) if m)
                out.append(f"round {rnd}{tried}: NOT RELEASED: {why}"
                           + (f"; {sites}" if sites else ""))
        planned = 0
        try:
            planned = int(self.read_run_info().config.get("num-server-rounds", 0))
        except (RunFolderError, TypeError, ValueError):
            pass
        last = max(by_round, default=0)
        if planned > last:
            try:
                stopped = self.read_state().stopped_early
            except RunFolderError:
                stopped = ""
            out.append(f"rounds {last + 1}..{planned} of {planned}: NOT RUN: "
                       + (stopped or f"the run ended after round {last}"))
        return out

    def read_json_object(self, path: Path) -> dict[str, Any]:
        """Read a JSON document of this folder, unvalidated; :class:`RunFolderError` if unreadable.

        For readers that must survive a tampered folder (the audit) and check fields one by
        one themselves.
        """
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{path.name} is unreadable: {exc}") from exc
        if not isinstance(doc, dict):
            raise RunFolderError(f"{path.name} is not a JSON object")
        return doc

    def read_raw_rows(self, path: Path, on_bad_line: OnBadLine = None) -> list[dict[str, Any]]:
        """Read the JSON-object lines of ``path`` with an integer ``round``, fields unvalidated."""
        return [row for _, row in self._lines(path, on_bad_line)]

    def _document(self, path: Path, cls: type[_D]) -> _D:
        if not path.is_file():
            raise RunFolderError(f"no {path.name} in {self.root}")
        try:
            return cls.from_json(self.read_json_object(path))
        except RowError as exc:
            raise RunFolderError(f"{path} is malformed: {exc}") from exc

    def _typed(self, path: Path, cls: type[_R], on_bad_line: OnBadLine) -> list[_R]:
        out = []
        for lineno, row in self._lines(path, on_bad_line):
            try:
                out.append(cls.from_json(row))
            except RowError as exc:
                _bad(on_bad_line, f"{path.name}:{lineno}: {exc}")
        return out

    @staticmethod
    def _lines(path: Path, on_bad_line: OnBadLine) -> Iterator[tuple[int, dict[str, Any]]]:
        if not path.is_file():
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _bad(on_bad_line, f"{path.name} is unreadable: {exc}")
            return
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                _bad(on_bad_line, f"{path.name}:{lineno} is malformed: {exc}")
                continue
            if isinstance(row, dict) and type(row.get("round")) is int:
                yield lineno, row
            else:
                _bad(on_bad_line, f"{path.name}:{lineno} has no integer `round`")


def _bad(on_bad_line: OnBadLine, message: str) -> None:
    if on_bad_line is None:
        raise RunFolderError(message)
    on_bad_line(message)
