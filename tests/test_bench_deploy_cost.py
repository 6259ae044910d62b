"""How bench_round --deployment prices one secure round from its per-message figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.wire import STAGE_MESSAGE_TYPE, MessageType
from simulations.bench_deploy import (
    TRAIN_EVALUATE,
    messages_per_round,
    secure_round_cost,
    site_alone_work,
)


def test_a_secure_round_with_its_evaluation_in_the_train_message_is_five_messages() -> None:
    counts = messages_per_round(work_ahead=False)
    # one sum: every stage once, the masked one trains and evaluates
    assert sum(counts.values()) == len(STAGE_MESSAGE_TYPE) == 5
    assert counts == {MessageType.HELLO: 4, TRAIN_EVALUATE: 1}
    # with the work begun at advertise-keys, that stage and share-keys run beside it
    assert messages_per_round() == {MessageType.HELLO: 2, TRAIN_EVALUATE: 1}


def test_a_secure_round_with_a_separate_secure_evaluation_is_ten_messages_per_site() -> None:
    counts = messages_per_round(eval_in_train=False, work_ahead=False)
    # training and evaluation each go through every stage; one stage carries the work
    assert sum(counts.values()) == 2 * len(STAGE_MESSAGE_TYPE) == 10
    assert counts == {MessageType.HELLO: 8, MessageType.TRAIN: 1, MessageType.EVALUATE: 1}
    assert messages_per_round(eval_in_train=False) == {
        MessageType.HELLO: 4, MessageType.TRAIN: 1, MessageType.EVALUATE: 1}


def test_queries_are_all_overhead_and_a_model_load_is_overhead_too() -> None:
    messages = {
        MessageType.HELLO: {"rtt_median_s": 0.25, "handler_median_s": 0.0,
                            "overhead_median_s": 0.25},
        # 9 s of training in a 12 s round trip whose handler also loaded the model for 2 s
        MessageType.TRAIN: {"rtt_median_s": 12.0, "handler_median_s": 9.0,
                            "overhead_median_s": 3.0},
        MessageType.EVALUATE: {"rtt_median_s": 4.5, "handler_median_s": 4.0,
                               "overhead_median_s": 0.5},
    }
    counts = messages_per_round(eval_in_train=False, work_ahead=False)
    overhead, compute, share = secure_round_cost(messages, counts)
    assert overhead == pytest.approx(8 * 0.25 + 3.0 + 0.5)
    assert compute == pytest.approx(13.0)
    assert share == pytest.approx(5.5 / 18.5)
    assert secure_round_cost({k: dict.fromkeys(v, 0.0) for k, v in messages.items()},
                             counts) == (0.0, 0.0, 0.0)


def test_the_site_alone_times_each_train_evaluate_message_after_the_model_load(
    tiny_model: Path, tiny_sites: Path
) -> None:
    # the site's own work, the denominator of a round's overhead share in the bench
    times = site_alone_work(repeats=2, model=str(tiny_model),
                            policy={"budget-epsilon": 8.0, "max-grad-norm": 0.01}, settings={
        "local-steps": 1, "batch-size": 8, "max-seq-len": 32, "max-eval-examples": 4,
        "dp": True, "data-dir": str(tiny_sites)})
    assert len(times) == 2 and all(t > 0 for t in times)


def test_a_rounds_fixed_overhead_is_its_time_less_the_slowest_sites_work() -> None:
    from protocol.run_rows import MetricsRow
    from simulations.bench_deploy import SECURE_ROUND_STAGES, round_overheads

    def row(r: int, stages: dict[str, float]) -> MetricsRow:
        return MetricsRow(round=r, sites={}, eval_loss=1.0, eval_perplexity=2.7,
                          stage_time_s=stages)

    stages = dict.fromkeys(SECURE_ROUND_STAGES, 0.5) | {"train (masked)": 6.0, "hello": 9.0}
    rows = [row(0, {}), row(1, stages), row(2, stages), row(3, {"checkpoint": 0.1})]
    sites = {  # round 2: a trains 2 + 0.5 s and carried 1 s of evaluation; b more slowly
        "a": {"train": {2: {"time-setup": 0.5, "time-train": 2.0}}, "evaluate": {1: {
            "time-eval": 1.0}}},
        "b": {"train": {2: {"time-setup": 0.5, "time-train": 4.0}}, "evaluate": {1: {
            "time-eval": 1.0}}},
    }
    [got] = round_overheads(rows, sites)  # round 1 (the model load) and a round without
    # its secure stages are left out; "hello" is not a stage of the secure round
    assert got["round"] == 2 and got["round_s"] == pytest.approx(6.0 + 6 * 0.5)
    assert got["work_s"] == {"a": 3.5, "b": 5.5} and got["slowest_work_s"] == 5.5
    assert got["fixed_overhead_s"] == pytest.approx(3.5)
    assert got["overhead_share"] == pytest.approx(3.5 / 9.0)
