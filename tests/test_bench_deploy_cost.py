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
    counts = messages_per_round()
    # one sum: every stage once, the masked one trains and evaluates
    assert sum(counts.values()) == len(STAGE_MESSAGE_TYPE) == 5
    assert counts == {MessageType.HELLO: 4, TRAIN_EVALUATE: 1}


def test_a_secure_round_with_a_separate_secure_evaluation_is_ten_messages_per_site() -> None:
    counts = messages_per_round(eval_in_train=False)
    # training and evaluation each go through every stage; one stage carries the work
    assert sum(counts.values()) == 2 * len(STAGE_MESSAGE_TYPE) == 10
    assert counts == {MessageType.HELLO: 8, MessageType.TRAIN: 1, MessageType.EVALUATE: 1}


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
    counts = messages_per_round(eval_in_train=False)
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
