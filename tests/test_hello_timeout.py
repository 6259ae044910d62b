"""A node that never answers ``query.hello`` costs a round ``hello-timeout``, once.

After a site's SuperNode is killed, Flower's SuperLink lists its node as online until its
heartbeats expire. A round that started meanwhile asked that ghost for its name and waited
the whole ``round-timeout`` (120 s in the deployment end-to-end test), then asked it again
for the round's evaluation and waited again. Hello is cheap at a live site (no model), so
the coordinator waits ``hello-timeout`` for it, and does not ask a node that stayed silent
again in the same round. Sites run the unmodified ClientApp over the in-process loopback
grid; the ghost's messages are lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Message

from client.app import app
from protocol.adapter import adapter_shapes, lora_config
from protocol.config import RunConfig
from protocol.model_ref import resolve_model
from protocol.wire import MessageType
from server.rounds import RoundDriver
from server.rundir import RunDir
from tests._loopback import LoopbackGrid, server_identity

GHOST = 103


class GhostGrid(LoopbackGrid):
    """Messages to :data:`GHOST` are pushed and never answered."""

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        live = [m for m in messages if m.metadata.dst_node_id != GHOST]
        self.sent += [m.metadata.message_type for m in messages
                      if m.metadata.dst_node_id == GHOST]
        return super().send_and_receive(live, timeout=timeout)


def test_a_silent_node_costs_one_hello_timeout_per_round(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 2, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "min-sites": 2, "round-timeout": 5.0,
        "hello-timeout": 0.5, "poll-interval": 0.05, "device": "cpu",
    })
    model_ref = resolve_model(cfg.model)
    lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.target_modules, base_model=model_ref)
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    grid = GhostGrid(app, nodes, cfg.to_mapping())
    driver = RoundDriver(grid, cfg, RunDir(cfg.out_dir), run_id="0123456789ab",  # type: ignore[arg-type]
                         lora_cfg=lcfg, shapes=adapter_shapes(model_ref, lcfg))

    with server_identity(), caplog.at_level(logging.WARNING, logger="server.rounds"):
        driver.discover_names(sorted(nodes), 1)
        driver.discover_names(sorted(nodes), 1)  # the round's evaluation asks again
        assert sorted(driver.site_names) == [101, 102]
        assert "query.hello: 2 of 3 sites replied within 0.5 s (hello-timeout)" in caplog.text
        assert grid.sent.count(MessageType.HELLO) == 3, grid.sent  # the ghost: asked once

        driver.discover_names(sorted(nodes), 2)  # a new round: it may be back
        assert grid.sent.count(MessageType.HELLO) == 4, grid.sent
