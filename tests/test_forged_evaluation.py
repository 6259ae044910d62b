"""An enrolled site that forges its share of a secure evaluation cannot end the run.

Secure aggregation hides each site's input, so the coordinator cannot tell which site sent
figures that make an evaluation's sum undecodable, nor leave that site out of a sum already
unmasked. What it must not do is stop: a malformed message from one site never ends a run.
The round's metrics row then says the evaluation is not available, and why; training goes
on, and later rounds are evaluated as usual.

The coordinator is the real one (``server.app.run_server`` over the loopback grid); the
forging site runs the unmodified ClientApp with one function swapped, in its own messages
only: the one that writes its evaluation stats into its masked input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from flwr.app import Message

import client.secure
import client.secure_handlers
from client.app import app
from privacy.audit import build_report, load_schema, render_json, render_md
from protocol.config import RunConfig
from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED, MetricsRow, RowError
from protocol.secure_stats import EVAL_MODULUS_BITS, EVAL_STATS_LEN, append_eval_stats
from server.app import run_server
from simulations.simulate import _summary
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma")
FORGER = 103  # gamma's node


def _forged_limbs(vec: np.ndarray, stats: np.ndarray, *, modulus_bits: int,
                  n_sites: int) -> np.ndarray:
    """The evaluation limbs a forging site appends: every one the ring's largest element."""
    honest = append_eval_stats(vec, stats, modulus_bits=modulus_bits, n_sites=n_sites)
    honest[len(vec):] = (1 << modulus_bits) - 1
    return honest


def _forged_stats(figures: dict[str, Any]) -> np.ndarray:
    """A standalone evaluation's stats vector whose sum's example count is out of range."""
    stats = np.zeros(EVAL_STATS_LEN, dtype=np.uint64)
    stats[2] = 1 << (EVAL_MODULUS_BITS - 1)  # num_examples: half the ring
    return stats


class _ForgingGrid(LoopbackGrid):
    """Delivers each message; the forging node's handlers run with ``forge`` applied."""

    forge: Any

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        replies = []
        for m in messages:
            with self.forge() if m.metadata.dst_node_id == FORGER else _nothing():
                replies += super().send_and_receive([m], timeout=timeout)
        return replies


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _run(tmp_path: Path, tiny_model: Path, tiny_sites: Path, *, eval_in_train: bool,
         forge: Any, **extra: Any) -> tuple[RunFolder, RunConfig]:
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 2, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 3, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", "eval-in-train": eval_in_train, **extra,
    })
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    grid = _ForgingGrid(app, nodes, cfg.to_mapping())
    grid.forge = forge
    with server_identity():
        run_server(grid, cfg)  # type: ignore[arg-type]
    return RunFolder(cfg.out_dir), cfg


def _trained_every_round(folder: RunFolder) -> None:
    assert folder.read_state().status == RUN_COMPLETED
    part = folder.read_participation()
    assert [p.round for p in part] == [1, 2]
    assert all(p.released and p.contributed == SITES for p in part)


@pytest.mark.parametrize("bits", [
    0,  # each round's own ring (32 bits here): the limbs join, the totals are out of range
    24,  # 22-bit limbs: the forged limbs no longer join into 64 bits at all
], ids=["totals-out-of-range", "limbs-overflow"])
def test_forged_limbs_in_the_training_inputs_leave_the_evaluation_unavailable_not_the_run(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, bits: int
) -> None:
    # act: gamma forges the evaluation limbs of every training input it sends
    folder, cfg = _run(tmp_path, tiny_model, tiny_sites, eval_in_train=True,
                       forge=lambda: mock.patch.object(client.secure, "append_eval_stats",
                                                       _forged_limbs), **{"secagg-bits": bits})

    _trained_every_round(folder)  # the training sums still decode: their weight is honest
    rows = folder.read_metrics()
    assert [r.round for r in rows] == [0, 1, 2]
    for r in rows[:2]:  # evaluated inside rounds 1 and 2, where gamma forged them
        assert r.eval_loss is None and r.eval_perplexity is None
        assert r.eval_unavailable and "secure evaluation" in r.eval_unavailable
    # the final adapter is evaluated on its own, where gamma does not forge
    assert rows[2].eval_loss is not None and rows[2].eval_unavailable is None
    assert rows[2].eval_contributed == SITES
    assert not folder.pending_metrics_path.exists()
    # the run's summary and its audit report say so, with the reason
    summary = _summary(folder.root, cfg)
    assert "round 1: no held-out evaluation (the secure evaluation was aborted" in summary
    assert "learned:   not shown" in summary  # the base was not evaluated
    report = build_report(folder.root)
    pytest.importorskip("jsonschema").validate(json.loads(render_json(report)), load_schema())
    assert "n/a: the secure evaluation was aborted" in render_md(report)


def test_forged_stats_in_a_standalone_secure_evaluation_leave_it_unavailable_not_the_run(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # act: gamma forges the stats of every standalone secure evaluation it sends
    folder, _ = _run(tmp_path, tiny_model, tiny_sites, eval_in_train=False,
                  forge=lambda: mock.patch.object(client.secure_handlers, "_eval_stats",
                                                  _forged_stats))

    _trained_every_round(folder)
    rows = folder.read_metrics()
    assert [r.round for r in rows] == [0, 1, 2]
    for r in rows:
        assert r.eval_loss is None and r.eval_unavailable
        assert "out of range" in r.eval_unavailable  # what the decoding found


def test_a_metrics_row_has_an_evaluation_or_says_why_not() -> None:
    with pytest.raises(RowError, match="`eval_loss` is missing"):
        MetricsRow.from_json({"round": 0, "sites": {}})
    with pytest.raises(RowError, match="`eval_unavailable`"):
        MetricsRow(round=0, eval_loss=1.0, eval_perplexity=2.7, sites={},
                   eval_unavailable="aborted")
    with pytest.raises(RowError, match="`eval_perplexity`"):
        MetricsRow(round=0, eval_loss=1.0, sites={})
    row = MetricsRow(round=0, sites={}, eval_unavailable="the secure evaluation was aborted")
    assert MetricsRow.from_json(row.to_json()) == row
