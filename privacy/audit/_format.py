"""Number and name formatting shared by the Markdown and HTML renderers."""

from __future__ import annotations

import math
from collections.abc import Iterable

from privacy.audit.recompute import Recomputation

__all__ = ["fmt_eps", "fmt_names", "fmt_num", "google_cell", "recomputation_cells"]


def fmt_num(x: float | None, spec: str = ".4g") -> str:
    """Format a number, with ``∞`` for infinity and ``-`` for None."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return format(x, spec)


def fmt_eps(x: float | None) -> str:
    """ε with 4 significant digits (``∞`` / ``-``)."""
    return fmt_num(x, ".4g")


def fmt_names(names: Iterable[str]) -> str:
    """Comma-separated names, ``-`` for none."""
    out = ", ".join(names)
    return out or "-"


def recomputation_cells(r: Recomputation | None) -> tuple[str, str, str]:
    """Give the ``(same accountant, second accountant, tight lower bound)`` cells of a site row."""
    if r is None:
        return "-", "-", "-"
    if r.error:
        return f"error: {r.error}", "-", "-"
    rel = "-" if r.relative_error is None else f"{100 * r.relative_error:.2f}%"
    same = f"{fmt_eps(r.same)} ({r.accountant}, Δ {rel})"
    return same, f"{fmt_eps(r.second_epsilon)} ({r.second})", fmt_eps(r.tight_lower)


def google_cell(r: Recomputation | None) -> str:
    """``RDP / PLD`` ε from Google's dp-accounting for a site row."""
    if r is None:
        return "-"
    if r.google_error:
        return f"error: {r.google_error}"
    return f"{fmt_eps(r.google_rdp)} / {fmt_eps(r.google_pld)}"
