"""Charged when released: a secure round's record is written ahead of its unmask.

A crash between the unmask and the checkpoint (here: saving the round's adapter fails) must
not lose the round's site-level DP charge when the run resumes, and the resumed re-run of
that round is a new attempt that the sites which already contributed decline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client.app import app
from protocol.config import RunConfig
from protocol.wire import Reason
from server.app import run_server
from server.rundir import RunDir
from server.site_level_dp import history_from_participation
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma")


class Crash(Exception):
    """The coordinator process dies here."""


def _cfg(tmp_path: Path, tiny_model: Path, tiny_sites: Path, **extra: Any) -> RunConfig:
    return RunConfig.from_mapping({
        "num-server-rounds": 2, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "site-level-dp": True, "site-level-dp-clip": 0.5, "min-sites": 3, "local-steps": 1,
        "batch-size": 8, "max-seq-len": 32, "max-eval-examples": 4, "device": "cpu", **extra,
    })


def _grid(cfg: RunConfig) -> LoopbackGrid:
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    return LoopbackGrid(app, nodes, cfg.to_mapping())  # fresh contexts: fresh processes


def test_a_crash_between_unmask_and_checkpoint_keeps_the_rounds_charge_on_resume(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # arrange: round 1 is unmasked, then the coordinator dies saving its adapter
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    cfg = _cfg(tmp_path, tiny_model, tiny_sites)
    save = RunDir.save_round

    def crash_at_round_1(self: RunDir, round_num: int, *args: Any) -> None:
        if round_num == 1:
            raise Crash("coordinator killed after the unmask")
        save(self, round_num, *args)

    monkeypatch.setattr(RunDir, "save_round", crash_at_round_1)
    with server_identity(), pytest.raises(Crash):
        run_server(_grid(cfg), cfg)  # type: ignore[arg-type]
    monkeypatch.setattr(RunDir, "save_round", save)
    assert RunDir(cfg.out_dir).read_state().completed_round == 0

    # act: resume the run
    resumed = cfg.replace(resume=True)
    with server_identity():
        run_server(_grid(resumed), resumed)  # type: ignore[arg-type]

    # assert: the unmasked round is still charged; its re-run is a new attempt that every
    # site that contributed declines, so nothing else is released for round 1; the run goes on
    rows = RunDir(cfg.out_dir).read_participation()
    first, rerun, second = rows
    assert (first.round, first.attempt, first.charged) == (1, 0, True)
    assert first.site_level_dp is not None and first.site_level_dp["released"] is True
    assert first.site_level_dp["contributors"] == 3 and first.site_level_dp["epsilon_after"] > 0
    history = history_from_participation(rows)
    assert [h.contributors for h in history] == [3, 3]  # round 1's charge and round 2's
    assert (rerun.round, rerun.attempt, rerun.released) == (1, 1, False)
    assert rerun.declined == {s: Reason.ROUND_ALREADY_CONTRIBUTED for s in SITES}
    assert (second.round, second.attempt, second.released) == (2, 0, True)
    assert RunDir(cfg.out_dir).read_state().completed_round == 2
