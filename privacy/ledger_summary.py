"""Signed ledger summaries: what a site tells the coordinator about its privacy ledger.

A site's ledger lives at the site. With every update (and every decline) the site sends a
*summary* of it, signed with its long-term Ed25519 identity key (the key enrolled for
secure aggregation)::

    {"format": "confide-ledger-summary/2", "site": "bank", "run_id": "...", "round": 3,
     "count": 7, "head": "<hash of entry count-1>", "policy": {...},
     "entries": [<every ledger entry, oldest first, as in the ledger file>],
     "site_level": {"charges": [<this run's rows of site-level-ledger.json, oldest first>],
                    "epsilon": <site-level eps after the last of them, 0 for none>,
                    "sha256": "<sha256 of canonical_json(charges)>"}}

``site_level`` covers the site's own site-level ledger
(:mod:`privacy.ddg.site_ledger`): what the site charged itself for site-level DP in this run,
so the audit shows a deployed site's site-level ε from what the coordinator received, and
checks an exported ``site-level-ledger.json`` against the signed digest. Summaries of format
``confide-ledger-summary/1`` (no ``site_level``) are still read.

The signature covers ``SIGNING_CONTEXT || canonical_json(summary)``. The coordinator stores
the latest summary per site in ``RUN_DIR/ledger-summaries/<site>.json``; the audit then

* verifies the signature against the site's enrolled public key,
* checks the summary's entries form an intact hash chain ending at ``head``, and
* where the site also handed over its full ledger (``confide client export-ledger``), checks
  that ledger holds the signed head at position ``count - 1``: a ledger edited after the fact
  no longer matches what the site signed while the run was going on.

A summary carries only what the ledger records (DP parameters and ε per round), never data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.ledger import (
    GENESIS_HASH,
    LedgerEntry,
    canonical_json,
    entry_problem,
    link_problems,
)

__all__ = [
    "SIGNING_CONTEXT",
    "SUMMARY_FORMAT",
    "SUMMARY_FORMAT_V1",
    "SummaryError",
    "check_summary",
    "make_summary",
    "sign_summary",
    "site_level_charges_digest",
    "site_level_part",
    "site_level_problems",
    "summary_entries",
    "verify_summary_signature",
]

SUMMARY_FORMAT = "confide-ledger-summary/2"
#: the first format, without ``site_level``: still read (old run folders)
SUMMARY_FORMAT_V1 = "confide-ledger-summary/1"
SIGNING_CONTEXT = b"confide ledger summary v1\x00"
_KEYS_V1 = ("format", "site", "run_id", "round", "count", "head", "policy", "entries")
_KEYS_BY_FORMAT = {SUMMARY_FORMAT_V1: _KEYS_V1, SUMMARY_FORMAT: (*_KEYS_V1, "site_level")}
_SITE_LEVEL_KEYS = ("charges", "epsilon", "sha256")
_CHARGE_KEYS = ("run_id", "round", "record", "epsilon_after", "budget", "delta")


class SummaryError(ValueError):
    """A ledger summary is malformed (the message names the field)."""


def site_level_charges_digest(charges: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 (hex) of ``canonical_json`` of a run's site-level charges, oldest first."""
    return hashlib.sha256(canonical_json([dict(c) for c in charges])).hexdigest()


def site_level_part(charges: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the ``site_level`` field of a summary: one run's charges, their ε and digest."""
    rows = [dict(c) for c in charges]
    eps = max((float(c["epsilon_after"]) for c in rows), default=0.0)
    return {"charges": rows, "epsilon": eps, "sha256": site_level_charges_digest(rows)}


def make_summary(entries: Sequence[LedgerEntry], *, site: str, run_id: str, round_num: int,
                 policy: Mapping[str, Any],
                 site_level_charges: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Return the summary of a ledger's ``entries`` after ``round_num`` of ``run_id``.

    ``site_level_charges`` are the rows of the site's site-level ledger for ``run_id``
    (:meth:`privacy.ddg.site_ledger.SiteLevelLedger.charges`); none is a signed "none".
    """
    return {
        "format": SUMMARY_FORMAT, "site": str(site), "run_id": str(run_id),
        "round": int(round_num), "count": len(entries),
        "head": entries[-1].hash if entries else GENESIS_HASH,
        "policy": dict(policy), "entries": [e.to_record() for e in entries],
        "site_level": site_level_part(
            [c for c in site_level_charges if str(c.get("run_id")) == str(run_id)]),
    }


def _message(summary: Mapping[str, Any]) -> bytes:
    return SIGNING_CONTEXT + canonical_json(dict(summary))


def sign_summary(summary: Mapping[str, Any], key: Ed25519PrivateKey) -> str:
    """Hex Ed25519 signature of ``summary`` under the site's identity key."""
    return key.sign(_message(summary)).hex()


def verify_summary_signature(summary: Mapping[str, Any], signature_hex: str,
                             public_key: Ed25519PublicKey) -> bool:
    """Whether ``signature_hex`` is the site's signature over exactly ``summary``."""
    try:
        sig = bytes.fromhex(signature_hex)
        public_key.verify(sig, _message(summary))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def summary_entries(summary: Mapping[str, Any]) -> list[LedgerEntry]:
    """Return the summary's ledger entries (raises :class:`SummaryError` naming the bad field)."""
    if not isinstance(summary, Mapping):
        raise SummaryError(f"a ledger summary must be a JSON object, got {type(summary).__name__}")
    keys = _KEYS_BY_FORMAT.get(summary.get("format"))  # type: ignore[arg-type]
    if keys is None:
        raise SummaryError(f"ledger summary `format` is {summary.get('format')!r}, "
                           f"expected one of {sorted(_KEYS_BY_FORMAT)}")
    if set(summary) != set(keys):
        missing, extra = sorted(set(keys) - set(summary)), sorted(set(summary) - set(keys))
        raise SummaryError(f"ledger summary fields differ (missing {missing}, unexpected {extra})")
    if not isinstance(summary["entries"], list):
        raise SummaryError("ledger summary `entries` must be a list")
    out = []
    for i, raw in enumerate(summary["entries"]):
        problem = (f"expected a JSON object, got {type(raw).__name__}"
                   if not isinstance(raw, dict) else entry_problem(raw))
        if problem is not None:
            raise SummaryError(f"ledger summary `entries[{i}]`: {problem}")
        out.append(LedgerEntry(**raw))
    return out


def check_summary(summary: Mapping[str, Any]) -> list[str]:
    """Problems with a summary's own content: chain, count, head (empty when it holds)."""
    try:
        entries = summary_entries(summary)
    except SummaryError as exc:
        return [str(exc)]
    problems = []
    prev = GENESIS_HASH
    for i, e in enumerate(entries):
        problems += [f"summary entry {i}: {p}" for p in link_problems(e, i, prev)]
        prev = e.hash
    if summary["count"] != len(entries):
        problems.append(f"summary `count` is {summary['count']!r} but it holds "
                        f"{len(entries)} entries")
    if summary["head"] != (entries[-1].hash if entries else GENESIS_HASH):
        problems.append("summary `head` is not the hash of its last entry")
    if "site_level" in summary:
        problems += site_level_problems(summary["site_level"], run_id=str(summary["run_id"]))
    return problems


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def site_level_problems(part: Any, *, run_id: str) -> list[str]:
    """Problems with a summary's ``site_level`` field (empty when it holds).

    Each charge must be a site-level ledger row of ``run_id`` whose record validates, rounds
    must not repeat, ``epsilon`` must be the largest ``epsilon_after`` (0 for none) and
    ``sha256`` the digest of the charges.
    """
    from privacy.ddg.accounting import SiteLevelDPRound

    if not isinstance(part, Mapping) or set(part) != set(_SITE_LEVEL_KEYS):
        return [f"summary `site_level` must be an object with fields {list(_SITE_LEVEL_KEYS)}"]
    charges = part["charges"]
    if not isinstance(charges, list):
        return ["summary `site_level.charges` must be a list"]
    problems: list[str] = []
    seen: set[int] = set()
    for i, c in enumerate(charges):
        where = f"summary `site_level.charges[{i}]`"
        if not isinstance(c, Mapping) or set(c) != set(_CHARGE_KEYS):
            problems.append(f"{where} must be an object with fields {list(_CHARGE_KEYS)}")
            continue
        if str(c["run_id"]) != run_id:
            problems.append(f"{where} is of run {c['run_id']!r}, not {run_id!r}")
        if type(c["round"]) is not int or c["round"] < 1 or c["round"] in seen:
            problems.append(f"{where}: `round` must be a new int >= 1, got {c['round']!r}")
        else:
            seen.add(c["round"])
        if not all(_finite(c[k]) for k in ("epsilon_after", "budget", "delta")):
            problems.append(f"{where}: `epsilon_after`, `budget`, `delta` must be finite numbers")
        try:
            SiteLevelDPRound.from_mapping(c["record"])
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            problems.append(f"{where}: `record` is not a site-level DP round ({exc})")
    if problems:
        return problems
    eps = max((float(c["epsilon_after"]) for c in charges), default=0.0)
    if not _finite(part["epsilon"]) or float(part["epsilon"]) != eps:
        problems.append(f"summary `site_level.epsilon` is {part['epsilon']!r}, but its charges "
                        f"end at site-level eps {eps!r}")
    if part["sha256"] != site_level_charges_digest(charges):
        problems.append("summary `site_level.sha256` is not the digest of its charges")
    return problems


def dumps(summary: Mapping[str, Any]) -> str:
    """Compact JSON of a summary (for a message field)."""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"))
