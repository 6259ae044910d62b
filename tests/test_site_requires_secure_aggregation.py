"""A site enrolled for secure aggregation never answers a plain request in the clear.

The coordinator chooses the run config, so it can switch secure aggregation off and send the
plain ``train`` and ``evaluate`` messages. A site that holds its own enrolment list (a
deployed site configured for secure aggregation) must decline both, before it trains or
evaluates: no delta, no loss, no count leaves it, and its ledger is not charged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from client.app import app
from client.deploy_config import NODE_ENROLMENT
from privacy.ledger import LEDGER_FILENAME
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import state_to_record
from protocol.wire import Field, Key, MessageType, Reason, Status
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma")


def _grid(tmp_path: Path, tiny_model: Path, tiny_sites: Path, *,
          enrolled: bool) -> tuple[LoopbackGrid, RunConfig]:
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    policy = {"budget-epsilon": 8.0, "max-grad-norm": 0.01}
    # the coordinator's choice: secure aggregation off
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": False, "dp": True, "dp-policy": json.dumps(policy), "min-sites": 3,
        "local-steps": 1, "batch-size": 8, "max-seq-len": 32, "max-eval-examples": 4,
        "device": "cpu", "allow-no-privacy": True,
    })
    nodes: dict[int, dict[str, Any]] = {}
    for i in range(3):
        nodes[101 + i] = {"partition-id": i, "num-partitions": 3}
        if enrolled:  # the site's own configuration, which the coordinator cannot change
            nodes[101 + i][NODE_ENROLMENT] = str(tmp_path / "enrolment.json")
    return LoopbackGrid(app, nodes, cfg.to_mapping()), cfg


def _plain_messages(cfg: RunConfig, state: dict[str, Any]) -> list[Message]:
    instr = RoundInstructions.for_round(cfg, round_num=1, run_id="feed")
    content = RecordDict({Key.ARRAYS: state_to_record(state), Key.CONFIG: instr.to_record()})
    return [Message(RecordDict(dict(content.items())), dst_node_id=n, message_type=kind,
                    group_id="1")
            for kind in (MessageType.TRAIN, MessageType.EVALUATE) for n in (101, 102, 103)]


def _start_state(cfg: RunConfig) -> dict[str, Any]:
    from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config
    from protocol.model_ref import resolve_model

    model = resolve_model(cfg.model)
    lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.target_modules, base_model=model)
    return initial_adapter_state(adapter_shapes(model, lcfg), seed=cfg.lora_seed)


def test_an_enrolled_site_declines_plain_train_and_evaluate_and_leaks_nothing(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # arrange: sites with their own enrolment list; a coordinator that turned secagg off
    grid, cfg = _grid(tmp_path, tiny_model, tiny_sites, enrolled=True)

    # act: it sends each site a plain train and a plain evaluate message
    with server_identity():
        replies = grid.send_and_receive(_plain_messages(cfg, _start_state(cfg)))

    # assert: every reply is a decline naming the reason, with no arrays and no metrics
    assert len(replies) == 6
    for r in replies:
        assert not r.has_error(), r.error.reason
        status: Any = r.content[Key.CONFIG]
        assert status[Field.STATUS] == Status.DECLINED
        assert status[Field.REASON] == Reason.SECAGG_REQUIRED
        assert Key.ARRAYS not in r.content and Key.METRICS not in r.content
    for site in SITES:  # nothing trained, nothing charged
        assert not (tmp_path / "sites" / site / LEDGER_FILENAME).exists()


def test_a_site_without_an_enrolment_list_still_answers_plain_requests(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # the control: the same messages to sites that are not set up for secure aggregation
    grid, cfg = _grid(tmp_path, tiny_model, tiny_sites, enrolled=False)
    with server_identity():
        replies = grid.send_and_receive(_plain_messages(cfg, _start_state(cfg)))
    oks = [r for r in replies if not r.has_error()
           and r.content[Key.CONFIG].get(Field.STATUS) == Status.OK]
    assert len(oks) == 6
    assert all(isinstance(r.content[Key.CONFIG], ConfigRecord) for r in oks)
