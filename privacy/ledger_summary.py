"""Signed ledger summaries: what a site tells the coordinator about its privacy ledger.

A site's ledger lives at the site. With every update (and every decline) the site sends a
*summary* of it, signed with its long-term Ed25519 identity key (the key enrolled for
secure aggregation)::

    {"format": "confide-ledger-summary/1", "site": "bank", "run_id": "...", "round": 3,
     "count": 7, "head": "<hash of entry count-1>", "policy": {...},
     "entries": [<every ledger entry, oldest first, as in the ledger file>]}

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

import json
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
    "SummaryError",
    "check_summary",
    "make_summary",
    "sign_summary",
    "summary_entries",
    "verify_summary_signature",
]

SUMMARY_FORMAT = "confide-ledger-summary/1"
SIGNING_CONTEXT = b"confide ledger summary v1\x00"
_KEYS = ("format", "site", "run_id", "round", "count", "head", "policy", "entries")


class SummaryError(ValueError):
    """A ledger summary is malformed (the message names the field)."""


def make_summary(entries: Sequence[LedgerEntry], *, site: str, run_id: str, round_num: int,
                 policy: Mapping[str, Any]) -> dict[str, Any]:
    """Return the summary of a ledger's ``entries`` after ``round_num`` of ``run_id``."""
    return {
        "format": SUMMARY_FORMAT, "site": str(site), "run_id": str(run_id),
        "round": int(round_num), "count": len(entries),
        "head": entries[-1].hash if entries else GENESIS_HASH,
        "policy": dict(policy), "entries": [e.to_record() for e in entries],
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
    if set(summary) != set(_KEYS):
        missing, extra = sorted(set(_KEYS) - set(summary)), sorted(set(summary) - set(_KEYS))
        raise SummaryError(f"ledger summary fields differ (missing {missing}, unexpected {extra})")
    if summary["format"] != SUMMARY_FORMAT:
        raise SummaryError(f"ledger summary `format` is {summary['format']!r}, "
                           f"expected {SUMMARY_FORMAT!r}")
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
    return problems


def dumps(summary: Mapping[str, Any]) -> str:
    """Compact JSON of a summary (for a message field)."""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"))
