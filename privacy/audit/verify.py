"""Read a site's ledger for an audit without trusting it: verify what can be, salvage the rest.

:class:`~privacy.ledger.PrivacyLedger` refuses a ledger that fails verification, which is
right for a site that must keep spending privacy but wrong for an audit: a privacy officer
still needs to see what the file says, marked as unverified. :func:`check_ledger` parses
every line it can, checks the hash chain line by line, and says which lines break it.

A site's ledger is *verified* when

* simulation (``method="hash-chain"``): every line parses, ``seq`` counts up from 0, every
  ``prev_hash`` is the previous line's ``hash`` and every ``hash`` matches its content (the
  same rules :class:`~privacy.ledger.PrivacyLedger` enforces), and the run's own records
  (``metrics.jsonl``, ``participation.jsonl``) agree with it (a cut-off tail shows up as a
  round the site contributed to without a ledger entry);
* with a signed summary (``method="signature"``: the site sent one with every update, see
  :mod:`privacy.ledger_summary`): additionally the summary's Ed25519 signature verifies under
  the site's enrolled identity key and, when the full ledger is there too, that ledger holds
  the signed head at the signed position. Without the full ledger (a deployment whose site
  has not exported it) the signed summary's own entries are the ledger.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from privacy.ledger import (
    GENESIS_HASH,
    LEDGER_FILENAME,
    OPTIONAL_FIELDS,
    LedgerEntry,
    LedgerError,
    PrivacyLedger,
    link_problems,
)
from privacy.noise_source import NOISE_SOURCES

__all__ = [
    "LEDGER_FILENAMES",
    "LedgerCheck",
    "LedgerLine",
    "SummaryCheck",
    "Verification",
    "check_ledger",
    "check_signed_summary",
    "find_ledger",
    "ledger_holds_head",
]

logger = logging.getLogger(__name__)

#: Ledger file names looked for in a site's directory, in order.
LEDGER_FILENAMES: tuple[str, ...] = (LEDGER_FILENAME, "ledger.jsonl")
_FIELDS = tuple(f.name for f in fields(LedgerEntry) if f.name not in OPTIONAL_FIELDS)


@dataclass(frozen=True)
class Verification:
    """Whether a site's privacy record can be trusted, and why not.

    Attributes
    ----------
    verified : bool
        The record passed every check of ``method`` (the report's VERIFIED / UNVERIFIED).
    method : {"hash-chain", "signature"}
        ``hash-chain``: the ledger's own chain plus the run's records (simulation).
        ``signature``: the chain head is also signed by the site's identity key (deployment).
    chain_intact : bool
        Every ledger line parses and the hash chain holds from the first line to the last.
    signature : str or None
        ``valid`` / ``invalid`` / ``missing`` for ``method="signature"``; None otherwise.
    head : str
        Hash of the last ledger line (``GENESIS_HASH`` for an empty ledger).
    problems : tuple of str
        Every failed check, each naming the file / line / round concerned.
    """

    verified: bool
    method: str
    chain_intact: bool
    signature: str | None
    head: str
    problems: tuple[str, ...]


@dataclass(frozen=True)
class LedgerLine:
    """One ledger line as read, with whether it passed the chain checks."""

    line: int
    entry: LedgerEntry
    intact: bool


@dataclass(frozen=True)
class LedgerCheck:
    """A ledger read for an audit: its readable lines and the chain verdict."""

    path: Path | None
    lines: tuple[LedgerLine, ...]
    chain_intact: bool
    head: str
    problems: tuple[str, ...]


def find_ledger(site_dir: Path) -> Path | None:
    """Find the ledger file in ``site_dir`` (see :data:`LEDGER_FILENAMES`), or None."""
    for name in LEDGER_FILENAMES:
        path = site_dir / name
        if path.is_file():
            return path
    return None


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _coerce(obj: Any) -> LedgerEntry | str:
    """Make a :class:`LedgerEntry` from a parsed line, or say what is wrong with it."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if not set(_FIELDS) <= set(obj) <= set(_FIELDS) | set(OPTIONAL_FIELDS):
        missing = sorted(set(_FIELDS) - set(obj))
        extra = sorted(set(obj) - set(_FIELDS) - set(OPTIONAL_FIELDS))
        return f"fields differ from the ledger format (missing {missing}, unexpected {extra})"
    if obj.get("noise_source") not in (None, *NOISE_SOURCES):  # null: unrecorded, as absent
        return f"`noise_source` must be one of {NOISE_SOURCES}, got {obj['noise_source']!r}"
    for name in ("seq", "round", "steps"):
        if type(obj[name]) is not int or obj[name] < 0:
            return f"`{name}` must be an int >= 0, got {obj[name]!r}"
    for name in ("run_id", "status", "accountant", "timestamp", "prev_hash", "hash"):
        if not isinstance(obj[name], str):
            return f"`{name}` must be a string, got {obj[name]!r}"
    for name in ("delta", "epsilon_after"):
        if not _num(obj[name]):
            return f"`{name}` must be a finite number, got {obj[name]!r}"
    for name in ("sample_rate", "noise_multiplier", "max_grad_norm"):
        if obj[name] is not None and not _num(obj[name]):
            return f"`{name}` must be a finite number or null, got {obj[name]!r}"
    if obj["reason"] is not None and not isinstance(obj["reason"], str):
        return f"`reason` must be a string or null, got {obj['reason']!r}"
    return LedgerEntry(**obj)


def check_ledger(path: Path | None) -> LedgerCheck:
    """Read and verify a ledger file line by line; never raises on bad content.

    Parameters
    ----------
    path : Path or None
        The ledger file; None (no ledger found) gives an empty, unverified check.

    Returns
    -------
    LedgerCheck
        Every line that parses into an entry (marked ``intact`` or not), whether the
        whole chain holds, and one problem per failed check.
    """
    if path is None:
        return LedgerCheck(None, (), False, GENESIS_HASH, ("no privacy ledger found",))
    problems: list[str] = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return LedgerCheck(path, (), False, GENESIS_HASH, (f"cannot read {path}: {exc}",))
    text_lines = raw.split(b"\n")
    if text_lines[-1] != b"":
        problems.append(f"{path}:{len(text_lines)}: truncated line (no newline at the end)")
    else:
        text_lines = text_lines[:-1]
    out: list[LedgerLine] = []
    prev = GENESIS_HASH
    for lineno, line in enumerate(text_lines, start=1):
        try:
            parsed = _coerce(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            parsed = f"malformed line ({exc})"
        if isinstance(parsed, str):
            problems.append(f"{path}:{lineno}: {parsed}")
            prev = ""  # the next line cannot chain onto an unreadable one
            continue
        entry = parsed
        wrong = link_problems(entry, lineno - 1, prev)
        problems.extend(f"{path}:{lineno}: {w}" for w in wrong)
        out.append(LedgerLine(lineno, entry, not wrong))
        prev = entry.hash
    if not problems and path.name == LEDGER_FILENAME:
        try:  # the site's own, stricter reader must accept it too
            PrivacyLedger(path.parent)
        except LedgerError as exc:
            problems.append(str(exc))
    head = out[-1].entry.hash if out else GENESIS_HASH
    if problems:
        logger.warning("ledger %s failed verification: %s", path, problems[0])
    return LedgerCheck(path, tuple(out), not problems, head, tuple(problems))


@dataclass(frozen=True)
class SummaryCheck:
    """A site's signed ledger summary as the coordinator stored it, checked.

    Attributes
    ----------
    signature : {"valid", "invalid", "no-key"}
        ``no-key``: the site has no enrolled public key in the run to check against.
    problems : tuple of str
        Every failed check (signature, summary chain, names).
    ledger : LedgerCheck
        The summary's entries as a ledger (used when the site's full ledger is not there).
    round : int or None
        The round after which the site signed it.
    policy : mapping
        The site's policy as it signed it.
    site_level : mapping or None
        The summary's ``site_level`` (the site's own site-level charges of the run, their ε
        and digest, :mod:`privacy.ledger_summary`); None in a format-1 summary without it.
    """

    signature: str
    problems: tuple[str, ...]
    ledger: LedgerCheck
    round: int | None
    count: int
    head: str
    policy: dict[str, Any]
    site_level: dict[str, Any] | None = None


def check_signed_summary(doc: Any, *, site: str, public_key: bytes | None,
                         label: str) -> SummaryCheck:
    """Check a stored ``{"summary", "signature"}`` of ``site``; never raises on content."""
    from privacy.ledger_summary import check_summary, summary_entries, verify_summary_signature
    from privacy.secagg import SecAggError
    from privacy.secagg.keys import load_identity_public_key

    empty = LedgerCheck(None, (), False, GENESIS_HASH, ())
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), dict):
        return SummaryCheck("invalid", (f"{label}: not a stored ledger summary",), empty,
                            None, 0, GENESIS_HASH, {})
    summary, sig = doc["summary"], str(doc.get("signature", ""))
    problems: list[str] = []
    if public_key is None:
        signature = "no-key"
        problems.append(f"{label}: site {site!r} has no enrolled identity key in this run; "
                        "the signature cannot be checked")
    else:
        try:
            ok = verify_summary_signature(summary, sig, load_identity_public_key(public_key))
        except SecAggError as exc:
            ok, problems = False, [*problems, f"{label}: enrolled key unusable: {exc}"]
        signature = "valid" if ok else "invalid"
        if not ok:
            problems.append(f"{label}: signature INVALID: the summary was altered or not "
                            f"signed by {site!r}'s enrolled identity key")
    if summary.get("site") != site:
        problems.append(f"{label}: the summary names site {summary.get('site')!r}, "
                        f"stored as {site!r}")
    problems += [f"{label}: {p}" for p in check_summary(summary)]
    try:
        entries = summary_entries(summary)
    except ValueError:
        entries = []
    lines = tuple(LedgerLine(i + 1, e, not problems) for i, e in enumerate(entries))
    ledger = LedgerCheck(None, lines, not problems,
                         entries[-1].hash if entries else GENESIS_HASH, tuple(problems))
    rnd = summary.get("round")
    count = summary.get("count")
    policy = summary.get("policy")
    site_level = summary.get("site_level")
    return SummaryCheck(signature, tuple(problems), ledger,
                        rnd if type(rnd) is int else None,
                        count if type(count) is int else len(entries),
                        str(summary.get("head", GENESIS_HASH)),
                        dict(policy) if isinstance(policy, dict) else {},
                        dict(site_level) if isinstance(site_level, dict) else None)


def ledger_holds_head(check: LedgerCheck, summary: SummaryCheck) -> str | None:
    """Report a problem when the full ledger does not hold the signed head at its position."""
    if summary.count == 0:
        return None
    line = next((ln for ln in check.lines if ln.line == summary.count), None)
    if line is None:
        return (f"the ledger has fewer than the {summary.count} entries the site signed "
                f"after round {summary.round} (cut short?)")
    if line.entry.hash != summary.head:
        return (f"ledger line {summary.count} is not the entry the site signed after round "
                f"{summary.round} (edited after signing?)")
    return None
