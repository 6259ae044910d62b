"""What a site answers under secure aggregation once it has trained, and when it must not.

- A site that trains, writes its ledger and then refuses the round's parameters replies with
  its signed ledger summary, so the audit never shows less than the site spent.
- A site that already sent a masked input for a (run, round) declines a second request for
  it before training, with a reason of the wire vocabulary, and its ledger is not charged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from client.app import app
from privacy.ledger import LEDGER_FILENAME
from protocol.config import RunConfig
from protocol.wire import Field, Key, MessageType, Reason, Status
from server.app import run_server
from server.rundir import RunDir
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma")
NODES = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}


class WrongManifestGrid(LoopbackGrid):
    """Sends one node round instructions whose manifest digest is not its adapter's.

    They come with the advertise-keys request; the site finds the mismatch when it encodes
    its trained delta, at the masked-input stage.
    """

    def __init__(self, *args: Any, node: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node = node
        self.replies: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        out = []
        for m in messages:
            if (m.metadata.dst_node_id == self.node
                    and m.metadata.message_type == MessageType.SECAGG_ADVERTISE
                    and Key.CONFIG in m.content):
                content = RecordDict(dict(m.content.items()))
                config = dict(content[Key.CONFIG])
                config[Field.MANIFEST] = "0" * 64
                content[Key.CONFIG] = ConfigRecord(config)
                m = Message(content, dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id)
            out.append(m)
        replies = super().send_and_receive(out, timeout=timeout)
        self.replies.extend(replies)
        return replies


def _cfg(tmp_path: Path, tiny_model: Path, tiny_sites: Path) -> RunConfig:
    policy = {"budget-epsilon": 8.0, "max-grad-norm": 0.01}
    return RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "dp": True, "dp-policy": json.dumps(policy), "min-sites": 3, "local-steps": 1,
        "batch-size": 8, "max-seq-len": 32, "max-eval-examples": 4, "device": "cpu",
    })


def test_a_site_that_refuses_after_training_replies_with_its_signed_ledger_summary(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: gamma (node 103) is sent a manifest it cannot match, found only after training
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    cfg = _cfg(tmp_path, tiny_model, tiny_sites)
    grid = WrongManifestGrid(app, NODES, cfg.to_mapping(), node=103)

    # act
    with server_identity():
        run_server(grid, cfg)  # type: ignore[arg-type]

    # assert: gamma refused, its reply carried the signed summary of the ledger it wrote,
    # and the coordinator kept it for the audit
    refusal = next(r for r in grid.replies if r.metadata.src_node_id == 103
                   and not r.has_error() and Key.CONFIG in r.content
                   and r.content[Key.CONFIG].get(Field.STATUS) == Status.FAILED)
    status: Any = refusal.content[Key.CONFIG]
    assert status[Field.REASON] == Reason.SECAGG_REFUSED
    summary = json.loads(str(status[Field.LEDGER_SUMMARY]))
    assert status[Field.LEDGER_SIGNATURE]
    assert (tmp_path / "sites" / "gamma" / LEDGER_FILENAME).is_file()
    folder = RunDir(cfg.out_dir)
    kept = folder.read_ledger_summary("gamma")
    assert kept.received_round == 1 and kept.summary == summary
    (part,) = folder.read_participation()
    assert "gamma" in part.failed and part.contributed == ("alpha", "beta")


def test_a_site_declines_a_second_masked_input_for_a_round_before_training(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: one complete secure round, then the same round re-run (a new attempt)
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    cfg = _cfg(tmp_path, tiny_model, tiny_sites)
    with server_identity():
        run_server(LoopbackGrid(app, NODES, cfg.to_mapping()), cfg)  # type: ignore[arg-type]
    ledger = tmp_path / "sites" / "alpha" / LEDGER_FILENAME
    before = ledger.read_bytes()
    rundir = RunDir(cfg.out_dir)
    rundir.write_state(rundir.read_state().__class__(
        rundir.read_state().run_id, 0, 1, "running"))  # as if round 1 were interrupted
    resumed = cfg.replace(resume=True)

    # act
    with server_identity():
        run_server(LoopbackGrid(app, NODES, resumed.to_mapping()), resumed)  # type: ignore[arg-type]

    # assert: every site declined the re-run with the wire's reason; alpha's ledger unchanged
    rows = rundir.read_participation()
    assert rows[-1].declined == {s: Reason.ROUND_ALREADY_CONTRIBUTED for s in SITES}
    assert rows[-1].released is False and rows[-1].attempt == 1
    assert ledger.read_bytes() == before
