"""The audit report as one self-contained HTML file: inline CSS and SVG, no external assets.

It reads in a browser and prints (A4, colours kept for the red flags). Beside the ε plot,
:mod:`privacy.audit.loss_plot` draws the held-out loss per round (and the site-level ε when
site-level DP is on). The ε plot is an
inline ``<svg id="epsilon-plot">``: one ``<polyline class="eps-line" data-site=...>`` per
site over rounds 0..R, and a dashed ``<line class="budget-line">`` per distinct budget.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from html import escape

from privacy.audit._format import (
    fmt_eps,
    fmt_names,
    fmt_num,
    google_cell,
    recomputation_cells,
)
from privacy.audit.loss_plot import loss_plot_svg, loss_points, site_level_epsilon_plot_svg
from privacy.audit.model import AuditReport
from privacy.audit.site_level import site_level_html
from privacy.audit.sites import SiteReport
from protocol.run_folder import CANARY_AUDIT_FILE

__all__ = ["epsilon_plot_svg", "render_html"]

logger = logging.getLogger(__name__)

_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#393b79")
_RED = "#b00020"

_CSS = """
:root { --red: #b00020; --ok: #1b5e20; --muted: #555; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111;
       max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 .2em; } h2 { font-size: 1.25em; margin: 1.4em 0 .4em;
     border-bottom: 1px solid #ccc; padding-bottom: .15em; } h3 { font-size: 1.05em; }
.meta { color: var(--muted); margin: .1em 0; } code, .mono { font-family: ui-monospace, monospace;
     font-size: .92em; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: .4em 0 .8em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
         white-space: nowrap; }
tr.earlier td { color: var(--muted); }
.bad, .red { color: var(--red); font-weight: 700; } .ok { color: var(--ok); font-weight: 700; }
.status { font-size: 1.1em; padding: .4em .6em; border: 2px solid currentColor;
          display: inline-block; }
tr.altered td { background: #fde7ea; }
ul.flags li.red { color: var(--red); } ul.flags li.warning { color: #8a5a00; }
figure { margin: 0; } .plots { display: flex; flex-wrap: wrap; gap: 12px 24px; }
.plots figure { flex: 1 1 420px; max-width: 540px; }
figcaption { color: var(--muted); font-size: .9em; }
svg text { font: 11px system-ui, sans-serif; fill: #222; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: .85em; }
.signoff td { height: 2.2em; }
@page { size: A4; margin: 14mm; }
@media print {
  body { font-size: 9.5pt; padding: 0; max-width: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2, h3 { break-after: avoid; } tr, figure, .site { break-inside: avoid; }
  table { font-size: 8.5pt; } pre { white-space: pre-wrap; }
}
"""


def _marker(shape: int, cx: float, cy: float, color: str, title: str) -> str:
    """Draw a data point as a circle, square, triangle or diamond.

    Sites whose lines coincide stay distinguishable.
    """
    t = f"<title>{escape(title)}</title>"
    if shape == 0:
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{color}">{t}</circle>'
    if shape == 1:
        return (f'<rect x="{cx - 3.5:.1f}" y="{cy - 3.5:.1f}" width="7" height="7" '
                f'fill="{color}">{t}</rect>')
    pts = ([(cx, cy - 4.5), (cx + 4.5, cy + 3.5), (cx - 4.5, cy + 3.5)] if shape == 2 else
           [(cx, cy - 5), (cx + 5, cy), (cx, cy + 5), (cx - 5, cy)])
    return (f'<polygon points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" '
            f'fill="{color}">{t}</polygon>')


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    mag = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw))


def epsilon_plot_svg(sites: Sequence[SiteReport], num_rounds: int, *, width: int = 760,
                     height: int = 320) -> str:
    """Inline SVG: ε after each round per site, with each distinct budget as a dashed line."""
    left, right, top, bottom = 56, 170, 16, 40
    pw, ph = width - left - right, height - top - bottom
    rounds = max(1, num_rounds)
    values = [p.epsilon for s in sites for p in s.epsilon_series
              if p.epsilon is not None and math.isfinite(p.epsilon)]
    budgets = sorted({s.budget_epsilon for s in sites if s.budget_epsilon is not None})
    ymax = max(values + budgets + [0.0]) * 1.1 or 1.0
    step = _nice_step(ymax)
    ymax = math.ceil(ymax / step) * step

    def x(r: float) -> float:
        return left + pw * r / rounds

    def y(e: float) -> float:
        return top + ph * (1.0 - e / ymax)

    out = [(f'<svg id="epsilon-plot" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" '
            f'aria-labelledby="epsilon-plot-title">'),
           ('<title id="epsilon-plot-title">Privacy loss epsilon after each round, per site, '
            'with budget lines</title>'),
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    tick = 0.0
    while tick <= ymax + 1e-12:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                   f'stroke="#e5e5e5"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" '
                   f'text-anchor="end">{tick:g}</text>')
        tick += step
    every = max(1, math.ceil(rounds / 12))
    for r in range(0, rounds + 1, every):
        out.append(f'<text x="{x(r):.1f}" y="{top + ph + 16}" text-anchor="middle">{r}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">round</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">ε (at each site\'s δ)</text>')
    for b in budgets:
        who = [s.site_id for s in sites if s.budget_epsilon == b]
        label = f"budget ε={b:g}" + ("" if len(who) == len(sites) else f" ({', '.join(who)})")
        out.append(f'<line class="budget-line" data-budget="{b:g}" x1="{left}" x2="{left + pw}" '
                   f'y1="{y(b):.1f}" y2="{y(b):.1f}" stroke="{_RED}" stroke-width="1.5" '
                   f'stroke-dasharray="6 4"><title>{escape(label)}</title></line>'
                   f'<text x="{left + pw - 4}" y="{y(b) - 4:.1f}" text-anchor="end" '
                   f'fill="{_RED}" style="fill:{_RED}">{escape(label)}</text>')
    for i, s in enumerate(sites):
        color = _PALETTE[i % len(_PALETTE)]
        stroke = max(1.5, 4.5 - 1.0 * i)  # later sites thinner: coinciding lines stay visible
        pts = [(p.round, p.epsilon) for p in s.epsilon_series
               if p.epsilon is not None and math.isfinite(p.epsilon) and p.round <= rounds]
        points = " ".join(f"{x(r):.1f},{y(e):.1f}" for r, e in pts)
        dash = "" if s.verification.verified else ' stroke-dasharray="2 3"'
        out.append(f'<polyline class="eps-line" data-site="{escape(s.site_id)}" fill="none" '
                   f'stroke="{color}" stroke-width="{stroke:g}"{dash} points="{points}">'
                   f'<title>{escape(s.site_id)}</title></polyline>')
        for r, e in pts:
            out.append(_marker(i % 4, x(r), y(e), color, f"{s.site_id}: round {r}, ε={e:.4g}"))
        ly = top + 14 + 18 * i
        name = escape(s.site_id) + ("" if s.verification.verified else " (UNVERIFIED)")
        fill = "" if s.verification.verified else f' style="fill:{_RED}"'
        out.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 34}" y1="{ly - 4}" '
                   f'y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash}/>'
                   + _marker(i % 4, left + pw + 23, ly - 4, color, s.site_id)
                   + f'<text x="{left + pw + 40}" y="{ly}"{fill}>{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"


def _table(head: Sequence[str], rows: Sequence[str], cls: str = "") -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _verified_badge(site: SiteReport) -> str:
    v = site.verification
    how = v.method if v.signature is None else f"{v.method}: {v.signature}"
    if v.verified:
        return f'<span class="ok">VERIFIED</span> ({escape(how)})'
    return f'<span class="bad">UNVERIFIED</span> ({escape(how)})'


def _sites_table(report: AuditReport) -> str:
    rows = []
    for s in report.sites:
        same, second, tight = recomputation_cells(s.recomputation)
        rc = s.recomputation
        bad_same = rc is not None and (not rc.matches or bool(rc.error))
        below = rc is not None and rc.below_tight
        below_pld = rc is not None and rc.below_pld
        over = s.budget_left is not None and s.budget_left < 0
        rows.append(
            "<tr>" + _td(s.site_id)
            + f"<td>{_verified_badge(s)}</td>"
            + _td(fmt_eps(s.epsilon), "num red" if below or below_pld or over else "num")
            + _td(fmt_num(s.delta, ".3g"), "num") + _td(s.accountant or "-")
            + _td(fmt_eps(s.budget_epsilon), "num") + _td(fmt_eps(s.budget_left),
                                                          "num red" if over else "num")
            + _td(str(s.rounds_trained), "num") + _td(str(s.rounds_declined), "num")
            + _td(str(s.rounds_dropped), "num")
            + _td(s.noise_source or "-", "" if s.noise_source in (None, "csprng") else "red")
            + _td(same, "red" if bad_same else "")
            + _td(second) + _td(tight, "red" if below else "")
            + _td(google_cell(rc), "red" if below_pld else "")
            + _td("; ".join(s.released_in_clear) or "nothing") + "</tr>")
    return _table(["site", "ledger", "ε", "δ", "accountant", "budget", "left", "trained",
                   "declined", "dropped", "noise source", "recomputed (same accountant)",
                   "second accountant", "tight lower bound", "dp-accounting RDP / PLD",
                   "released in the clear"], rows)


def _site_section(s: SiteReport, run_id: str | None) -> str:
    parts = [f'<section class="site" id="site-{escape(s.site_id)}">',
             f"<h3>{escape(s.site_id)} — {_verified_badge(s)}</h3>"]
    if s.verification.problems:
        parts.append('<ul class="flags">' + "".join(
            f'<li class="red">{escape(p)}</li>' for p in s.verification.problems) + "</ul>")
    parts.append(
        f'<p>ε = <b>{fmt_eps(s.epsilon)}</b> at δ = {fmt_num(s.delta, ".3g")} '
        f'({escape(s.accountant or "-")}); budget {fmt_eps(s.budget_epsilon)}, left '
        f'{fmt_eps(s.budget_left)}; ε before this run {fmt_eps(s.epsilon_before_run)}; '
        f'{s.num_examples if s.num_examples is not None else "-"} examples; clipping C = '
        f'{fmt_num(s.max_grad_norm)}. Ledger head <code>{escape(s.verification.head)}</code>.</p>')
    rows = []
    for r in s.rounds:
        earlier = r.run_id != run_id
        agg = (f"earlier run {r.run_id}" if earlier else
               "yes" if r.in_aggregate else ("dropped" if r.dropped else "no"))
        cls = "altered" if not r.intact else ("earlier" if earlier else "")
        rows.append(
            f'<tr class="{cls}">' + _td(str(r.round), "num")
            + _td(r.status + ("" if r.intact else " (line altered)"))
            + _td(str(r.steps), "num") + _td(fmt_num(r.sample_rate), "num")
            + _td(fmt_num(r.noise_multiplier), "num") + _td(fmt_num(r.max_grad_norm), "num")
            + _td(fmt_eps(r.epsilon_after), "num") + _td(fmt_eps(r.epsilon_recomputed), "num")
            + _td(agg) + _td(r.reason or "") + _td(str(r.ledger_line), "num") + "</tr>")
    parts.append(_table(["round", "status", "steps", "q", "σ", "C", "ε after", "recomputed",
                         "in aggregate", "reason", "ledger line"], rows))
    if s.failed:
        parts.append("<p>Failed: " + escape("; ".join(
            f"round {n.round}: {n.reason}" for n in s.failed)) + "</p>")
    return "\n".join(parts) + "</section>"


def _rounds_table(report: AuditReport) -> str:
    rows = []
    for r in report.rounds:
        released = {True: "yes", False: "no", None: "-"}[r.released]
        rows.append(
            "<tr>" + _td(str(r.round), "num") + _td(fmt_names(r.sampled))
            + _td(fmt_names(r.contributed))
            + _td(fmt_names(f"{k} ({v})" for k, v in r.declined.items()))
            + _td(fmt_names(f"{k} ({v})" for k, v in r.failed.items()))
            + _td(fmt_names(r.dropped)) + _td(fmt_num(r.threshold, "d"), "num")
            + _td(released, "" if r.released is not False else "red")
            + _td(r.eval_text(), "num") + "</tr>")
    return _table(["round", "sampled", "in aggregate", "declined", "failed", "dropped",
                   "threshold", "released", "eval loss"], rows)


def _empirical(report: AuditReport) -> str:
    if not report.empirical:
        return ("<p>No empirical audit in this run (plant canaries with <code>confide "
                "simulate --canaries M</code>, or run <code>simulations/audit_canaries.py"
                f"</code> and save its <code>--json</code> as <code>RUN_DIR/{CANARY_AUDIT_FILE}"
                "</code>, or pass it with <code>--canary-result</code>).</p>")
    rows, broken = [], False
    for e in report.empirical:
        formal = "∞ (no DP)" if e["formal_epsilon"] is None else fmt_eps(e["formal_epsilon"])
        bad = bool(e.get("exceeds_formal"))
        broken = broken or bad
        rows.append("<tr>" + _td(str(e["site_id"])) + _td("on" if e.get("dp") else "off")
                    + _td(str(e["canaries"]), "num")
                    + _td(f"{e['correct']} / {e['guesses']}", "num") + _td(formal, "num")
                    + _td(fmt_eps(e["epsilon_lower_bound"]), "num red" if bad else "num")
                    + _td(f"{100 * e['confidence']:g}%", "num")
                    + _td(fmt_num(e["delta"], ".3g"), "num") + "</tr>")
    verdict = ('<p class="red">An empirical lower bound exceeds its formal ε: the '
               "implementation or the accounting is broken.</p>" if broken
               else '<p class="ok">Consistent: no empirical lower bound exceeds its formal '
                    "ε.</p>")
    return (_table(["site", "DP", "canaries", "correct / guesses", "formal ε",
                    "empirical ε ≥", "confidence", "δ"], rows) + verdict
            + '<p class="meta">One-run audit after Steinke, Nasr &amp; Jagielski (NeurIPS 2023): '
              "each canary included by a recorded fair coin; top-k loss drops guessed IN, "
              "bottom-k OUT; δ-aware binomial bound, Bonferroni over the k tried. A run with "
              "DP off is the power check: a bound near 0 there means the training gave the "
              "attack little to detect, and a DP-on bound below its formal ε then says "
              "little.</p>")


def _learning_section(report: AuditReport) -> str:
    """Held-out loss / perplexity per round, and the site-level ε when site-level DP is on."""
    figures = [
        "<figure>" + loss_plot_svg(loss_points(report), report.num_rounds)
        + "<figcaption>Held-out loss after each round (round 0: the starting adapter), "
          "example-weighted over the sites that evaluated; right axis: perplexity.</figcaption>"
          "</figure>"]
    site_eps = site_level_epsilon_plot_svg(report)
    if site_eps:
        figures.append("<figure>" + site_eps + "<figcaption>Site-level ε(δ) of the run after "
                       "each released aggregate; dashed red: the run's site-level budget."
                       "</figcaption></figure>")
    return ('<section id="learning"><h2>What the run learned</h2><div class="plots">'
            + "".join(figures) + "</div></section>")


def render_html(report: AuditReport) -> str:
    """Render the whole report as one self-contained HTML document."""
    red = report.red_flags
    title = f"Privacy audit — run {report.run_id or '(unknown)'}"
    status = (f'<p class="status bad">{len(red)} red flag(s)'
              + ("" if report.all_verified else " — some ledgers UNVERIFIED") + "</p>"
              if red else '<p class="status ok">No red flags; every ledger verified</p>')
    flags = ""
    if report.flags:
        flags = ('<section id="flags"><h2>Flags</h2><ul class="flags">' + "".join(
            f'<li class="{escape(f.severity)}">{"RED: " if f.severity == "red" else ""}'
            f'{"[" + escape(f.site_id) + "] " if f.site_id else ""}{escape(f.message)}</li>'
            for f in report.flags) + "</ul></section>")
    versions = _table(["package", "version"], [
        "<tr>" + _td(k) + _td(str(v)) + "</tr>" for k, v in sorted(report.versions.items())])
    body = [
        f"<header><h1>{escape(title)}</h1>",
        (f'<p class="meta">Mode: {escape(report.mode)} · created '
         f'{escape(report.created or "-")} · {report.num_rounds} rounds · '
         f"{len(report.sites)} sites</p>"),
        f'<p class="meta">Report SHA-256: <code id="report-sha256">{report.sha256}</code></p>',
        status, "</header>", flags,
        '<section id="plot"><h2>ε per round</h2><figure>',
        epsilon_plot_svg(report.sites, report.num_rounds),
        ("<figcaption>ε(δ) the site ledgers state after each round (dotted: unverified "
         "ledger); dashed red: budget.</figcaption></figure></section>"),
        _learning_section(report),
        '<section id="sites"><h2>Sites and independent recomputation</h2>',
        _sites_table(report),
        ('<p class="meta">Recomputed from the parameters each ledger records: same accountant '
         "(must match to 1%), the second accountant (PRV for RDP runs and vice versa), and the "
         "PRV lower bound (a stated ε below it is flagged red); and a second implementation, "
         "Google's dp-accounting, with its RDP and its tight PLD accountant (a stated ε more "
         "than 1% below the PLD value is flagged red). Noise source: csprng (OS CSPRNG) or "
         "seeded (the site's secret seed; flagged).</p>"),
        *(_site_section(s, report.run_id) for s in report.sites), "</section>",
        '<section id="rounds"><h2>Rounds: who was in each aggregate</h2>',
        _rounds_table(report), "</section>", site_level_html(report.site_level),
        '<section id="empirical"><h2>Empirical audit</h2>', _empirical(report), "</section>",
        '<section id="config"><h2>Configuration</h2><pre>'
        + escape(json.dumps(dict(report.config), indent=2, sort_keys=True)) + "</pre></section>",
        f'<section id="versions"><h2>Software versions</h2>{versions}</section>',
        '<section id="signoff"><h2>Sign-off</h2>' + _table(
            ["name", "role", "date", "signature"],
            ['<tr class="signoff"><td></td><td>privacy officer</td><td></td><td></td></tr>'])
        + "</section>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
