"""The HTML report renders in headless Chromium with its plots drawn, and is self-contained.

Plots: ε per site and round, the held-out loss / perplexity per round, and with site-level DP
the run's site-level ε per round.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from privacy.audit import build_report, render_html
from protocol.run_folder import RunFolder
from tests.test_audit_report import SITES, write_run_dir
from tests.test_site_level_dp_audit import _records
from tests.test_site_level_dp_audit import _run_dir as _site_level_run_dir

CHROMIUM = Path("/usr/bin/chromium")


class _Plot(HTMLParser):
    """Collects the plot's polylines and budget lines from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.in_svg = False
        self.polylines: dict[str, str] = {}
        self.budget_lines: list[dict[str, str | None]] = []
        self.svgs: dict[str, dict[str, list[dict[str, str | None]]]] = {}
        self._svg = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self._svg = a.get("id") or ""
            self.svgs.setdefault(self._svg, {})
        if self._svg:
            self.svgs[self._svg].setdefault(tag, []).append(a)
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
            self._svg = ""


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


@pytest.fixture(scope="module")
def site_level_html_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of the same run with site-level DP on (its section from a 3-round record)."""
    root = write_run_dir(tmp_path_factory.mktemp("html-sl") / "run")
    site_level = build_report(_site_level_run_dir(
        tmp_path_factory.mktemp("sl"), _records("distributed", (10, 7, 10)))).site_level
    report = dataclasses.replace(build_report(root), site_level=site_level)
    path = root / "report-site-level.html"
    path.write_text(render_html(report), encoding="utf-8")
    return path


def _points(attrs: dict[str, str | None]) -> list[tuple[float, ...]]:
    return [tuple(map(float, p.split(","))) for p in (attrs.get("points") or "").split()]


@pytest.mark.parametrize("which", ["plain", "site-level"])
def test_html_is_self_contained(html_file: Path, site_level_html_file: Path, which: str) -> None:
    html = (html_file if which == "plain" else site_level_html_file).read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert "@media print" in html
    assert '<svg id="loss-plot"' in html
    assert ('<svg id="site-level-epsilon-plot"' in html) is (which == "site-level")


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


_needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not "
                                     "installed (Debian: apt-get install -y chromium)")


@_needs_chromium
def test_headless_chromium_draws_the_loss_and_site_level_epsilon_plots(
    site_level_html_file: Path, tmp_path: Path
) -> None:
    shot = tmp_path / "report-site-level.png"
    done = _chromium(["--dump-dom", site_level_html_file.as_uri()], tmp_path / "profile")
    png = _chromium([f"--screenshot={shot}", "--window-size=1200,1400", "--hide-scrollbars",
                     site_level_html_file.as_uri()], tmp_path / "profile2")

    assert done.returncode == 0, done.stderr[-2000:]
    plot = _Plot()
    plot.feed(done.stdout)
    loss = [a for a in plot.svgs["loss-plot"]["polyline"] if a.get("class") == "loss-line"]
    assert len(loss) == 1
    pairs = _points(loss[0])
    assert len(pairs) == 4  # rounds 0..3
    assert len({y for _, y in pairs}) > 1, "flat loss line: nothing plotted"
    site = plot.svgs["site-level-epsilon-plot"]
    eps = [a for a in site["polyline"] if a.get("class") == "site-eps-line"]
    assert len(eps) == 1 and len(_points(eps[0])) == 4  # 0 before round 1, then 3 rounds
    ys = [y for _, y in _points(eps[0])]
    assert ys == sorted(ys, reverse=True), "site-level ε must grow round by round"
    assert [a.get("data-budget") for a in site["line"] if a.get("class") == "budget-line"] == [
        "8"]
    assert png.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
