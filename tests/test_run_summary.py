"""The end-of-run summary tells the run's story on one screen; per-site tables stay out."""

from __future__ import annotations

from pathlib import Path

from protocol.config import RunConfig
from protocol.run_folder import RunFolder
from protocol.run_rows import MetricsRow
from simulations.simulate import _summary


def _folder(tmp_path: Path, eps: dict[str, float]) -> Path:
    folder = RunFolder(tmp_path)
    folder.append_metrics(MetricsRow(round=0, eval_loss=5.435, eval_perplexity=229.3, sites={}))
    folder.append_metrics(MetricsRow(round=1, eval_loss=5.2, eval_perplexity=181.27, sites={},
                                     contributed=tuple(eps), epsilon=eps, round_time_s=30.0))
    return tmp_path


def _cfg(secagg: bool) -> RunConfig:
    return RunConfig.from_mapping({"secagg": secagg, "secagg-enrolment": "e.json" if secagg
                                   else "", "num-server-rounds": 1})


def test_the_summary_tells_learning_privacy_and_what_the_coordinator_saw(tmp_path: Path) -> None:
    text = _summary(_folder(tmp_path, {"bank": 7.995, "law": 7.995, "clinic": 7.995}),
                    _cfg(True))
    assert "perplexity 229.30 (base) -> 181.27 after round 1 (20.9% lower)" in text
    assert "example-level eps 7.995 at each of 3 sites" in text  # one line when all agree
    assert "only sums" in text and "make demo-site-level" in text
    assert "bank" not in text  # no per-site table on the terminal


def test_the_summary_gives_the_range_when_sites_differ_and_says_when_all_was_seen(
        tmp_path: Path) -> None:
    text = _summary(_folder(tmp_path, {"bank": 6.5, "law": 7.9}), _cfg(False))
    assert "example-level eps 6.500 to 7.900 at each of 2 sites" in text
    assert "in the clear" in text
