"""Each site's own site-level ledger, read beside the coordinator's site-level accounting.

A site prices every site-level DP round itself and charges it, before its noised vector
leaves, in ``site-level-ledger.json`` in its state directory
(:class:`privacy.ddg.site_ledger.SiteLevelLedger`). The audit reads that file from
``RUN_DIR/sites/<site>/`` when it is there (a simulation keeps every site's state directory
there; a deployed site's operator copies the file in) and shows, per site, the site-level ε
after the site's last charge of this run next to the ε the coordinator's records state. A
site's own ledger holding **more** site-level ε than the report states is a red flag: the
report understates what that site spent (a round the site paid for that the coordinator
records as refused, or an understated price).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MATCH_RTOL", "SiteOwnLedger", "build_site_ledgers", "site_ledger_rows"]

#: the site's own ε may exceed the report's by this relative tolerance before it is red
MATCH_RTOL = 0.01
_FILE = "site-level-ledger.json"  # privacy.ddg.site_ledger.SITE_LEVEL_LEDGER
_FORMAT = "confide-site-level-ledger/1"


@dataclass(frozen=True)
class SiteOwnLedger:
    """One site's site-level ledger, as far as this run goes."""

    site_id: str
    #: ``found``, ``missing`` (no file in RUN_DIR/sites/<site>/) or ``unreadable``
    status: str
    rounds_charged: tuple[int, ...]
    #: site-level ε after the site's last charge of this run (its own accountant)
    epsilon: float | None
    budget_epsilon: float | None
    delta: float | None
    #: site-level ε the report states (the coordinator's, after its last released round)
    coordinator_epsilon: float | None
    #: the site's own ledger shows more site-level ε than the report states
    exceeds_report: bool
    problem: str | None


def _num(x: Any) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _read(path: Path) -> list[Mapping[str, Any]]:
    """Return the charges of a site-level ledger file; ValueError names what is wrong."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{_FILE} unreadable: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"{_FILE} is not a site-level ledger (format {_FORMAT!r} expected)")
    rows = doc.get("rounds")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{_FILE}: 'rounds' is not a list of charges")
    return rows


def _one(name: str, site_dir: Path | None, run_id: str | None, stated: float | None,
         released: set[int], flags: list[tuple[str, str, str]]) -> SiteOwnLedger:
    path = None if site_dir is None else site_dir / _FILE
    if path is None or not path.is_file():
        return SiteOwnLedger(name, "missing", (), None, None, None, stated, False,
                             f"no {_FILE} in RUN_DIR/sites/{name}/ (a deployed site's "
                             "operator copies it from the site's state directory)")
    try:
        rows = _read(path)
    except ValueError as exc:
        flags.append(("warning", name, f"site-level ledger: {exc}"))
        return SiteOwnLedger(name, "unreadable", (), None, None, None, stated, False, str(exc))
    mine = [r for r in rows if run_id is None or str(r.get("run_id")) == run_id]
    charged = tuple(sorted({int(r["round"]) for r in mine if type(r.get("round")) is int}))
    eps_values = [e for e in (_num(r.get("epsilon_after")) for r in mine) if e is not None]
    eps = max(eps_values) if eps_values else (0.0 if not mine else None)
    last = mine[-1] if mine else {}
    exceeds = (eps is not None and eps > 0.0
               and (stated is None or eps > stated * (1 + MATCH_RTOL)))
    if exceeds:
        unreleased = [r for r in charged if r not in released]
        why = (f"; it paid for round(s) {', '.join(map(str, unreleased))}, which the "
               "coordinator records as not released" if unreleased else "")
        said = "no" if stated is None else format(stated, ".4g")
        flags.append(("red", name, (
            f"the site's own site-level ledger shows site-level eps {eps:.4g} after "
            f"{len(charged)} charged round(s), more than the {said} the report states{why}")))
    return SiteOwnLedger(name, "found", charged, eps, _num(last.get("budget")),
                         _num(last.get("delta")), stated, exceeds, None)


def build_site_ledgers(site_dirs: Mapping[str, Path], participants: Sequence[str], *,
                       run_id: str | None, stated: float | None, released: set[int],
                       flags: list[tuple[str, str, str]]) -> tuple[SiteOwnLedger, ...]:
    """Read the site-level ledger of every site in ``site_dirs`` or ``participants``.

    ``stated`` is the site-level ε the report states, ``released`` the rounds the coordinator
    records as released; ``flags`` gets ``(severity, site, message)``.
    """
    names = sorted(set(participants) | {n for n, d in site_dirs.items() if (d / _FILE).is_file()})
    return tuple(_one(n, site_dirs.get(n), run_id, stated, released, flags) for n in names)


def _f(x: float | None) -> str:
    return "-" if x is None else format(x, ".4g")


SITE_LEDGER_HEAD = ["site", "site's own ledger", "rounds charged", "site-level ε (site's ledger)",
                    "site budget", "site-level ε (report)", "check"]


def site_ledger_rows(ledgers: Sequence[SiteOwnLedger]) -> list[list[str]]:
    """Table rows (cells as text) of :data:`SITE_LEDGER_HEAD`."""
    return [[s.site_id, s.status, ", ".join(map(str, s.rounds_charged)) or "-", _f(s.epsilon),
             _f(s.budget_epsilon), _f(s.coordinator_epsilon),
             "EXCEEDS THE REPORT" if s.exceeds_report else
             "within the report" if s.status == "found" else "not checked"]
            for s in ledgers]
