"""Aborted rounds are never silent: recorded with a reason, printed by the benches and simulate.

A real run (the unmodified ServerApp and ClientApp over the in-process loopback grid) in which
every site declines: the round releases nothing, its participation row says why
(``abort_reason``), and the one shared helper the benches and ``confide simulate`` print
through lists it; planned rounds the run never reached are listed too.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from client.app import app
from protocol.config import RunConfig
from protocol.run_folder import RunFolder
from protocol.run_rows import ParticipationRow, RunInfo, RunState
from protocol.wire import Reason
from server.app import run_server
from simulations.runner import report_unreleased
from tests._loopback import LoopbackGrid, server_identity


def test_a_round_every_site_declines_records_why_and_is_printed(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: DP asked for, but no site has a privacy policy: every site declines
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "min-sites": 2, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", "dp": True,
    })
    nodes = {101 + i: {"partition-id": i, "num-partitions": 2} for i in range(2)}

    # act
    with server_identity():
        run_server(LoopbackGrid(app, nodes, cfg.to_mapping()), cfg)  # type: ignore[arg-type]

    # assert: the row says why nothing was released, and the shared helper prints it
    (row,) = RunFolder(cfg.out_dir).read_participation()
    assert row.released is False
    assert row.abort_reason == "no update accepted (2 declined, 0 failed of 2 sampled)"
    out = io.StringIO()
    lines = report_unreleased(cfg.out_dir, label="bench: ", stream=out)
    assert lines == RunFolder(cfg.out_dir).unreleased_rounds()
    assert out.getvalue().startswith("bench: round 1: NOT RELEASED: no update accepted")
    assert Reason.NO_PRIVACY_POLICY in out.getvalue()
    from simulations.simulate import _summary

    assert "round 1: NOT RELEASED: no update accepted" in _summary(Path(cfg.out_dir), cfg)


def _row(rnd: int, released: bool, **extra: object) -> ParticipationRow:
    return ParticipationRow.from_json({"round": rnd, "sampled": ["a", "b", "c"],
                                       "contributed": [], "declined": {}, "failed": {},
                                       "released": released, **extra})


@pytest.mark.parametrize("stopped", ["", "before round 3: budget exhausted"])
def test_aborted_attempts_and_rounds_never_run_are_listed_with_their_reason(
    tmp_path: Path, stopped: str
) -> None:
    folder = RunFolder(tmp_path)
    folder.write_run_info(RunInfo(run_id="r", created="2026-01-01T00:00:00+0000",
                                  config={"num-server-rounds": 4}, versions={}))
    folder.append_participation(_row(1, True))
    folder.append_participation(_row(2, False, attempt=0, abort_reason="1 sites remain, "
                                     "threshold is 2", failed={"c": "no reply to train.secagg "
                                                               "within 600 s (round-timeout)"}))
    folder.append_participation(_row(2, False, attempt=1))  # a re-run, reason not recorded
    folder.write_state(RunState(run_id="r", completed_round=2, num_rounds=4, status="running",
                                stopped_early=stopped))

    lines = folder.unreleased_rounds()

    assert lines[0] == ("round 2 (attempt 0): NOT RELEASED: 1 sites remain, threshold is 2; "
                        "failed: c (no reply to train.secagg within 600 s (round-timeout))")
    assert lines[1] == "round 2 (attempt 1): NOT RELEASED: no abort reason recorded"
    assert lines[2] == ("rounds 3..4 of 4: NOT RUN: "
                        + (stopped or "the run ended after round 2"))
    assert len(lines) == 3
