"""Inline SVG plots of what the run learned and of its site-level ε, for the HTML report.

``<svg id="loss-plot">``: the held-out loss (nats per token, example-weighted over sites)
after each round, one ``<polyline class="loss-line">``, with the matching perplexity
(exp of the loss) on the right axis. ``<svg id="site-level-epsilon-plot">``: with site-level
DP on, the run's site-level ε after each released round (``site-eps-line``) and its budget
(``budget-line``). Both self-contained: no script, no external asset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from privacy.audit.model import AuditReport

__all__ = ["loss_points", "loss_plot_svg", "site_level_epsilon_plot_svg"]

_BLUE = "#1f77b4"
_RED = "#b00020"
_PURPLE = "#9467bd"


def loss_points(report: AuditReport) -> list[tuple[int, float]]:
    """(round, held-out loss) for round 0 and every round that recorded one."""
    pts: dict[int, float] = {}
    if report.initial_eval_loss is not None and math.isfinite(report.initial_eval_loss):
        pts[0] = report.initial_eval_loss
    for r in report.rounds:
        if r.eval_loss is not None and math.isfinite(r.eval_loss):
            pts[r.round] = r.eval_loss
    return sorted(pts.items())


def _frame(svg_id: str, title: str, width: int, height: int) -> list[str]:
    return [(f'<svg id="{svg_id}" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" '
             f'aria-labelledby="{svg_id}-title">'),
            f'<title id="{svg_id}-title">{escape(title)}</title>']


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _round_axis(out: list[str], x0: float, y0: float, pw: float, rounds: int, height: int) -> None:
    every = max(1, math.ceil(rounds / 12))
    for r in range(0, rounds + 1, every):
        out.append(f'<text x="{x0 + pw * r / rounds:.1f}" y="{y0 + 16:.1f}" '
                   f'text-anchor="middle">{r}</text>')
    out.append(f'<text x="{x0 + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">round</text>')


def loss_plot_svg(points: Sequence[tuple[int, float]], num_rounds: int, *, width: int = 520,
                  height: int = 300) -> str:
    """Held-out loss per round (left axis) with its perplexity (right axis)."""
    left, right, top, bottom = 56, 64, 16, 40
    pw, ph = width - left - right, height - top - bottom
    rounds = max(1, num_rounds, *(r for r, _ in points)) if points else max(1, num_rounds)
    out = _frame("loss-plot", "Held-out loss and perplexity after each round", width, height)
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" '
               'stroke="#999"/>')
    if not points:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle">'
                   "no held-out loss recorded</text></svg>")
        return "\n".join(out)
    losses = [v for _, v in points]
    lo, hi = min(losses), max(losses)
    pad = max((hi - lo) * 0.15, 1e-3 * max(1.0, abs(hi)))
    lo, hi = lo - pad, hi + pad

    def x(r: float) -> float:
        return left + pw * r / rounds

    def y(v: float) -> float:
        return top + ph * (1.0 - (v - lo) / (hi - lo))

    for t in _ticks(lo, hi):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   f'stroke="#e5e5e5"/><text x="{left - 6}" y="{y(t) + 4:.1f}" '
                   f'text-anchor="end">{t:.4g}</text><text x="{left + pw + 6}" '
                   f'y="{y(t) + 4:.1f}" text-anchor="start">{math.exp(min(t, 50.0)):.4g}</text>')
    _round_axis(out, left, top + ph, pw, rounds, height)
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
               'text-anchor="middle">held-out loss (nats/token)</text>')
    out.append(f'<text transform="translate({width - 10} {top + ph / 2:.1f}) rotate(90)" '
               'text-anchor="middle">perplexity</text>')
    pts = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v in points)
    out.append(f'<polyline class="loss-line" fill="none" stroke="{_BLUE}" stroke-width="2.5" '
               f'points="{pts}"><title>held-out loss</title></polyline>')
    for r, v in points:
        out.append(f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="3.5" fill="{_BLUE}"><title>'
                   f"round {r}: loss {v:.4f}, perplexity {math.exp(min(v, 50.0)):.2f}"
                   "</title></circle>")
    out.append("</svg>")
    return "\n".join(out)


def site_level_epsilon_plot_svg(report: AuditReport, *, width: int = 520,
                                height: int = 300) -> str:
    """Plot the run's site-level ε after each round with its budget ("" when it is off)."""
    sl = report.site_level
    if sl is None:
        return ""
    left, right, top, bottom = 56, 24, 16, 40
    pw, ph = width - left - right, height - top - bottom
    rounds = max(1, report.num_rounds, *(r.round for r in sl.rounds)) if sl.rounds else max(
        1, report.num_rounds)
    pts = [(0, 0.0)] + [(r.round, r.epsilon_after) for r in sl.rounds
                        if r.epsilon_after is not None and math.isfinite(r.epsilon_after)]
    top_v = max([e for _, e in pts] + ([sl.budget_epsilon] if sl.budget_epsilon else []) + [0.0])
    ymax = (top_v * 1.1) or 1.0
    ticks = _ticks(0.0, ymax)

    def x(r: float) -> float:
        return left + pw * r / rounds

    def y(e: float) -> float:
        return top + ph * (1.0 - e / ymax)

    out = _frame("site-level-epsilon-plot", "Site-level epsilon of the released aggregates "
                 "after each round, with the budget", width, height)
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" '
               'stroke="#999"/>')
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   f'stroke="#e5e5e5"/><text x="{left - 6}" y="{y(t) + 4:.1f}" '
                   f'text-anchor="end">{t:g}</text>')
    _round_axis(out, left, top + ph, pw, rounds, height)
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">site-level ε (δ = {sl.delta if sl.delta else "-"})</text>')
    if sl.budget_epsilon:
        b = sl.budget_epsilon
        out.append(f'<line class="budget-line" data-budget="{b:g}" x1="{left}" x2="{left + pw}" '
                   f'y1="{y(b):.1f}" y2="{y(b):.1f}" stroke="{_RED}" stroke-width="1.5" '
                   f'stroke-dasharray="6 4"/><text x="{left + pw - 4}" y="{y(b) - 4:.1f}" '
                   f'text-anchor="end" style="fill:{_RED}">budget ε={b:g}</text>')
    line = " ".join(f"{x(r):.1f},{y(e):.1f}" for r, e in pts)
    out.append(f'<polyline class="site-eps-line" fill="none" stroke="{_PURPLE}" '
               f'stroke-width="2.5" points="{line}"><title>site-level ε</title></polyline>')
    for r, e in pts:
        out.append(f'<circle cx="{x(r):.1f}" cy="{y(e):.1f}" r="3.5" fill="{_PURPLE}"><title>'
                   f"round {r}: site-level ε {e:.4g}</title></circle>")
    out.append("</svg>")
    return "\n".join(out)
