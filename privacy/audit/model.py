"""The audit report's data, built from a RUN_DIR: what a privacy officer signs.

RUN_DIR files read here (names in :mod:`protocol.run_folder`; a simulation run, deployment
adds signed ledger summaries)::

    run.json               {"run_id", "created", "config": {...}, "versions": {...}}
    metrics.jsonl          per round: eval loss, "contributed", "released", "epsilon": {site: ε}
    participation.jsonl    per round: "sampled", "contributed", "declined", "failed",
                           "released" [, "dropped", "threshold" with secure aggregation]
    sites/<site>/privacy-ledger.jsonl   the site's PrivacyLedger (``ledger.jsonl`` also read)
    sites/<site>/policy.json            SitePrivacyPolicy.to_mapping() + site, num_examples, delta
    sites/<site>/site-level-ledger.json the site's own site-level DP charges (when present)
    ledger-summaries/<site>.json        deployment: the site's latest signed ledger summary,
                                        covering its site-level charges too
    canary-audit.json      optional: an empirical canary audit (privacy.audit.canary)

:func:`build_report` never raises on bad *content*: an unreadable, tampered or missing ledger
becomes an unverified site with its problems listed, so the report still renders. It raises
:class:`AuditInputError` only when RUN_DIR itself is missing or is not a run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.audit.aggregates import AggregateRound
from privacy.audit.site_ledgers import SignedSiteLevel
from privacy.audit.site_level import SiteLevelReport, build_site_level
from privacy.audit.sites import SiteReport, build_site
from privacy.audit.verify import SummaryCheck, check_signed_summary
from privacy.ledger import canonical_json
from protocol.run_folder import (
    LEDGER_SUMMARIES_DIR,
    RUN_FILE,
    SITES_DIR,
    RunFolder,
    RunFolderError,
)
from protocol.run_rows import upgrade_keys

__all__ = [
    "SCHEMA_VERSION",
    "AggregateRound",
    "AuditInputError",
    "AuditReport",
    "Flag",
    "build_report",
    "report_data",
    "report_sha256",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

class AuditInputError(ValueError):
    """RUN_DIR is missing or holds no run (the message names the path)."""


@dataclass(frozen=True)
class Flag:
    """Something the reader must act on. ``red`` means the run's privacy claim is in doubt."""

    severity: str  # "red" | "warning"
    site_id: str | None
    message: str


@dataclass(frozen=True)
class AuditReport:
    """Everything the report shows; :func:`report_data` is its JSON form."""

    schema_version: int
    mode: str
    run_id: str | None
    created: str | None
    config: Mapping[str, Any]
    versions: Mapping[str, Any]
    num_rounds: int
    sites: tuple[SiteReport, ...]
    rounds: tuple[AggregateRound, ...]
    initial_eval_loss: float | None
    empirical: tuple[Mapping[str, Any], ...]
    flags: tuple[Flag, ...]
    sha256: str = ""
    site_level: SiteLevelReport | None = None  # site-level DP of the aggregate, if on

    @property
    def all_verified(self) -> bool:
        """Every site's ledger verified."""
        return all(s.verification.verified for s in self.sites)

    @property
    def red_flags(self) -> tuple[Flag, ...]:
        """The flags of severity ``red``."""
        return tuple(f for f in self.flags if f.severity == "red")


# ---- reading RUN_DIR ------------------------------------------------------------------


def _read_json(folder: RunFolder, path: Path, flags: list[Flag]) -> dict[str, Any]:
    if not path.is_file():
        flags.append(Flag("warning", None, f"{path.name} is missing"))
        return {}
    try:
        return folder.read_json_object(path)
    except RunFolderError as exc:
        flags.append(Flag("warning", None, str(exc)))
        return {}


def _read_jsonl(folder: RunFolder, path: Path, flags: list[Flag]) -> list[dict[str, Any]]:
    """Rows with an integer ``round``; every other line is flagged (fields are checked later)."""
    rows = folder.read_raw_rows(path, lambda msg: flags.append(Flag("warning", None, msg)))
    return [upgrade_keys(r) for r in rows]


def _num_or_none(x: Any) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _names(x: Any) -> tuple[str, ...]:
    return tuple(sorted(str(s) for s in x)) if isinstance(x, (list, tuple)) else ()


def _reasons(x: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in sorted(x.items())} if isinstance(x, dict) else {}


def _aggregate_rounds(participation: Sequence[Mapping[str, Any]],
                      metrics: Sequence[Mapping[str, Any]]) -> tuple[AggregateRound, ...]:
    by_round_metrics = {int(m["round"]): m for m in metrics}
    by_round_part = {int(p["round"]): p for p in participation}
    out = []
    for rnd in sorted(r for r in set(by_round_part) | set(by_round_metrics) if r >= 1):
        p, m = by_round_part.get(rnd, {}), by_round_metrics.get(rnd, {})
        released = p.get("released", m.get("released"))
        threshold = p.get("threshold")
        out.append(AggregateRound(
            round=rnd,
            sampled=_names(p.get("sampled")),
            contributed=_names(p.get("contributed", m.get("contributed"))),
            declined=_reasons(p.get("declined")),
            failed=_reasons(p.get("failed")),
            dropped=_names(p.get("dropped")),
            threshold=threshold if type(threshold) is int else None,
            released=released if isinstance(released, bool) else None,
            eval_loss=_num_or_none(m.get("eval_loss")),
            eval_perplexity=_num_or_none(m.get("eval_perplexity")),
            eval_unavailable=(m["eval_unavailable"] if isinstance(m.get("eval_unavailable"), str)
                              else None),
        ))
    return tuple(out)


def _site_dirs(folder: RunFolder) -> dict[str, Path]:
    root = folder.sites_dir
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir()}


def _enrolment(folder: RunFolder, config: Mapping[str, Any],
               flags: list[Flag]) -> dict[str, bytes]:
    """Site identity public keys: RUN_DIR's copy of the enrolment list, else the run's path."""
    from protocol.enrolment import load_enrolment

    for path in (folder.enrolment_path, config.get("secagg-enrolment")):
        if path and Path(str(path)).is_file():
            try:
                return load_enrolment(str(path))
            except ValueError as exc:
                flags.append(Flag("red", None, f"enrolment list unreadable: {exc}"))
                return {}
    return {}


def _signed_summaries(folder: RunFolder, config: Mapping[str, Any],
                      flags: list[Flag]) -> dict[str, SummaryCheck]:
    """RUN_DIR's signed ledger summaries (one per site), each checked against the enrolled key."""
    if not folder.ledger_summaries.is_dir():
        return {}
    keys = _enrolment(folder, config, flags)
    out: dict[str, SummaryCheck] = {}
    for path in sorted(folder.ledger_summaries.glob("*.json")):
        site = path.stem
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            doc = None
            logger.warning("ledger summary %s unreadable: %s", path, exc)
        out[site] = check_signed_summary(doc, site=site, public_key=keys.get(site),
                                         label=f"{LEDGER_SUMMARIES_DIR}/{path.name}")
    return out


def _empirical(folder: RunFolder, canary_result: Path | Mapping[str, Any] | None,
               flags: list[Flag]) -> tuple[dict[str, Any], ...]:
    """Canary audit results: one result mapping, or ``{"runs": [...]}`` of them."""
    if canary_result is None:
        default = folder.canary_audit_path
        if not default.is_file():
            return ()
        canary_result = default
    if isinstance(canary_result, Mapping):
        doc: Any = dict(canary_result)
    else:
        try:
            doc = json.loads(Path(canary_result).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            flags.append(Flag("warning", None, f"canary audit result unreadable: {exc}"))
            return ()
    from privacy.audit.canary import CanaryAuditResult

    items: Any = doc.get("runs") if isinstance(doc, dict) and "runs" in doc else [doc]
    out = []
    for item in items if isinstance(items, list) else [items]:
        try:
            result = CanaryAuditResult.from_mapping(item)
        except (TypeError, ValueError, KeyError) as exc:
            flags.append(Flag("warning", None, f"canary audit result malformed: {exc}"))
            continue
        if result.exceeds_formal:
            flags.append(Flag("red", result.site_id, (
                f"empirical lower bound eps >= {result.epsilon_lower_bound:.3g} exceeds the "
                f"formal eps {result.formal_epsilon:.3g}: the implementation or the accounting "
                "is broken")))
        out.append(result.to_mapping())
    return tuple(out)


def _signed_site_level(signed: Mapping[str, SummaryCheck]) -> dict[str, SignedSiteLevel]:
    """Each site's site-level charges as signed in its latest summary (format 2 and later)."""
    from privacy.audit.site_ledgers import SignedSiteLevel

    out = {}
    for site, check in signed.items():
        part = check.site_level
        if part is None:
            continue
        ok = check.signature == "valid" and not check.problems
        charges = part.get("charges") if ok else []
        eps = _num_or_none(part.get("epsilon")) if ok else None
        out[site] = SignedSiteLevel(ok, check.round, tuple(charges or ()), eps)
    return out


def _with_site_ledgers(section: SiteLevelReport, dirs: Mapping[str, Path],
                       participation: Sequence[Mapping[str, Any]], run_id: str | None,
                       flags: list[Flag],
                       signed: Mapping[str, SummaryCheck] | None = None) -> SiteLevelReport:
    """Return the site-level section with each site's own site-level ledger beside it."""
    from privacy.audit.site_ledgers import build_site_ledgers

    planned = [p for p in participation if isinstance(p.get("site_level_dp"), Mapping)]
    participants = sorted({s for p in planned for s in _names(p.get("contributed"))})
    released = {int(p["round"]) for p in planned if p["site_level_dp"].get("released") is True}
    notes: list[tuple[str, str, str]] = []
    ledgers = build_site_ledgers(dirs, participants, run_id=run_id, stated=section.epsilon,
                                 released=released, flags=notes,
                                 signed=_signed_site_level(signed or {}))
    flags.extend(Flag(sev, site, msg) for sev, site, msg in notes)
    return dataclasses.replace(section, site_ledgers=ledgers)


# ---- building -------------------------------------------------------------------------


def build_report(run_dir: str | Path, *,
                 canary_result: Path | Mapping[str, Any] | None = None) -> AuditReport:
    """Build the audit report of a simulation run.

    Parameters
    ----------
    run_dir : str or Path
        The run directory (see the module docstring).
    canary_result : Path or mapping, optional
        Empirical canary audit results (a :meth:`CanaryAuditResult.to_mapping`, or
        ``{"runs": [...]}`` of them as ``simulations/audit_canaries.py --json`` writes, or a
        JSON file of either); by default ``RUN_DIR/canary-audit.json`` when present.

    Returns
    -------
    AuditReport
        With :attr:`AuditReport.sha256` set (see :func:`report_sha256`).

    Raises
    ------
    AuditInputError
        If ``run_dir`` does not exist, is not a directory, or holds neither ``run.json``
        nor ``sites/``.
    """
    root = Path(run_dir)
    folder = RunFolder(root)
    if not root.exists():
        raise AuditInputError(f"RUN_DIR {str(root)!r} does not exist")
    if not root.is_dir():
        raise AuditInputError(f"RUN_DIR {str(root)!r} is not a directory")
    if not folder.run_path.is_file() and not folder.sites_dir.is_dir():
        raise AuditInputError(f"RUN_DIR {str(root)!r} holds no run (no {RUN_FILE}, "
                              f"no {SITES_DIR}/)")
    flags: list[Flag] = []
    run = _read_json(folder, folder.run_path, flags)
    metrics = _read_jsonl(folder, folder.metrics_path, flags)
    participation = _read_jsonl(folder, folder.participation_path, flags)
    rounds = _aggregate_rounds(participation, metrics)
    config = upgrade_keys(run["config"]) if isinstance(run.get("config"), dict) else {}
    num_rounds = max((r.round for r in rounds), default=0)  # completed, not planned
    run_id = str(run["run_id"]) if "run_id" in run else None

    dirs = _site_dirs(folder)
    signed = _signed_summaries(folder, config, flags)
    seen = {s for r in rounds for s in (*r.sampled, *r.contributed, *r.dropped)}
    sites = []
    for name in sorted(set(dirs) | seen | set(signed)):
        site, notes = build_site(name, dirs.get(name), run_id=run_id, num_rounds=num_rounds,
                                 rounds=rounds, metrics=metrics, signed=signed.get(name))
        sites.append(site)
        flags.extend(Flag(sev, site.site_id, msg) for sev, msg in notes)
    empirical = _empirical(folder, canary_result, flags)
    site_notes: list[tuple[str, str]] = []
    site_level = build_site_level(participation, config, site_notes)
    flags.extend(Flag(sev, None, msg) for sev, msg in site_notes)
    if site_level is not None and site_level.mode == "distributed":
        site_level = _with_site_ledgers(site_level, dirs, participation, run_id, flags, signed)
    round0 = next((m for m in metrics if m["round"] == 0), {})
    report = AuditReport(
        schema_version=SCHEMA_VERSION,
        mode="deployment" if run.get("mode") == "deployment" else "simulation", run_id=run_id,
        created=str(run["created"]) if "created" in run else None,
        config=dict(config),
        versions=dict(run["versions"]) if isinstance(run.get("versions"), dict) else {},
        num_rounds=num_rounds, sites=tuple(sites), rounds=rounds,
        initial_eval_loss=_num_or_none(round0.get("eval_loss")),
        empirical=empirical, flags=tuple(flags), site_level=site_level,
    )
    report = dataclasses.replace(report, sha256=report_sha256(report))
    logger.info("audit of %s: %d sites, %d rounds, %d red flags, sha256 %s", root, len(sites),
                num_rounds, len(report.red_flags), report.sha256[:16])
    return report


# ---- JSON form and digest -------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Dataclasses, mappings, tuples -> JSON types; non-finite floats -> None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def report_data(report: AuditReport, *, with_digest: bool = True) -> dict[str, Any]:
    """Return the report as JSON-ready data (the object ``schema.json`` describes).

    ``sha256`` is left out when ``with_digest`` is false (that is what it is computed over).
    """
    data = _jsonable(report)
    data["kind"] = "confide-audit-report"
    for site, site_data in zip(report.sites, data["sites"], strict=True):
        site_data["verified"] = site.verification.verified
    data["all_verified"] = report.all_verified
    if not with_digest:
        del data["sha256"]
    if data.get("site_level") is None:  # runs without site-level DP keep their exact form
        data.pop("site_level", None)
    return data  # type: ignore[no-any-return]


def report_sha256(report: AuditReport) -> str:
    """SHA-256 (hex) of the report's data without its ``sha256`` field.

    Over the canonical JSON (sorted keys, no spaces, ASCII). Building the report twice from
    the same RUN_DIR gives the same digest: nothing time- or path-dependent is in the data.
    """
    return hashlib.sha256(canonical_json(report_data(report, with_digest=False))).hexdigest()
