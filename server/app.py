"""Flower ServerApp: the coordinator's entry point (Message API)."""

from __future__ import annotations

import logging
import math
import sys
import uuid
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config
from protocol.config import RunConfig
from protocol.console import log_events
from protocol.model_ref import resolve_model
from protocol.object_pulls import quicken_object_pulls
from protocol.run_rows import RUN_COMPLETED, RUN_FAILED
from server.privacy_gate import refuse_without_privacy
from server.progress_events import ProgressGrid
from server.rounds import RoundDriver
from server.rundir import ResumeError, RunDir, RunState
from server.secure import SecureAggregator, load_enrolment
from server.sim_linkstate import install as install_indexed_linkstate

__all__ = ["app", "quick_replies", "run_server"]

logger = logging.getLogger("confide.server")

app = ServerApp()


def _configure_logging() -> None:
    """One line per event on stdout (streamed by ``flwr run --stream``)."""
    log_events(sys.stdout, ("confide", "server", "protocol", "privacy"), replace=False)


def _site_level_dp(cfg: RunConfig, rundir: RunDir) -> Any:
    """Site-level DP of the aggregate (None when off); a resumed run keeps its history."""
    if not getattr(cfg, "site_level_dp", False):
        return None
    from server.site_level_dp import SiteLevelDP, history_from_participation

    site_level_dp = SiteLevelDP.from_config(
        cfg, history=history_from_participation(rundir.read_participation()))
    logger.info("%s", site_level_dp.summary())
    return site_level_dp


def run_server(grid: Grid, cfg: RunConfig) -> Path:
    """Run (or resume) the whole federated run; returns RUN_DIR."""
    rundir = RunDir(cfg.out_dir)
    model_ref = resolve_model(cfg.model)
    lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.target_modules, base_model=model_ref)
    shapes = adapter_shapes(model_ref, lcfg)
    if cfg.resume and rundir.state_path.exists():
        prev = rundir.read_state()
        if prev.status == RUN_COMPLETED:
            raise ResumeError(f"run in {rundir.root} already completed "
                              f"{prev.completed_round} rounds")
        run_id = prev.run_id
        rundir.truncate_after(prev.completed_round)
        if prev.completed_round == 0 and not rundir.round_adapter(0).is_dir():
            rundir.truncate_after(-1)
            state, start = initial_adapter_state(shapes, seed=cfg.lora_seed), 0
        else:
            state = rundir.load_round(prev.completed_round)
            start = prev.completed_round + 1
        logger.info("resuming run %s from round %d in %s", run_id, start, rundir.root)
    else:
        if rundir.state_path.exists():
            raise ResumeError(f"{rundir.root} already holds a run; pass resume to continue it")
        run_id = uuid.uuid4().hex[:12]
        state = initial_adapter_state(shapes, seed=cfg.lora_seed)
        start = 0
    rundir.write_run_json(run_id=run_id, config=cfg.to_mapping(), extra={
        "model_resolved": model_ref,
        # simulation: every site's state (ledger) under one directory; deployment: at the sites
        "mode": "simulation" if cfg.sites_state_dir else "deployment",
        "adapter_tensors": len(shapes),
        "adapter_parameters": int(sum(math.prod(s) for s in shapes.values())),
    })
    logger.info("run %s: %d rounds, aggregation %s, LoRA r=%d on %s, out %s", run_id,
                cfg.num_server_rounds, cfg.aggregation, cfg.lora_r, cfg.lora_target_modules,
                rundir.root)
    if cfg.secagg_enrolment:
        rundir.keep_enrolment(cfg.secagg_enrolment)
    # the grid logs one progress event per exchange (read by confide simulate / server)
    driver = RoundDriver(ProgressGrid(grid), cfg, rundir, run_id=run_id, lora_cfg=lcfg,
                         shapes=shapes)
    if cfg.secagg:
        driver.secure = SecureAggregator(driver, enrolment=load_enrolment(cfg.secagg_enrolment),
                                         clip=cfg.secagg_clip, max_weight=cfg.secagg_max_weight,
                                         site_level_dp=_site_level_dp(cfg, rundir),
                                         bits=cfg.secagg_bits)
        logger.info("secure aggregation on: %d enrolled sites, delta clip %g, max weight %g",
                    len(driver.secure.enrolment), cfg.secagg_clip, cfg.secagg_max_weight)
    else:
        logger.warning("secure aggregation off: the server sees every site's update in the clear")
    try:
        driver.run(state, start_round=start)
    except BaseException:
        try:
            last = rundir.read_state().completed_round
        except ResumeError:
            last = 0
        rundir.write_state(RunState(run_id, last, cfg.num_server_rounds, RUN_FAILED))
        raise
    last = rundir.read_state().completed_round
    rundir.finalise(last)
    rundir.write_state(RunState(run_id, last, cfg.num_server_rounds, RUN_COMPLETED,
                                driver.stopped_early))
    logger.info("run %s completed: adapter in %s", run_id, rundir.final_adapter)
    return rundir.root


#: the module whose ``pull_objects`` fetches the sites' replies in a deployed ServerApp
_GRID_MODULE = "flwr.superlink.grid.http_grid"


def quick_replies() -> None:
    """Retry a reply's arrays not stored yet at the SuperLink sooner than after 1 s.

    (:mod:`protocol.object_pulls`; Flower's own waits when this Flower is not the one checked.)
    """
    why = quicken_object_pulls(_GRID_MODULE)
    if why:
        logger.info("replies' arrays are pulled with Flower's own retry waits: %s", why)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: configuration comes from ``context.run_config``."""
    _configure_logging()
    # in simulation this process also holds Flower's in-memory link state: index its
    # messages by node, or Flower's per-node polling costs nodes x messages every 0.1 s
    install_indexed_linkstate()
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    quick_replies()
    refuse_without_privacy(cfg)
    run_server(grid, cfg)
