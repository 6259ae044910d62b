"""Each site's own site-level ledger, read beside the coordinator's site-level accounting.

A site prices every site-level DP round itself and charges it, before its noised vector
leaves, in ``site-level-ledger.json`` in its state directory
(:class:`privacy.ddg.site_ledger.SiteLevelLedger`). The audit has two copies of it:

* **signed**: every ledger summary a site sends covers this run's site-level charges, their
  ε and digest (:mod:`privacy.ledger_summary`); the coordinator keeps the latest one per site
  in ``RUN_DIR/ledger-summaries/``, so a deployment's audit shows each site's own site-level ε
  from what the coordinator received;
* **the file**, from ``RUN_DIR/sites/<site>/`` when it is there (a simulation keeps every
  site's state directory there; a deployed site's operator hands it over with
  ``confide client export-ledger``), checked against the signed charges: a charge the site
  signed that the file holds differently or not at all, or a charge for a round the site had
  already signed without it, is a red flag (edited after signing).

Per site it shows the site-level ε after the site's last charge of this run next to the ε
the report states. A site's own ledger holding **more** site-level ε than the report states
is a red flag: the report understates what that site spent (a round the site paid for that
the coordinator records as refused, or an understated price).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MATCH_RTOL", "SignedSiteLevel", "SiteOwnLedger", "build_site_ledgers",
           "site_ledger_rows"]

#: the site's own ε may exceed the report's by this relative tolerance before it is red
MATCH_RTOL = 0.01
_FILE = "site-level-ledger.json"  # privacy.ddg.site_ledger.SITE_LEVEL_LEDGER
_FORMAT = "confide-site-level-ledger/1"


@dataclass(frozen=True)
class SignedSiteLevel:
    """A site's site-level charges of the run as it signed them in its latest summary."""

    #: the summary's signature verified and its content (digest, ε, records) holds
    valid: bool
    #: the round after which the site signed it
    round: int | None
    charges: tuple[Mapping[str, Any], ...]
    epsilon: float | None


@dataclass(frozen=True)
class SiteOwnLedger:
    """One site's site-level ledger, as far as this run goes."""

    site_id: str
    #: ``found`` (the file in RUN_DIR/sites/<site>/), ``signed`` (no file: the signed summary's
    #: charges), ``missing`` (neither) or ``unreadable`` (a file that does not parse)
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
    #: the site-level part of the site's latest signed summary: ``valid``, ``invalid``, ``none``
    signed: str = "none"
    #: site-level ε after the site's last signed charge of this run
    signed_epsilon: float | None = None
    signed_rounds: tuple[int, ...] = ()
    #: the file agrees with the signed charges (None: not both there to compare)
    matches_signed: bool | None = None


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


def _rounds(rows: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    return tuple(sorted({int(r["round"]) for r in rows if type(r.get("round")) is int}))


def _eps(rows: Sequence[Mapping[str, Any]]) -> float | None:
    values = [e for e in (_num(r.get("epsilon_after")) for r in rows) if e is not None]
    return max(values) if values else (0.0 if not rows else None)


def _signed_mismatch(mine: Sequence[Mapping[str, Any]], signed: SignedSiteLevel) -> list[str]:
    """How the file's charges of the run differ from what the site signed (empty: agree)."""
    from privacy.ledger import canonical_json

    by_round = {r.get("round"): r for r in mine}
    out = []
    for c in signed.charges:
        row = by_round.get(c["round"])
        if row is None:
            out.append(f"round {c['round']} signed but not in the file")
        elif canonical_json(dict(row)) != canonical_json(dict(c)):
            out.append(f"round {c['round']} differs from the signed charge")
    signed_rounds = {c["round"] for c in signed.charges}
    upto = signed.round if signed.round is not None else 0
    out += [f"round {r} charged in the file but absent from the summary signed after round "
            f"{upto}" for r in _rounds(mine) if r <= upto and r not in signed_rounds]
    return out


def _recomputed(signed: SignedSiteLevel) -> float | None:
    """Site-level ε of the signed records, composed with the site's accountant."""
    from privacy.ddg.accounting import SiteLevelDPRound, site_level_epsilon

    if not signed.charges:
        return 0.0
    delta = _num(signed.charges[-1].get("delta"))
    if delta is None:
        return None
    records = [SiteLevelDPRound.from_mapping(c["record"]) for c in signed.charges]
    return site_level_epsilon(records, delta=delta)


def _one(name: str, site_dir: Path | None, run_id: str | None, stated: float | None,
         released: set[int], flags: list[tuple[str, str, str]],
         signed: SignedSiteLevel | None = None) -> SiteOwnLedger:
    sig = "none" if signed is None else "valid" if signed.valid else "invalid"
    good = signed if signed is not None and signed.valid else None
    s_eps = None if good is None else good.epsilon
    s_rounds = () if good is None else _rounds(good.charges)
    if good is not None:
        again = _recomputed(good)
        if again is not None and s_eps is not None and s_eps < again * (1 - MATCH_RTOL):
            flags.append(("red", name, (
                f"the site signed site-level eps {s_eps:.4g}, but its signed charges compose "
                f"to {again:.4g}: the site understates its own site-level spending")))
    extra = {"signed": sig, "signed_epsilon": s_eps, "signed_rounds": s_rounds}
    path = None if site_dir is None else site_dir / _FILE
    mine: list[Mapping[str, Any]] = []
    status, problem, matches = "missing", None, None
    if path is not None and path.is_file():
        try:
            rows = _read(path)
        except ValueError as exc:
            flags.append(("warning", name, f"site-level ledger: {exc}"))
            return SiteOwnLedger(name, "unreadable", (), None, None, None, stated, False,
                                 str(exc), **extra)  # type: ignore[arg-type]
        mine = [r for r in rows if run_id is None or str(r.get("run_id")) == run_id]
        status = "found"
        if good is not None:
            wrong = _signed_mismatch(mine, good)
            matches = not wrong
            if wrong:
                flags.append(("red", name, (
                    f"the site-level ledger in RUN_DIR/sites/{name}/ does not match what the "
                    f"site signed (edited after signing?): {'; '.join(wrong)}")))
    elif good is not None:
        mine, status = list(good.charges), "signed"
    else:
        problem = (f"no {_FILE} in RUN_DIR/sites/{name}/ and no signed ledger summary covering "
                   "it (a deployed site's operator exports it with `confide client "
                   "export-ledger`)")
        if signed is not None:
            problem = "the site-level part of the signed ledger summary fails verification"
        return SiteOwnLedger(name, "missing", (), None, None, None, stated, False, problem,
                             **extra)  # type: ignore[arg-type]
    charged = _rounds(mine)
    eps = _eps(mine)
    if s_eps is not None and (eps is None or s_eps > eps):
        eps = s_eps  # the larger of what the site signed and what its file holds
    last = mine[-1] if mine else {}
    exceeds = (eps is not None and eps > 0.0
               and (stated is None or eps > stated * (1 + MATCH_RTOL)))
    if exceeds:
        unreleased = [r for r in sorted({*charged, *s_rounds}) if r not in released]
        why = (f"; it paid for round(s) {', '.join(map(str, unreleased))}, which the "
               "coordinator records as not released" if unreleased else "")
        said = "no" if stated is None else format(stated, ".4g")
        flags.append(("red", name, (
            f"the site's own site-level ledger shows site-level eps {eps:.4g} after "
            f"{len(charged)} charged round(s), more than the {said} the report states{why}")))
    return SiteOwnLedger(name, status, charged, eps, _num(last.get("budget")),
                         _num(last.get("delta")), stated, exceeds, problem, sig, s_eps,
                         s_rounds, matches)


def build_site_ledgers(site_dirs: Mapping[str, Path], participants: Sequence[str], *,
                       run_id: str | None, stated: float | None, released: set[int],
                       flags: list[tuple[str, str, str]],
                       signed: Mapping[str, SignedSiteLevel] | None = None
                       ) -> tuple[SiteOwnLedger, ...]:
    """Read the site-level ledger of every site in ``site_dirs``, ``participants`` or ``signed``.

    ``stated`` is the site-level ε the report states, ``released`` the rounds the coordinator
    records as released, ``signed`` each site's site-level charges from its latest signed
    ledger summary; ``flags`` gets ``(severity, site, message)``.
    """
    signed = signed or {}
    names = sorted(set(participants) | {n for n, d in site_dirs.items() if (d / _FILE).is_file()}
                   | {n for n, s in signed.items() if s.charges})
    return tuple(_one(n, site_dirs.get(n), run_id, stated, released, flags, signed.get(n))
                 for n in names)


def _f(x: float | None) -> str:
    return "-" if x is None else format(x, ".4g")


SITE_LEDGER_HEAD = ["site", "site's own ledger", "rounds charged", "site-level ε (site's ledger)",
                    "site budget", "site-level ε (report)", "signed by the site", "check"]


def _signed_cell(s: SiteOwnLedger) -> str:
    if s.signed == "valid":
        return _f(s.signed_epsilon) + (" (file DIFFERS)" if s.matches_signed is False else "")
    return "INVALID" if s.signed == "invalid" else "-"


def site_ledger_rows(ledgers: Sequence[SiteOwnLedger]) -> list[list[str]]:
    """Table rows (cells as text) of :data:`SITE_LEDGER_HEAD`."""
    return [[s.site_id, s.status, ", ".join(map(str, s.rounds_charged)) or "-", _f(s.epsilon),
             _f(s.budget_epsilon), _f(s.coordinator_epsilon), _signed_cell(s),
             "EXCEEDS THE REPORT" if s.exceeds_report else
             "DOES NOT MATCH THE SIGNED LEDGER" if s.matches_signed is False else
             "within the report" if s.status in ("found", "signed") else "not checked"]
            for s in ledgers]
