"""A train message evaluates the adapter it carries (``eval-in-train``), and no more than once.

Round r's train message carries the adapter after round r - 1; with ``evaluate-received`` the
site evaluates that adapter before it trains and appends the figures to its masked input as
exact limbs, so the coordinator learns their total only inside the round's sum, and a round
needs no evaluation messages of its own. The coordinator here is the real one
(``server.secure.SecureAggregator`` over a ``server.rounds.RoundDriver``), honest or played
dishonestly; the sites run the unmodified ClientApp over the in-process loopback grid.

* The totals a training sum carries equal the standalone secure evaluation of the adapter.
* The site's evaluation of round r - 1 is used up by either: a coordinator that asks for
  both (in either order) gets a refusal, and the site trains nothing for the refused one.
* Instructions for another round than the session's are refused when they arrive (with the
  round's keys, before any work), a session too short for the figures before anything is
  sent.
* A whole run sends one secure evaluation (the final adapter's) instead of one per round,
  its metrics rows are complete and in order, and a crash between rounds loses none.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from client.app import app
from protocol.adapter import adapter_shapes, initial_adapter_state, lora_config
from protocol.config import RunConfig
from protocol.model_ref import resolve_model
from protocol.run_folder import RunFolder
from protocol.site_log import EVALUATE, TRAIN, read_site_rows
from protocol.wire import MessageType, Reason, Stage
from server.app import run_server
from server.rounds import RoundDriver
from server.rundir import RunDir
from server.secure import SecureAggregator, load_enrolment
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha-0", "alpha-1", "beta", "gamma")  # partitions 0, 3 share alpha's data
RUN_SITES = ("alpha", "beta", "gamma")  # a run's three partitions
#: a refusal at the first stage, where the round's adapter and instructions arrive
AT_ADVERTISE = f"{Stage.ADVERTISE_KEYS}: {Reason.SECAGG_REFUSED}"


def _cfg(tmp_path: Path, tiny_model: Path, tiny_sites: Path, **extra: Any) -> RunConfig:
    return RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(tiny_model), "data-dir": str(tiny_sites),
        "out-dir": str(tmp_path / "run"), "sites-state-dir": str(tmp_path / "sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 4, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", **extra,
    })


def _coordinator(tmp_path: Path, tiny_model: Path, tiny_sites: Path
                 ) -> tuple[RoundDriver, Any, list[int]]:
    cfg = _cfg(tmp_path, tiny_model, tiny_sites)
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
    ids = sorted(nodes)
    driver.discover_names(ids, 1)
    return driver, initial_adapter_state(shapes, seed=cfg.lora_seed), ids


def _rows(tmp_path: Path, site: str, kind: str) -> list[int]:
    return [r["round"] for r in read_site_rows(tmp_path / "sites" / site, kind=kind)]


def test_the_figures_a_training_sum_carries_equal_the_standalone_secure_evaluation(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        # act: round 1 trains and carries the evaluation of the adapter it sends
        new, part, carried = driver.secure.round(1, state, nodes, driver.instructions(1),
                                                 evaluate=True)
        # the same adapter evaluated on its own, under a round number of its own
        alone, _ = driver.secure.evaluate(9, state, nodes, driver.instructions(9))

    assert new is not None and part["released"] is True and part["contributed"] == list(SITES)
    assert carried is not None and alone is not None
    assert carried.num_examples == alone.num_examples
    assert carried.num_tokens == alone.num_tokens
    assert carried.eval_loss == pytest.approx(alone.eval_loss, rel=1e-6)
    # each site filed the figures under round 0 (the adapter's round) and trained round 1
    assert all(_rows(tmp_path, s, EVALUATE) == [0, 9] for s in SITES)
    assert all(_rows(tmp_path, s, TRAIN) == [1] for s in SITES)
    # the weight still decodes exactly from the same sum
    assert part["total_weight"] > 0


def test_a_site_that_evaluated_a_round_refuses_to_carry_it_again_and_trains_nothing(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        first, _ = driver.secure.evaluate(0, state, nodes, driver.instructions(0))
        # act: the dishonest coordinator asks round 1 to carry round 0's evaluation too
        new, part, carried = driver.secure.round(1, state, nodes, driver.instructions(1),
                                                 evaluate=True)

    assert first is not None
    assert new is None and carried is None and part["released"] is False
    assert part["failed"] == {s: AT_ADVERTISE for s in SITES}  # before any work
    assert all(_rows(tmp_path, s, EVALUATE) == [0] for s in SITES)  # evaluated once
    assert all(_rows(tmp_path, s, TRAIN) == [] for s in SITES)  # refused before training


def test_a_site_that_carried_a_rounds_evaluation_declines_a_standalone_one(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        _, part, carried = driver.secure.round(1, state, nodes, driver.instructions(1),
                                               evaluate=True)
        # act: then asks for round 0's evaluation on its own, to difference the two sums
        again, part2 = driver.secure.evaluate(0, state, nodes, driver.instructions(0))

    assert carried is not None and part["released"] is True
    assert again is None and part2["released"] is False
    assert part2["declined"] == {s: Reason.ROUND_ALREADY_CONTRIBUTED for s in SITES}
    assert all(_rows(tmp_path, s, EVALUATE) == [0] for s in SITES)


def test_instructions_for_another_round_than_the_session_are_refused_before_training(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        # act: session of round 2, instructions (and so the evaluation's round) of round 5
        new, part, _ = driver.secure.round(2, state, nodes, driver.instructions(5),
                                           evaluate=True)

    assert new is None and part["released"] is False
    assert part["failed"] == {s: AT_ADVERTISE for s in SITES}  # before any work
    assert all(_rows(tmp_path, s, TRAIN) == [] and _rows(tmp_path, s, EVALUATE) == []
               for s in SITES)


def test_a_session_without_room_for_the_figures_is_refused(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.secure

    with server_identity():
        driver, state, nodes = _coordinator(tmp_path, tiny_model, tiny_sites)
        # act: the coordinator asks for the figures but sizes the ring vector without them
        monkeypatch.setattr(server.secure, "eval_stats_limbs", lambda **_: 0)
        new, part, carried = driver.secure.round(1, state, nodes, driver.instructions(1),
                                                 evaluate=True)

    assert new is None and carried is None and part["released"] is False
    assert part["failed"] == {s: Reason.SECAGG_REFUSED for s in SITES}


class _CountingGrid(LoopbackGrid):
    """Counts messages per round; raises (a coordinator crash) at the first of ``crash_at``."""

    crash_at: int | None = None
    per_round: dict[str, dict[str, int]]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        for m in messages:
            if self.crash_at is not None and m.metadata.group_id == str(self.crash_at):
                self.crash_at = None
                raise RuntimeError("coordinator crashed")
            counts = self.per_round.setdefault(m.metadata.group_id, {})
            counts[m.metadata.message_type] = counts.get(m.metadata.message_type, 0) + 1
        return super().send_and_receive(messages, timeout=timeout)


def _run(tmp_path: Path, tiny_model: Path, tiny_sites: Path, *, eval_in_train: bool,
         rounds: int = 2, crash_at: int | None = None) -> tuple[RunFolder, _CountingGrid]:
    cfg = _cfg(tmp_path, tiny_model, tiny_sites, **{
        "num-server-rounds": rounds, "min-sites": 3, "eval-in-train": eval_in_train})
    enrol({s: tmp_path / "sites" / s for s in RUN_SITES}, tmp_path / "enrolment.json")
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    grid = _CountingGrid(app, nodes, cfg.to_mapping())
    grid.per_round, grid.crash_at = {}, crash_at
    with server_identity():
        if crash_at is not None:
            with pytest.raises(RuntimeError, match="coordinator crashed"):
                run_server(grid, cfg)  # type: ignore[arg-type]
            cfg = cfg.replace(resume=True)
        run_server(grid, cfg)  # type: ignore[arg-type]
    return RunFolder(cfg.out_dir), grid


def test_a_run_sends_one_secure_evaluation_and_writes_every_metrics_row(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    folded, grid = _run(tmp_path / "in-train", tiny_model, tiny_sites, eval_in_train=True)
    plain, grid_sep = _run(tmp_path / "separate", tiny_model, tiny_sites, eval_in_train=False)

    rows, sep = folded.read_metrics(), plain.read_metrics()
    assert [r.round for r in rows] == [r.round for r in sep] == [0, 1, 2]
    assert all(r.secure_evaluation and r.eval_contributed == RUN_SITES
               for r in rows)
    # round 0 is the same adapter in both runs (the initial one) on the same held-out data
    assert rows[0].eval_loss == pytest.approx(sep[0].eval_loss, rel=1e-6)
    assert rows[0].eval_num_examples == sep[0].eval_num_examples
    # messages per site: no evaluation stages in a round; the final adapter gets its own
    evals = MessageType.SECAGG_EVALUATE
    assert {g: c.get(evals, 0) for g, c in grid.per_round.items()} == {"1": 0, "2": 3}
    assert {g: c.get(evals, 0) for g, c in grid_sep.per_round.items()} == {
        "0": 3, "1": 3, "2": 3}
    def stages(counts: dict[str, int]) -> int:  # (the site names are asked for once a run)
        return sum(n for kind, n in counts.items() if kind != MessageType.HELLO)

    assert stages(grid.per_round["1"]) == 5 * 3  # the five secure-aggregation stages
    assert stages(grid_sep.per_round["1"]) == 2 * 5 * 3
    assert not folded.pending_metrics_path.exists()


def test_a_crash_between_rounds_loses_no_metrics_row(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    # act: the coordinator crashes at round 2's first message, after round 1's checkpoint;
    # round 1's row then waits for round 2's evaluation; the run is resumed
    folder, _ = _run(tmp_path, tiny_model, tiny_sites, eval_in_train=True, rounds=2,
                     crash_at=2)

    rows = folder.read_metrics()
    assert [r.round for r in rows] == [0, 1, 2]
    assert all(r.secure_evaluation for r in rows)
    assert rows[1].contributed == RUN_SITES
    assert not folder.pending_metrics_path.exists()
    assert folder.read_state().completed_round == 2


def _plain_run(tmp_path: Path, tiny_model: Path, tiny_sites: Path, *,
               eval_in_train: bool) -> tuple[RunFolder, _CountingGrid]:
    cfg = _cfg(tmp_path, tiny_model, tiny_sites, **{
        "num-server-rounds": 2, "min-sites": 3, "eval-in-train": eval_in_train,
        "secagg": False, "secagg-enrolment": "", "allow-no-privacy": True})
    nodes = {101 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}
    grid = _CountingGrid(app, nodes, cfg.to_mapping())
    grid.per_round = {}
    with server_identity():
        run_server(grid, cfg)  # type: ignore[arg-type]
    return RunFolder(cfg.out_dir), grid


def test_a_plain_run_takes_each_sites_figures_from_its_train_reply(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    folded, grid = _plain_run(tmp_path / "in-train", tiny_model, tiny_sites,
                              eval_in_train=True)
    plain, grid_sep = _plain_run(tmp_path / "separate", tiny_model, tiny_sites,
                                 eval_in_train=False)

    rows, sep = folded.read_metrics(), plain.read_metrics()
    assert [r.round for r in rows] == [0, 1, 2]
    assert all(set(r.sites) == set(RUN_SITES) for r in rows)
    # the initial adapter, evaluated inside round 1's train message or on its own: the same
    for site in RUN_SITES:
        assert rows[0].sites[site].eval_loss == pytest.approx(sep[0].sites[site].eval_loss,
                                                              rel=1e-6)
        assert rows[0].sites[site].num_examples == sep[0].sites[site].num_examples
    assert {g: c.get(MessageType.EVALUATE, 0) for g, c in grid.per_round.items()} == {
        "1": 0, "2": 3}
    assert {g: c.get(MessageType.EVALUATE, 0) for g, c in grid_sep.per_round.items()} == {
        "0": 3, "1": 3, "2": 3}
