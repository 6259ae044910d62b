"""A secure evaluation waits for enough connected sites; a site briefly gone never ends a run.

A secure sum needs at least three inputs (``privacy.secagg.MIN_COHORT``). When a site drops
in the middle of a round and is still reconnecting when the round's evaluation starts, two
sites may be all that is connected, even with ``min-sites`` 2. The coordinator used to run
the evaluation over those two, which could not be set up, and ended the run with
"the secure evaluation was aborted" (seen in the deployment end-to-end test once rounds got
fast enough to end before the killed site was back). It now waits, up to the round timeout,
for as many sites as a secure sum needs; the sites here run the unmodified ClientApp over
the in-process loopback grid, with one of them connecting again only after a while.
"""

from __future__ import annotations

from pathlib import Path

from client.app import app
from privacy.secagg import MIN_COHORT
from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config
from protocol.config import RunConfig
from protocol.model_ref import resolve_model
from server.rounds import RoundDriver
from server.rundir import RunDir
from server.secure import SecureAggregator, load_enrolment
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma")


class RejoiningGrid(LoopbackGrid):
    """The last node is not connected for the first ``gone`` looks at the node list."""

    gone = 3

    def get_node_ids(self):  # type: ignore[no-untyped-def]
        nodes = sorted(super().get_node_ids())
        if self.gone > 0:
            self.gone -= 1
            return nodes[:-1]
        return nodes


def _driver(tmp_path: Path, tiny_model: Path, tiny_sites: Path
            ) -> tuple[RoundDriver, RejoiningGrid, dict]:  # type: ignore[type-arg]
    assert len(SITES) == MIN_COHORT
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 2, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", "round-timeout": 60.0,
        "poll-interval": 0.05,
    })
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    model_ref = resolve_model(cfg.model)
    lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.target_modules, base_model=model_ref)
    shapes = adapter_shapes(model_ref, lcfg)
    nodes = {101 + i: {"partition-id": i, "num-partitions": len(SITES)}
             for i in range(len(SITES))}
    grid = RejoiningGrid(app, nodes, cfg.to_mapping())
    driver = RoundDriver(grid, cfg, RunDir(cfg.out_dir), run_id="0123456789ab",  # type: ignore[arg-type]
                         lora_cfg=lcfg, shapes=shapes)
    driver.secure = SecureAggregator(driver, enrolment=load_enrolment(cfg.secagg_enrolment),
                                     clip=cfg.secagg_clip, max_weight=cfg.secagg_max_weight)
    return driver, grid, initial_adapter_state(shapes, seed=cfg.lora_seed)


def test_a_secure_evaluation_waits_for_a_site_that_is_reconnecting(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    driver, grid, state = _driver(tmp_path, tiny_model, tiny_sites)
    with server_identity():
        ev = driver.evaluate(0, state)

    assert grid.gone == 0, "the evaluation started before the site was back"
    assert ev["secure_evaluation"] and len(ev["eval_contributed"]) == len(SITES), ev


def test_a_secure_training_round_waits_for_a_site_that_is_reconnecting(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # with the evaluation inside the train message no evaluation waits between two rounds:
    # the next round's sampling must wait itself, or it samples two sites and aborts
    driver, grid, _ = _driver(tmp_path, tiny_model, tiny_sites)
    with server_identity():
        sampled = driver.sample(1)

    assert grid.gone == 0, "the round was sampled before the site was back"
    assert len(sampled) == len(SITES)
