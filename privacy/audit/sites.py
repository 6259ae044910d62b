"""One site's part of the audit report: its ledger, policy, rounds and recomputed ε."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privacy.accounting import Mechanism, epsilon
from privacy.audit.recompute import (
    MATCH_RTOL,
    Recomputation,
    accountant_warnings_quiet,
    recompute,
)
from privacy.audit.verify import (
    LedgerLine,
    SummaryCheck,
    Verification,
    check_ledger,
    find_ledger,
    ledger_holds_head,
)
from protocol.run_folder import METRICS_FILE, PARTICIPATION_FILE, RUN_FILE

if TYPE_CHECKING:
    from privacy.audit.aggregates import AggregateRound

__all__ = ["RoundNote", "SeriesPoint", "SiteReport", "SiteRound", "build_site"]

logger = logging.getLogger(__name__)

POLICY_FILENAME = "policy.json"
_METRIC_RTOL = 1e-6


@dataclass(frozen=True)
class SiteRound:
    """One ledger entry at a site (a round it trained in or declined).

    ``run_id`` is this run's for the rounds of the run; entries of earlier runs on the same
    data are listed too (``in_aggregate`` false), so ε recomputes from the report alone.
    """

    run_id: str
    round: int
    status: str
    reason: str | None
    steps: int
    sample_rate: float | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    epsilon_after: float
    epsilon_recomputed: float | None
    in_aggregate: bool
    dropped: bool
    ledger_line: int
    intact: bool
    #: ``csprng`` / ``seeded`` as the ledger records it; None: not recorded (older ledger)
    noise_source: str | None = None


@dataclass(frozen=True)
class RoundNote:
    """A round and why the site was not in its aggregate."""

    round: int
    reason: str


@dataclass(frozen=True)
class SeriesPoint:
    """ε the ledger states after a round (carried over rounds the site did not train in)."""

    round: int
    epsilon: float


@dataclass(frozen=True)
class SiteReport:
    """Everything the report says about one site."""

    site_id: str
    num_examples: int | None
    delta: float | None
    accountant: str | None
    budget_epsilon: float | None
    max_grad_norm: float | None
    policy: Mapping[str, Any]
    epsilon: float
    epsilon_before_run: float
    budget_left: float | None
    rounds_trained: int
    rounds_declined: int
    rounds_dropped: int
    rounds_failed: int
    declined: tuple[RoundNote, ...]
    failed: tuple[RoundNote, ...]
    rounds: tuple[SiteRound, ...]
    epsilon_series: tuple[SeriesPoint, ...]
    recomputation: Recomputation | None
    verification: Verification
    #: Noise of the run's trained rounds: ``csprng``, ``seeded``, ``unrecorded``, ``mixed``
    #: (None: no trained round in this run)
    noise_source: str | None = None
    #: What the site released to the coordinator in the clear in this run (by default under
    #: secure aggregation: its signed ledger summary only; every other figure was a sum)
    released_in_clear: tuple[str, ...] = ()


#: what :func:`released_in_clear` lists
RELEASED_LEDGER = "signed ledger summary (epsilon, delta, q, sigma, steps)"
RELEASED_PLAIN = "per-site update, train and evaluation metrics (secure aggregation off)"
RELEASED_BY_POLICY = "per-site train and evaluation metrics (its policy's release-metrics)"


def released_in_clear(name: str, policy: Mapping[str, Any],
                      metrics: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """List what one site sent the coordinator in the clear.

    Taken from its policy and the metrics rows (a row with ``secure_evaluation``: the round
    ran under secure aggregation).
    """
    out = [RELEASED_LEDGER] if policy else []
    secure = any(m.get("secure_evaluation") is True for m in metrics)
    plain = any(name in (m.get("sites") or {}) and m.get("secure_evaluation") is not True
                for m in metrics)
    if plain or (not secure and metrics):
        out.append(RELEASED_PLAIN)
    if secure and policy.get("release-metrics", policy.get("release_metrics")) is True:
        out.append(RELEASED_BY_POLICY)
    return tuple(out)


def _noise_summary(mine: Sequence[SiteRound]) -> tuple[str | None, list[tuple[str, str]]]:
    """Summarise the run's noise source for the site, flagging every round not from the CSPRNG."""
    trained = [r for r in mine if r.status == "trained"]
    sources = {r.noise_source or "unrecorded" for r in trained}
    notes = []
    seeded = [r.round for r in trained if r.noise_source == "seeded"]
    unknown = [r.round for r in trained if r.noise_source is None]
    if seeded:
        notes.append(("warning", (
            f"round(s) {', '.join(map(str, seeded))}: DP-SGD noise and Poisson sampling came "
            "from a generator seeded by the site's secret seed, not the OS CSPRNG (secure "
            "mode off in the site's policy): the eps holds only while that seed stays "
            "secret")))
    if unknown:
        notes.append(("warning", (
            f"round(s) {', '.join(map(str, unknown))}: the ledger does not record the noise "
            "source (written before sources were recorded; such runs seeded the noise from "
            "the coordinator's run seed unless secure mode was on)")))
    if not sources:
        return None, notes
    return (sources.pop() if len(sources) == 1 else "mixed"), notes


def _read_policy(site_dir: Path | None) -> tuple[dict[str, Any], str | None]:
    if site_dir is None:
        return {}, "no site directory"
    path = site_dir / POLICY_FILENAME
    if not path.is_file():
        return {}, f"{POLICY_FILENAME} is missing"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"{POLICY_FILENAME} is unreadable: {exc}"
    if not isinstance(doc, dict):
        return {}, f"{POLICY_FILENAME} is not a JSON object"
    return doc, None


def _pnum(policy: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        v = policy.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def _mechanism(line: LedgerLine) -> Mechanism | None:
    e = line.entry
    if e.status != "trained" or e.steps < 1 or e.sample_rate is None or e.noise_multiplier is None:
        return None
    if not 0.0 < e.sample_rate <= 1.0 or e.noise_multiplier < 0.0:
        return None
    return Mechanism(e.sample_rate, e.noise_multiplier, e.steps)


def _run_lines(lines: Sequence[LedgerLine], run_id: str | None,
               notes: list[tuple[str, str]]) -> list[LedgerLine]:
    """Pick the ledger lines of this run (by ``run_id``; fallback: a lone other id)."""
    mine = [ln for ln in lines if ln.entry.run_id == run_id]
    if mine or not lines:
        return mine
    ids = sorted({ln.entry.run_id for ln in lines})
    if len(ids) == 1:
        notes.append(("warning", (f"ledger entries carry run id {ids[0]!r}, {RUN_FILE} says "
                                  f"{run_id!r}; taking them as this run's")))
        return list(lines)
    notes.append(("warning", f"no ledger entry for run {run_id!r} (ledger has runs {ids})"))
    return []


def _consistency(site_names: set[str], run_lines: Sequence[LedgerLine],
                 series: Mapping[int, float], rounds: Sequence[AggregateRound],
                 metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where the run's own records disagree with the ledger (a cut or edited ledger)."""
    problems: list[str] = []
    trained = {ln.entry.round for ln in run_lines if ln.entry.status == "trained"}
    for agg in rounds:
        if site_names & set(agg.contributed) and agg.round not in trained:
            problems.append(f"{PARTICIPATION_FILE}: the site is in the aggregate of round "
                            f"{agg.round} but its ledger has no trained entry for that round "
                            "(ledger cut short or edited?)")
    for row in metrics:
        reported = row.get("epsilon")
        if not isinstance(reported, Mapping):
            continue
        for name in site_names & set(reported):
            value, rnd = reported[name], int(row["round"])
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stated = series.get(rnd)
            if stated is None or not math.isclose(float(value), stated, rel_tol=_METRIC_RTOL,
                                                  abs_tol=1e-9):
                said = "nothing" if stated is None else f"{stated:.6g}"
                problems.append(f"{METRICS_FILE}: round {rnd} reports eps={float(value):.6g}, "
                                f"the ledger states {said}")
    return problems


def build_site(
    name: str, site_dir: Path | None, *, run_id: str | None, num_rounds: int,
    rounds: Sequence[AggregateRound], metrics: Sequence[Mapping[str, Any]],
    signed: SummaryCheck | None = None,
) -> tuple[SiteReport, list[tuple[str, str]]]:
    """Build one site's report and its ``(severity, message)`` flags; never raises on content.

    Parameters
    ----------
    name : str
        The site's directory name under ``RUN_DIR/sites`` (or its name in participation).
    site_dir : Path or None
        ``RUN_DIR/sites/<name>``; None when the run names a site with no directory.
    run_id : str or None
        ``run.json``'s run id: the ledger lines of this run.
    num_rounds : int
        Rounds of the run (the ε series runs from 0 to here).
    rounds, metrics
        The run's aggregate rounds and metrics rows (for the consistency checks).
    signed : SummaryCheck, optional
        The site's signed ledger summary, checked: verification then also needs a valid
        signature, and without a ledger file the summary's entries are the ledger.
    """
    notes: list[tuple[str, str]] = []
    policy, policy_problem = _read_policy(site_dir)
    ledger_path = find_ledger(site_dir) if site_dir is not None else None
    if signed is not None and not policy and signed.policy:
        policy, policy_problem = dict(signed.policy), None
    if policy_problem:
        notes.append(("warning", policy_problem))
    site_id = str(policy.get("site", name))
    names = {name, site_id}
    sig_problems: list[str] = []
    if signed is not None and ledger_path is None:
        check = signed.ledger
        notes.append(("warning", "full ledger not handed over: the site's signed summary "
                                 "is used (`confide client export-ledger` gives the ledger)"))
    else:
        check = check_ledger(ledger_path)
        if signed is not None:
            sig_problems += list(signed.problems)
            held = ledger_holds_head(check, signed)
            if held:
                sig_problems.append(held)
    lines = check.lines
    run_lines = _run_lines(lines, run_id, notes)
    first = run_lines[0].line if run_lines else math.inf
    before = [ln for ln in lines if ln.line < first]
    last_line = run_lines[-1].line if run_lines else (before[-1].line if before else -1)
    eps_before = before[-1].entry.epsilon_after if before else 0.0
    stated = run_lines[-1].entry.epsilon_after if run_lines else eps_before
    ref = run_lines[-1].entry if run_lines else (before[-1].entry if before else None)
    delta = ref.delta if ref else _pnum(policy, "delta")
    accountant = ref.accountant if ref else (str(policy["accountant"])
                                             if "accountant" in policy else None)
    budget = _pnum(policy, "budget-epsilon", "budget_epsilon")

    # rounds, with a same-accountant recomputation after every trained entry
    history: list[Mechanism] = []
    site_rounds: list[SiteRound] = []
    mine: list[SiteRound] = []
    run_seqs = {ln.line for ln in run_lines}
    for ln in lines:
        if ln.line > last_line:
            continue
        mech = _mechanism(ln)
        if ln.entry.status == "trained" and mech is None:
            notes.append(("red", (f"ledger line {ln.line}: a trained entry with invalid "
                                  "parameters (cannot be composed)")))
        if mech is not None:
            history.append(mech)
        e = ln.entry
        this_run = ln.line in run_seqs
        recomputed: float | None = None
        try:
            with accountant_warnings_quiet():
                recomputed = epsilon(history, delta=e.delta, accountant=e.accountant)
        except ValueError as exc:
            notes.append(("red", f"ledger line {ln.line}: cannot recompute eps: {exc}"))
        agg = next((a for a in rounds if a.round == e.round), None) if this_run else None
        site_rounds.append(SiteRound(
            run_id=e.run_id, round=e.round, status=e.status, reason=e.reason, steps=e.steps,
            sample_rate=e.sample_rate, noise_multiplier=e.noise_multiplier,
            max_grad_norm=e.max_grad_norm, epsilon_after=e.epsilon_after,
            epsilon_recomputed=recomputed,
            in_aggregate=bool(agg and names & set(agg.contributed)),
            dropped=bool(agg and names & set(agg.dropped)),
            ledger_line=ln.line, intact=ln.intact, noise_source=e.noise_source,
        ))
        if this_run:
            mine.append(site_rounds[-1])

    # ε series over rounds 0..R (stated values, carried forward)
    last_round = max([num_rounds] + [r.round for r in mine])
    by_round = {r.round: r.epsilon_after for r in mine}
    series: list[SeriesPoint] = []
    current = eps_before
    for rnd in range(last_round + 1):
        current = by_round.get(rnd, current)
        series.append(SeriesPoint(rnd, current))

    # participation: declined / failed / dropped
    declined = {r.round: r.reason or "declined" for r in mine if r.status == "declined"}
    failed: dict[int, str] = {}
    for agg in rounds:
        for n in names:
            if n in agg.declined:
                declined.setdefault(agg.round, agg.declined[n])
            if n in agg.failed:
                failed.setdefault(agg.round, agg.failed[n])
    trained_rounds = [r.round for r in mine if r.status == "trained"]
    for rnd in sorted({r for r in trained_rounds if trained_rounds.count(r) > 1}):
        notes.append(("warning", (f"round {rnd} is recorded {trained_rounds.count(rnd)} "
                                  "times in the ledger; each is composed")))
    dropped = sum(1 for agg in rounds if names & set(agg.dropped))

    problems = list(check.problems) + sig_problems
    if signed is not None and signed.signature != "valid" and not problems:
        problems.append(f"ledger summary signature {signed.signature}")
    problems += _consistency(names, run_lines, {p.round: p.epsilon for p in series}, rounds,
                             metrics)
    verification = Verification(
        verified=not problems, method="hash-chain" if signed is None else "signature",
        chain_intact=check.chain_intact,
        signature=None if signed is None else signed.signature, head=check.head,
        problems=tuple(problems))
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        notes.append(("red", f"ledger UNVERIFIED: {problems[0]}{more}"))

    recomp: Recomputation | None = None
    if delta is not None and accountant in ("rdp", "prv"):
        recomp = recompute(history, stated=stated, delta=delta, accountant=accountant)
        if recomp.error:
            notes.append(("red", f"eps could not be recomputed: {recomp.error}"))
        elif not recomp.matches:
            rel = recomp.relative_error
            pct = "inf" if rel is None else f"{100 * rel:.2f}"
            notes.append(("red", (f"stated eps {stated:.6g} differs from its same-accountant "
                                  f"recomputation {recomp.same} by {pct}% "
                                  f"(> {100 * MATCH_RTOL:g}%)")))
        if recomp.below_tight:
            notes.append(("red", (f"stated eps {stated:.6g} is below the tight (PRV) lower "
                                  f"bound {recomp.tight_lower}: the run understates its "
                                  "privacy loss")))
        if recomp.google_error:
            notes.append(("warning", f"dp-accounting could not recompute eps: "
                                     f"{recomp.google_error}"))
        elif recomp.below_pld:
            notes.append(("red", (f"stated eps {stated:.6g} is more than 1% below Google "
                                  f"dp-accounting's PLD value {recomp.google_pld}: the run "
                                  "understates its privacy loss")))
    elif history:
        notes.append(("red", "no usable delta / accountant: eps cannot be recomputed"))
    pdelta = _pnum(policy, "delta")
    if pdelta is not None and delta is not None and not math.isclose(pdelta, delta):
        notes.append(("warning", f"policy delta {pdelta:g} differs from the ledger's {delta:g}"))
    if budget is not None and stated > budget * (1 + 1e-9):
        notes.append(("red", f"eps {stated:.6g} exceeds the site's budget {budget:g}"))
    noise_source, noise_notes = _noise_summary(mine)
    notes += noise_notes
    num_examples = policy.get("num_examples", policy.get("num-examples"))
    report = SiteReport(
        site_id=site_id,
        num_examples=num_examples if type(num_examples) is int else None,
        delta=delta, accountant=accountant, budget_epsilon=budget,
        max_grad_norm=_pnum(policy, "max-grad-norm", "max_grad_norm"),
        policy=dict(sorted(policy.items())), epsilon=stated, epsilon_before_run=eps_before,
        budget_left=None if budget is None else budget - stated,
        rounds_trained=len(set(trained_rounds)), rounds_declined=len(declined),
        rounds_dropped=dropped, rounds_failed=len(failed),
        declined=tuple(RoundNote(r, declined[r]) for r in sorted(declined)),
        failed=tuple(RoundNote(r, failed[r]) for r in sorted(failed)),
        rounds=tuple(site_rounds), epsilon_series=tuple(series),
        recomputation=recomp, verification=verification, noise_source=noise_source,
        released_in_clear=released_in_clear(name, policy, metrics),
    )
    return report, notes
