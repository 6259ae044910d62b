"""A site evaluates each (run, round) once: a coordinator that asks twice gets nothing new.

The coordinator here is the real one (``server.secure.SecureAggregator`` over a
``server.rounds.RoundDriver``) played dishonestly: it sends the same secure evaluation round
twice, then the same adapter under round numbers it invents. The sites run the unmodified
ClientApp over the in-process loopback grid.

* The same (run, round) again: every site declines (``round-already-contributed``) without
  evaluating, so no second sum exists to difference against the first.
* The same adapter under an invented round number: each number is a new (run, round) to the
  site, which evaluates again. With a smaller cohort under the invented number the two
  totals differ by exactly the left-out site's figures: the differencing limit the README's
  threat model states (a site's evaluation is protected by the sum of *one* round, not
  across rounds the coordinator makes up).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.app import app
from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config
from protocol.config import RunConfig
from protocol.model_ref import resolve_model
from protocol.site_log import EVALUATE, read_site_rows
from protocol.wire import Reason
from server.rounds import RoundDriver
from server.rundir import RunDir
from server.secure import SecureAggregator, load_enrolment
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha-0", "alpha-1", "beta", "gamma")  # partitions 0, 3 share alpha's data


def _coordinator(tmp_path: Path, tiny_model: Path, tiny_sites: Path
                 ) -> tuple[RoundDriver, dict[str, object], list[int]]:
    cfg = RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 4, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu",
    })
    enrol({s: tmp_path / "sites" / s for s in SITES}, tmp_path / "enrolment.json")
    model_ref = resolve_model(cfg.model)
    lcfg = lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.target_modules, base_model=model_ref)
    shapes = adapter_shapes(model_ref, lcfg)
    nodes = {101 + i: {"partition-id": i, "num-partitions": 4} for i in range(4)}
    grid = LoopbackGrid(app, nodes, cfg.to_mapping())
    driver = RoundDriver(grid, cfg, RunDir(cfg.out_dir), run_id="0123456789ab",  # type: ignore[arg-type]
                         lora_cfg=lcfg, shapes=shapes)
    driver.secure = SecureAggregator(driver, enrolment=load_enrolment(cfg.secagg_enrolment),
                                     clip=cfg.secagg_clip, max_weight=cfg.secagg_max_weight)
    state = initial_adapter_state(shapes, seed=cfg.lora_seed)
    ids = sorted(nodes)
    driver.discover_names(ids, 1)
    return driver, state, ids


def _evaluations(tmp_path: Path, site: str) -> list[int]:
    return [r["round"] for r in read_site_rows(tmp_path / "sites" / site, kind=EVALUATE)]


def test_a_site_refuses_a_second_secure_evaluation_of_the_same_round(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    with server_identity():
        # arrange: round 1's secure evaluation, as the coordinator runs it
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        first, part = driver.secure.evaluate(1, state, nodes, driver.instructions(1))
        assert first is not None and part["contributed"] == list(SITES)

        # act: the same (run, round) asked for again
        again, part2 = driver.secure.evaluate(1, state, nodes, driver.instructions(1))

    # assert: every site declines before evaluating; nothing is summed or released
    assert again is None
    assert part2["declined"] == {s: Reason.ROUND_ALREADY_CONTRIBUTED for s in SITES}
    assert part2["contributed"] == [] and part2["released"] is False
    assert all(_evaluations(tmp_path, s) == [1] for s in SITES)  # each evaluated once


def test_an_invented_round_number_is_evaluated_again_which_is_the_stated_differencing_limit(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        full, _ = driver.secure.evaluate(5, state, nodes, driver.instructions(5))
        # the same adapter under invented round numbers, the second time without alpha-1
        same, _ = driver.secure.evaluate(6, state, nodes, driver.instructions(6))
        fewer, part = driver.secure.evaluate(7, state, nodes[:3], driver.instructions(7))

    # the site cannot tell an invented round from a real one: it evaluates each number once
    assert full is not None and same is not None and fewer is not None
    assert all(_evaluations(tmp_path, s)[:2] == [5, 6] for s in SITES)
    assert same.num_examples == full.num_examples
    assert same.eval_loss == pytest.approx(full.eval_loss, rel=1e-6)
    # ... so two sums over the same adapter difference out the site left out (README)
    assert part["contributed"] == ["alpha-0", "beta", "gamma"]
    left_out = read_site_rows(tmp_path / "sites" / "alpha-1", kind=EVALUATE)[0]
    assert full.num_examples - fewer.num_examples == left_out["num-examples"]
    assert (full.loss_x_examples - fewer.loss_x_examples) / left_out["num-examples"] == \
        pytest.approx(left_out["eval-loss"], rel=1e-4)


def test_an_evaluation_round_number_is_logged_as_its_training_round() -> None:
    from protocol.secure_stats import eval_round, is_eval_round, round_label

    assert is_eval_round(eval_round(3)) and not is_eval_round(3)
    assert round_label(eval_round(3)) == "3 (evaluation)"
    assert round_label(3) == "3"
