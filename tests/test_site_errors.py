"""A site reports each error as what it is: a failed local round is not a secagg refusal."""

from __future__ import annotations

import shutil
from pathlib import Path

from client.app import app
from protocol.config import RunConfig
from protocol.wire import Reason
from server.app import run_server
from server.rundir import RunDir
from tests._loopback import LoopbackGrid, enrol, server_identity


def test_training_error_under_secure_aggregation_is_reported_as_a_training_failure(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: three sites; gamma's data file is malformed, so its local round fails
    data = tmp_path / "data"
    shutil.copytree(tiny_sites, data)
    (data / "gamma" / "notes.txt").unlink()
    (data / "gamma" / "train.jsonl").write_text("{not json\n")
    sites = ("alpha", "beta", "gamma")
    enrol({s: tmp_path / "sites" / s for s in sites}, tmp_path / "enrolment.json")
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(data),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 3, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu",
    })
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    grid = LoopbackGrid(app, nodes, cfg.to_mapping())

    # act: one secure round over the real ServerApp and ClientApp code
    with server_identity():
        run_server(grid, cfg)  # type: ignore[arg-type]

    # assert: gamma failed training (said so, without its data); the others were aggregated
    (part,) = RunDir(cfg.out_dir).read_participation()
    reason = part.failed["gamma"]
    assert reason.startswith(Reason.TRAINING_FAILED), reason
    assert Reason.SECAGG_REFUSED not in reason and "not json" not in reason
    assert part.released is True
    assert part.contributed == ("alpha", "beta")
