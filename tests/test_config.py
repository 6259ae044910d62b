"""Run configuration: kebab-case keys, types and ranges are checked with named errors."""

from __future__ import annotations

import pytest

from protocol.config import ConfigError, RunConfig


def test_defaults_are_valid_and_round_trip() -> None:
    cfg = RunConfig()
    assert RunConfig.from_mapping(cfg.to_mapping()) == cfg
    assert cfg.aggregation == "frozen-a"
    # per architecture; the embedded Llama resolves it to q_proj,v_proj (test_lora_targets.py)
    assert cfg.target_modules == ["auto"]


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("num-server-rounds", 0, "`num-server-rounds` must be > 0, got 0"),
        ("num-server-rounds", True, "`num-server-rounds` must be an integer, got True"),
        ("local-steps", 2.5, "`local-steps` must be an integer"),
        ("learning-rate", "fast", "`learning-rate` must be a number"),
        ("aggregation", "median", "`aggregation` must be one of"),
        ("eval-fraction", 1.0, "`eval-fraction` must be in (0, 1)"),
        ("device", "tpu", "`device` must be one of"),
        ("lora-target-modules", " , ", "`lora-target-modules` must be a comma-separated list"),
    ],
)
def test_bad_values_name_key_and_value(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({key: value})
    assert needle in str(err.value)


def test_unknown_key_refused_unless_extras_allowed() -> None:
    with pytest.raises(ConfigError, match="unknown configuration key `num-rounds`"):
        RunConfig.from_mapping({"num-rounds": 3})
    cfg = RunConfig.from_mapping({"dp-budget": 4.0}, allow_extra=True)
    assert cfg.extra == {"dp-budget": 4.0}
    assert cfg.to_mapping()["dp-budget"] == 4.0


def test_int_is_accepted_for_float_fields() -> None:
    assert RunConfig.from_mapping({"learning-rate": 1}).learning_rate == 1.0
