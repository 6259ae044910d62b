"""Nothing per-site in the clear under secure aggregation (issue 14, item 2).

Every reply record a site sends the coordinator in a 3-site secure round (training and the
secure evaluation) is inspected: no loss, count or timing of one site travels in the clear.
The totals the coordinator records are those of a plaintext computation over the same
contributors (the sites' own logs): the total weight exactly, the evaluation within its
stated decoding bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message

from client.app import app
from protocol.config import RunConfig
from protocol.run_folder import RunFolder
from protocol.site_log import EVALUATE, TRAIN, read_site_rows
from protocol.wire import Field, Key, MessageType, Metric
from server.app import run_server
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma")
#: per-site figures that must never travel in the clear by default
PER_SITE = {Metric.NUM_EXAMPLES, Metric.NUM_TOKENS, Metric.TRAIN_LOSS, Metric.EVAL_LOSS,
            Metric.STEPS, Metric.TIME_SETUP, Metric.TIME_TRAIN, Metric.TIME_EVAL}


class RecordingGrid(LoopbackGrid):
    """The loopback grid, keeping every reply a site sends (with the request's type)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[tuple[str, Message]] = []

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        kinds = {m.metadata.dst_node_id: m.metadata.message_type for m in messages}
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies.extend((kinds[r.metadata.src_node_id], r) for r in replies)
        return replies


def _cfg(tmp_path: Path, tiny_model: Path, tiny_sites: Path) -> RunConfig:
    return RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 3, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu",
    })


def _leaks(msg: Message) -> list[str]:
    """Every per-site figure a reply holds in the clear, by record and key."""
    if msg.has_error():
        return []
    found = []
    for name, rec in msg.content.items():
        for key in rec:
            if key in PER_SITE or (name == Key.METRICS and key not in Metric.LEDGER):
                found.append(f"{name}.{key}")
    return found


def test_a_secure_round_sends_no_per_site_loss_count_or_timing_and_its_totals_are_exact(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange
    cfg = _cfg(tmp_path, tiny_model, tiny_sites)
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    grid = RecordingGrid(app, nodes, cfg.to_mapping())

    # act
    with server_identity():
        run_server(grid, cfg)  # type: ignore[arg-type]

    # assert: every reply, of every stage of training and of both evaluations
    kinds = {k for k, _ in grid.replies}
    assert {MessageType.SECAGG_MASKED, MessageType.SECAGG_EVALUATE} <= kinds
    assert MessageType.EVALUATE not in kinds and MessageType.TRAIN not in kinds
    for kind, msg in grid.replies:
        assert not msg.has_error(), (kind, msg.error.reason)
        assert _leaks(msg) == [], kind
        assert msg.content[Key.CONFIG][Field.STATUS] == "ok", kind

    folder = RunFolder(cfg.out_dir)
    rows = folder.read_metrics()
    (part,) = folder.read_participation()
    own = {s: tmp_path / "sites" / s for s in SITES}
    assert part.released and part.contributed == SITES
    # the weight travelled inside the sum: its total is the contributors' exact sum
    trained = {s: read_site_rows(d, kind=TRAIN)[-1] for s, d in own.items()}
    assert part.total_weight == sum(int(r[Metric.NUM_EXAMPLES]) for r in trained.values())
    assert part.train_loss is None and rows[1].train_loss == {}
    for row in rows:  # round 0 and round 1: totals only, equal to the sites' own figures
        assert row.sites == {} and row.secure_evaluation is True
        assert row.eval_contributed == SITES
        evals = [next(r for r in read_site_rows(d, kind=EVALUATE) if r["round"] == row.round)
                 for d in own.values()]
        n = sum(int(r[Metric.NUM_EXAMPLES]) for r in evals)
        assert row.eval_num_examples == n
        assert row.eval_num_tokens == sum(int(r[Metric.NUM_TOKENS]) for r in evals)
        plain = sum(float(r[Metric.EVAL_LOSS]) * int(r[Metric.NUM_EXAMPLES]) for r in evals) / n
        assert row.eval_decoding_error_bound is not None
        assert 0 < row.eval_decoding_error_bound <= 3 * 0.5 / 2**16 / n
        assert abs(row.eval_loss - plain) <= row.eval_decoding_error_bound
        assert math.isclose(row.eval_perplexity, math.exp(row.eval_loss))
