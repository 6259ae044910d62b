"""The audit report as Markdown, for pasting into tickets."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from privacy.audit._format import (
    fmt_eps,
    fmt_names,
    fmt_num,
    google_cell,
    recomputation_cells,
)
from privacy.audit.model import AuditReport
from privacy.audit.site_level import site_level_md
from privacy.audit.sites import SiteReport

__all__ = ["render_md"]

logger = logging.getLogger(__name__)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _site_section(site: SiteReport, run_id: str | None) -> list[str]:
    status = "VERIFIED" if site.verification.verified else "**UNVERIFIED**"
    v = site.verification
    how = v.method if v.signature is None else f"{v.method}: {v.signature}"
    lines = [f"### {site.site_id} — {status} ({how})", ""]
    for problem in site.verification.problems:
        lines.append(f"- ⛔ {problem}")
    if site.verification.problems:
        lines.append("")
    lines.append(f"ε = {fmt_eps(site.epsilon)} at δ = {fmt_num(site.delta, '.3g')} "
                 f"({site.accountant or '-'}); budget {fmt_eps(site.budget_epsilon)}, "
                 f"left {fmt_eps(site.budget_left)}; ε before this run "
                 f"{fmt_eps(site.epsilon_before_run)}; ledger head `{site.verification.head}`")
    lines.append("")
    rows = [[str(r.round), r.status + ("" if r.intact else " (line altered)"),
             str(r.steps), fmt_num(r.sample_rate), fmt_num(r.noise_multiplier),
             fmt_num(r.max_grad_norm), fmt_eps(r.epsilon_after), fmt_eps(r.epsilon_recomputed),
             f"earlier run {r.run_id}" if r.run_id != run_id else
             "yes" if r.in_aggregate else ("dropped" if r.dropped else "no"),
             (r.noise_source or "unrecorded") if r.status == "trained" else "-",
             r.reason or ""] for r in site.rounds]
    lines += _table(["round", "status", "steps", "q", "σ", "C", "ε after", "recomputed",
                     "in aggregate", "noise", "reason"], rows)
    if site.failed:
        lines += ["", "Failed: " + "; ".join(f"round {n.round}: {n.reason}" for n in site.failed)]
    return lines + [""]


def render_md(report: AuditReport) -> str:
    """Render the whole report as GitHub-flavoured Markdown."""
    red = report.red_flags
    lines = [f"# Privacy audit — run {report.run_id or '(unknown)'}", "",
             (f"- mode: {report.mode}; created: {report.created or '-'}; "
              f"rounds: {report.num_rounds}"),
             f"- report SHA-256: `{report.sha256}`",
             "- status: " + (f"**{len(red)} RED FLAG(S)**" if red else "no red flags")
             + ("" if report.all_verified else "; **some ledgers UNVERIFIED**"), ""]
    if report.flags:
        lines += ["## Flags", ""]
        lines += [f"- {'⛔ **RED**' if f.severity == 'red' else '⚠️ warning'}"
                  f"{f' [{f.site_id}]' if f.site_id else ''}: {f.message}" for f in report.flags]
        lines.append("")
    lines += ["## Sites", ""]
    rows = []
    for s in report.sites:
        same, second, tight = recomputation_cells(s.recomputation)
        rows.append([s.site_id, "yes" if s.verification.verified else "**NO**",
                     fmt_eps(s.epsilon), fmt_num(s.delta, ".3g"), s.accountant or "-",
                     fmt_eps(s.budget_epsilon), fmt_eps(s.budget_left), str(s.rounds_trained),
                     str(s.rounds_declined), str(s.rounds_dropped), s.noise_source or "-",
                     same, second, tight, google_cell(s.recomputation),
                     "; ".join(s.released_in_clear) or "nothing"])
    lines += _table(["site", "verified", "ε", "δ", "accountant", "budget", "left", "trained",
                     "declined", "dropped", "noise", "same accountant", "second accountant",
                     "tight lower", "dp-accounting RDP / PLD", "released in the clear"], rows)
    lines += ["", "ε after each round:", ""]
    rounds = list(range(report.num_rounds + 1))
    lines += _table(["site"] + [str(r) for r in rounds],
                    [[s.site_id] + [fmt_eps(p.epsilon) for p in s.epsilon_series[:len(rounds)]]
                     for s in report.sites])
    lines.append("")
    for s in report.sites:
        lines += _site_section(s, report.run_id)
    lines += site_level_md(report.site_level)
    lines += ["## Rounds", ""]
    lines += _table(
        ["round", "sampled", "in aggregate", "declined", "failed", "dropped", "threshold",
         "released", "eval loss"],
        [[str(r.round), fmt_names(r.sampled), fmt_names(r.contributed),
          fmt_names(f"{k} ({v})" for k, v in r.declined.items()),
          fmt_names(f"{k} ({v})" for k, v in r.failed.items()), fmt_names(r.dropped),
          fmt_num(r.threshold, "d"), {True: "yes", False: "**no**", None: "-"}[r.released],
          r.eval_text()] for r in report.rounds])
    lines.append("")
    if report.empirical:
        lines += ["## Empirical audit (one-run canaries)", ""]
        for e in report.empirical:
            formal = ("∞ (no DP)" if e["formal_epsilon"] is None
                      else fmt_eps(e["formal_epsilon"]))
            verdict = ("**lower bound exceeds the formal ε: implementation or accounting "
                       "broken**" if e.get("exceeds_formal") else
                       "consistent" if e.get("dp") else
                       "power check: the attack detects the leak" if
                       e["epsilon_lower_bound"] >= 1 else
                       "power check: no leak detected, so this training gives the audit "
                       "little power (see simulations/audit_canaries.py)")
            lines.append(f"- site {e['site_id']}, DP {'on' if e.get('dp') else 'off'}: "
                         f"{e['canaries']} canaries, {e['correct']} of {e['guesses']} guesses "
                         f"correct; empirical ε ≥ {fmt_eps(e['epsilon_lower_bound'])} at "
                         f"{100 * e['confidence']:g}% confidence vs formal ε {formal}: "
                         f"{verdict}.")
        lines.append("")
    lines += ["## Configuration", "", "```json",
              json.dumps(dict(report.config), indent=2, sort_keys=True), "```", "",
              "## Software versions", ""]
    lines += _table(["package", "version"],
                    [[k, str(v)] for k, v in sorted(report.versions.items())])
    return "\n".join(lines) + "\n"
