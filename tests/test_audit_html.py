"""The HTML report renders in headless Chromium with the ε plot drawn, and is self-contained.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from privacy.audit import build_report, render_html
from protocol.run_folder import RunFolder
from tests.test_audit_report import SITES, write_run_dir

CHROMIUM = Path("/usr/bin/chromium")


class _Plot(HTMLParser):
    """Collects the plot's polylines and budget lines from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.in_svg = False
        self.polylines: dict[str, str] = {}
        self.budget_lines: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("id") == "epsilon-plot":
            self.in_svg = True
        if not self.in_svg:
            return
        if tag == "polyline" and "eps-line" in (a.get("class") or ""):
            self.polylines[a.get("data-site") or ""] = a.get("points") or ""
        if tag == "line" and "budget-line" in (a.get("class") or ""):
            self.budget_lines.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.in_svg = False


def _chromium(args: list[str], user_data: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={user_data}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def html_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_run_dir(tmp_path_factory.mktemp("html") / "run")
    path = RunFolder(root).audit_report("html")
    path.parent.mkdir()
    path.write_text(render_html(build_report(root)), encoding="utf-8")
    return path


def test_html_is_self_contained(html_file: Path) -> None:
    html = html_file.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert "@media print" in html


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed "
                    "(Debian: apt-get install -y chromium)")
def test_headless_chromium_draws_the_epsilon_plot(html_file: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = _chromium(["--dump-dom", html_file.as_uri()], tmp_path / "profile")
    png = _chromium([f"--screenshot={shot}", "--window-size=1200,1600",
                     "--hide-scrollbars", html_file.as_uri()], tmp_path / "profile2")

    assert done.returncode == 0, done.stderr[-2000:]
    plot = _Plot()
    plot.feed(done.stdout)
    assert sorted(plot.polylines) == sorted(SITES)
    for site, points in plot.polylines.items():
        pairs = [tuple(map(float, p.split(","))) for p in points.split()]
        assert len(pairs) == 4, site  # rounds 0..3
        assert len({y for _, y in pairs}) > 1, f"{site}: flat line, nothing plotted"
    assert {b.get("data-budget") for b in plot.budget_lines} == {
        f"{budget:g}" for _, budget in SITES.values()}
    assert png.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
