"""The audit report's site-level section: per round, who was summed, how much noise, ε after.

Read from ``participation.jsonl`` (the ``site_level_dp`` record the coordinator writes for every
round it planned), and checked by an **independent recomputation**: from each released
round's recorded clip, grid step, padded dimension, rounding β, survivors and noise
variance in the aggregate, this module re-derives the sensitivities (KLS 2021, Thm. 2), the
per-site σ, τ and the Rényi DP (KLS 2021, Prop. 14; the Gaussian mechanism in central
mode) with its own code, composes the rounds, and converts to ε(δ) by minimising over a
*continuous* Rényi order (scipy) instead of the run's fixed order grid. A stated ε that is
more than :data:`MATCH_RTOL` below its recomputation is a red flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from privacy.audit.site_ledgers import SITE_LEDGER_HEAD, SiteOwnLedger, site_ledger_rows

__all__ = ["MATCH_RTOL", "SiteLevelReport", "SiteLevelRound", "build_site_level",
           "independent_site_epsilon", "site_level_html", "site_level_md"]

MATCH_RTOL = 0.01


@dataclass(frozen=True)
class SiteLevelRound:
    """One planned round of site-level DP."""

    round: int
    mode: str
    released: bool
    contributors: int | None
    cohort: int | None
    noise_variance: float | None
    noise_std_of_mean: float | None
    epsilon_round: float | None
    epsilon_after: float | None
    epsilon_recomputed: float | None
    refused: str | None


@dataclass(frozen=True)
class SiteLevelReport:
    """Site-level DP of the run: budget, rounds, the stated and the recomputed ε."""

    mode: str
    budget_epsilon: float | None
    delta: float | None
    clip: float | None
    epsilon: float | None
    epsilon_recomputed: float | None
    matches: bool
    rounds: tuple[SiteLevelRound, ...]
    note: str
    #: per site: its own site-level ledger (``site-level-ledger.json`` in its state directory)
    site_ledgers: tuple[SiteOwnLedger, ...] = ()


# ---- independent recomputation ---------------------------------------------------------


def _l2_bound(c: float, d: int, beta: float) -> float:
    # KLS 2021 Thm. 2: ||round(x)||^2 <= c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2),
    # and always ||round(x)|| <= c + sqrt(d) (each coordinate moves by < 1)
    a = (c + math.sqrt(d)) ** 2
    b = c**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)
    return math.sqrt(min(a, b))


def _rdp_fn(rec: Mapping[str, Any]) -> Callable[[float], float]:
    """RDP(α) of one recorded round, from the recorded noise variance and survivors."""
    n = int(rec["contributors"])
    var = float(rec["noise_variance"])
    clip = float(rec["clip"])
    if var <= 0:
        return lambda a: math.inf
    if rec["mode"] == "central":
        # released vectors are rounded on the grid: norm up to Δ₂ γ (records before the
        # grid was recorded in central mode fall back to C)
        if "gamma" in rec:
            g = float(rec["gamma"])
            bound = _l2_bound(clip / g, int(rec["padded_dim"]), float(rec["beta"])) * g
        else:
            bound = clip
        return lambda a: a * bound * bound / (2 * var)
    gamma = float(rec["gamma"])
    d = int(rec["padded_dim"])
    sigma = math.sqrt(var / n) / gamma  # per-site sigma in grid units
    if sigma < 0.5:  # outside the analysis (KLS 2021, Prop. 14 needs sigma >= 1/2)
        return lambda a: math.inf
    l2 = _l2_bound(clip / gamma, d, float(rec["beta"]))
    l1 = min(l2 * l2, math.sqrt(d) * l2)
    t = 0.0
    for k in range(1, n):
        t += math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1))
    t *= 10
    e2 = (l2 / (math.sqrt(n) * sigma)) ** 2
    e1 = l1 / (math.sqrt(n) * sigma)
    if t == 0.0:
        return lambda a: a * e2 / 2
    return lambda a: min(a * e2 / 2 + t * d, a / 2 * (e2 + 2 * e1 * t + t * t * d),
                         a / 2 * (math.sqrt(e2) + math.sqrt(d) * t) ** 2)


def independent_site_epsilon(records: Sequence[Mapping[str, Any]], delta: float) -> float:
    """ε(δ) of the released rounds ``records``, recomputed from their recorded noise."""
    from scipy.optimize import minimize_scalar

    if not records:
        return 0.0
    fns = [_rdp_fn(r) for r in records]

    def eps(log_a1: float) -> float:
        a = 1.0 + math.exp(log_a1)
        rdp = sum(f(a) for f in fns)
        return rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)

    if any(math.isinf(f(2.0)) for f in fns):
        return math.inf
    best = min(eps(x) for x in [i / 4.0 for i in range(-40, 33)])
    res = minimize_scalar(eps, bounds=(-10.0, 8.0), method="bounded",
                          options={"xatol": 1e-7})
    return max(0.0, min(best, float(res.fun)))


# ---- building -------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def build_site_level(participation: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                     flags: list[tuple[str, str]]) -> SiteLevelReport | None:
    """Build the section, or None without site-level DP; ``flags`` gets (severity, msg)."""
    rows = [p for p in participation if isinstance(p.get("site_level_dp"), Mapping)]
    if not rows and not config.get("site-level-dp"):
        return None
    delta = _num(config.get("site-level-dp-delta"))
    budget = _num(config.get("site-level-dp-epsilon"))
    mode = str(config.get("site-level-dp-mode", "distributed"))
    released: list[Mapping[str, Any]] = []
    out = []
    stated_last: float | None = 0.0
    recomputed_last: float | None = 0.0
    ok = True
    for p in sorted(rows, key=lambda r: int(r["round"])):
        rec = p["site_level_dp"]
        is_released = rec.get("released") is True
        recomputed = None
        if is_released:
            released.append(rec)
            if delta is not None:
                try:
                    recomputed = independent_site_epsilon(released, delta)
                except (KeyError, TypeError, ValueError) as exc:
                    flags.append(("red", f"round {p['round']}: site-level eps cannot be "
                                         f"recomputed from the record: {exc}"))
                    ok = False
            stated = _num(rec.get("epsilon_after"))
            if recomputed is not None and stated is not None and math.isfinite(recomputed):
                if stated < recomputed * (1 - MATCH_RTOL) or stated > recomputed * (1 + MATCH_RTOL):
                    ok = False
                    flags.append(("red", f"round {p['round']}: stated site-level eps "
                                         f"{stated:.4g} does not match the recomputation "
                                         f"{recomputed:.4g}"))
            if stated is not None and budget is not None and stated > budget * (1 + 1e-9):
                ok = False
                flags.append(("red", f"round {p['round']}: site-level eps {stated:.4g} exceeds "
                                     f"the budget {budget:g}"))
            stated_last, recomputed_last = stated, recomputed
        out.append(SiteLevelRound(
            round=int(p["round"]), mode=str(rec.get("mode", mode)), released=is_released,
            contributors=rec.get("contributors") if type(rec.get("contributors")) is int
            else None,
            cohort=rec.get("cohort") if type(rec.get("cohort")) is int else None,
            noise_variance=_num(rec.get("noise_variance")) if is_released else None,
            noise_std_of_mean=_num(rec.get("noise_std_of_mean")) if is_released else None,
            epsilon_round=_num(rec.get("epsilon_round")) if is_released else None,
            epsilon_after=_num(rec.get("epsilon_after")) if is_released else None,
            epsilon_recomputed=recomputed,
            refused=None if is_released else str(rec.get("refused", "not released"))))
    note = ("Neighbouring runs differ in one site's whole update (zero-out adjacency); the "
            "aggregate is an unweighted sum of updates clipped to C. No amplification by "
            "sampling is claimed. " + (
                "Each surviving site added discrete Gaussian noise inside secure "
                "aggregation; eps uses the actual survivors of each round (KLS 2021, "
                "Prop. 14)." if mode == "distributed" else
                "A trusted server added Gaussian noise to the sum (central comparison)."))
    return SiteLevelReport(mode=mode, budget_epsilon=budget, delta=delta,
                           clip=_num(config.get("site-level-dp-clip")), epsilon=stated_last,
                           epsilon_recomputed=recomputed_last, matches=ok,
                           rounds=tuple(out), note=note)


# ---- rendering ------------------------------------------------------------------------


def _f(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _rows(section: SiteLevelReport) -> list[list[str]]:
    return [[str(r.round), "yes" if r.released else "no", _f(r.contributors, "d")
             if r.contributors is not None else "-", _f(r.cohort, "d") if r.cohort is not None
             else "-", _f(r.noise_variance), _f(r.noise_std_of_mean), _f(r.epsilon_round),
             _f(r.epsilon_after), _f(r.epsilon_recomputed), r.refused or ""]
            for r in section.rounds]


_HEAD = ["round", "released", "contributors", "cohort", "noise variance in the sum",
         "noise std of the mean", "eps of round", "eps after", "recomputed", "refused"]


_LEDGERS_NOTE = ("Each site's own site-level ledger: the rounds it priced with its own "
                 "accountant and charged before its noised vector left, and the site-level "
                 "eps after its last charge, beside the eps the report states and the eps the "
                 "site signed in its latest ledger summary (what the coordinator received). "
                 "More in the site's ledger than in the report, or a file that differs from "
                 "what the site signed, is a red flag.")


def _summary(s: SiteLevelReport) -> str:
    verdict = "matches" if s.matches else "DOES NOT MATCH"
    return (f"Site-level DP ({s.mode}): eps = {_f(s.epsilon)} at delta = {_f(s.delta, '.3g')}, "
            f"budget {_f(s.budget_epsilon, 'g')}, clip C = {_f(s.clip, 'g')}; independent "
            f"recomputation {_f(s.epsilon_recomputed)} ({verdict}).")


def site_level_md(section: SiteLevelReport | None) -> list[str]:
    """Markdown lines of the section (empty when the run had no site-level DP)."""
    if section is None:
        return []
    lines = ["## Site-level DP of the aggregate", "", _summary(section), "", section.note, "",
             "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
              for row in _rows(section)]
    if section.site_ledgers:
        lines += ["", _LEDGERS_NOTE, "", "| " + " | ".join(SITE_LEDGER_HEAD) + " |",
                  "|" + "---|" * len(SITE_LEDGER_HEAD)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                  for row in site_ledger_rows(section.site_ledgers)]
    return lines + [""]


def site_level_html(section: SiteLevelReport | None) -> str:
    """Render an HTML ``<section id="site-level">`` (empty string when off)."""
    from html import escape

    if section is None:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in _HEAD)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in _rows(section))
    cls = "ok" if section.matches else "red"
    ledgers = ""
    if section.site_ledgers:
        lhead = "".join(f"<th>{escape(h)}</th>" for h in SITE_LEDGER_HEAD)
        lbody = "".join(
            f'<tr class="{"red" if s.exceeds_report or s.matches_signed is False else ""}">'
            + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
            for s, row in zip(section.site_ledgers, site_ledger_rows(section.site_ledgers),
                              strict=True))
        ledgers = (f'<h3>Each site\'s own site-level ledger</h3><p class="meta">'
                   f'{escape(_LEDGERS_NOTE)}</p><table id="site-ledgers"><thead><tr>{lhead}'
                   f"</tr></thead><tbody>{lbody}</tbody></table>")
    return (f'<section id="site-level"><h2>Site-level DP of the aggregate</h2>'
            f'<p class="{cls}">{escape(_summary(section))}</p>'
            f'<p class="meta">{escape(section.note)}</p>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"{ledgers}</section>")
