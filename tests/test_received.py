"""``record-received``: the coordinator writes what it received, one line per reply.

The writer on hand-made replies (values in full, arrays as dtype and shape, errors), and on a
real 3-site secure round over the in-process loopback grid: one line per reply of every
stage, none of which holds a per-site loss, count or timing in the clear; off by default.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from client.app import app
from protocol.config import RunConfig
from protocol.run_folder import RECEIVED_FILE, RECORD_RECEIVED_KEY, RunFolder
from protocol.wire import Field, Key, MessageType
from server.app import run_server
from server.received import describe_reply
from tests._loopback import LoopbackGrid, enrol, server_identity
from tests._received import clear_per_site

SITES = ("alpha", "beta", "gamma")


def _reply(content: RecordDict | Error) -> Message:
    with server_identity():
        msg = Message(RecordDict(), dst_node_id=7, message_type="train.secagg", group_id="3")
    msg.metadata.__dict__["_message_id"] = "m1"
    return Message(content, reply_to=msg)


def test_a_reply_is_described_with_values_in_full_and_arrays_as_dtype_and_shape() -> None:
    content = RecordDict({
        "config": ConfigRecord({"site": "bank", "status": "ok", "blob": b"\x00\x01",
                                "ids": [1, 2]}),
        "metrics": MetricRecord({"epsilon": 2.5, "num-examples": 40}),
        "arrays": ArrayRecord({"masked": Array(np.zeros((2, 3), np.uint32))}),
    })
    row = describe_reply(_reply(content), round_num=3)
    assert (row["round"], row["message_type"], row["node_id"]) == (3, "train.secagg", 7)
    assert row["records"]["config"] == {"kind": "ConfigRecord", "values": {
        "site": "bank", "status": "ok", "ids": [1, 2],
        "blob": {"bytes": 2, "sha256": hashlib.sha256(b"\x00\x01").hexdigest()}}}
    assert row["records"]["metrics"]["values"] == {"epsilon": 2.5, "num-examples": 40}
    assert row["records"]["arrays"] == {"kind": "ArrayRecord", "arrays": {
        "masked": {"dtype": "uint32", "shape": [2, 3]}}}
    assert clear_per_site(row) == ["metrics.num-examples"]  # the checker sees a clear count
    err = describe_reply(_reply(Error(code=3, reason="boom")), round_num=3)
    assert err["error"] == {"code": 3, "reason": "boom"} and "records" not in err


def _cfg(tmp_path: Path, tiny_model: Path, tiny_sites: Path, record: bool) -> RunConfig:
    return RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 3, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", RECORD_RECEIVED_KEY: record,
    })


def test_a_secure_round_records_every_reply_and_none_holds_a_per_site_figure(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange
    cfg = _cfg(tmp_path, tiny_model, tiny_sites, record=True)
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    grid = LoopbackGrid(app, nodes, cfg.to_mapping())

    # act
    with server_identity():
        run_server(grid, cfg)  # type: ignore[arg-type]

    # assert: one line per reply; every stage of training and of the final evaluation is
    # there (round 1's train messages carry round 0's evaluation: eval-in-train)
    rows = RunFolder(cfg.out_dir).read_received()
    assert len(rows) == len(grid.sent)
    assert {MessageType.SECAGG_MASKED, MessageType.SECAGG_EVALUATE} <= {
        r["message_type"] for r in rows}
    assert {r["node_id"] for r in rows} == set(nodes) and {r["round"] for r in rows} == {1}
    assert {r["records"][Key.CONFIG]["values"][Field.SITE] for r in rows} == set(SITES)
    masked = [r for r in rows if r["message_type"] == MessageType.SECAGG_MASKED]
    assert len(masked) == 3 and all(
        a["dtype"].startswith("uint") for r in masked
        for rec in r["records"].values() for a in (rec.get("arrays") or {}).values())
    assert [(r["message_type"], leak) for r in rows for leak in clear_per_site(r)] == []


def test_nothing_is_recorded_by_default(tmp_path: Path) -> None:
    assert RunConfig.from_mapping({}).record_received is False
    assert RunFolder(tmp_path).read_received() == []
    assert not (tmp_path / RECEIVED_FILE).exists()
