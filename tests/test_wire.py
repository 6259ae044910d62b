"""The wire contract: one vocabulary, typed round instructions, explicit handler registration."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import MessageType as FlowerMessageType

from client.app import build_app
from privacy.ddg import plan_site_level_round
from privacy.secagg import Stage as SessionStage
from protocol.config import RunConfig
from protocol.instructions import InstructionError, RoundInstructions, SecAggCodec, SiteLevelDPPlan
from protocol.wire import (
    FAULT_POINTS,
    SECAGG_STAGES,
    STAGE_MESSAGE_TYPE,
    Field,
    MessageType,
    SiteLevelDPKey,
    Stage,
    fault_point,
)

#: the round instructions as the coordinator sent them before RoundInstructions existed
#: (a golden record: the wire bytes themselves, so spelled out rather than built from names)
LEGACY = {"round": 3, "run-id": "0123abcd", "aggregation": "frozen-a", "local-steps": 2,
          "batch-size": 256, "learning-rate": 0.03, "planned-rounds": 3, "dp-enabled": False,
          "noise-multiplier": -1.0}


def _plan() -> dict[str, Any]:
    return plan_site_level_round(clip=1.0, dim=100, modulus_bits=32, noise_multiplier=1.0,
                                 cohort=3, max_contributors=3,
                                 rotation_seed="ab" * 32).to_config()


def test_message_types_are_flowers_and_every_stage_has_one() -> None:
    assert (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY) == (
        FlowerMessageType.TRAIN, FlowerMessageType.EVALUATE, FlowerMessageType.QUERY)
    assert list(STAGE_MESSAGE_TYPE) == list(SECAGG_STAGES)
    assert [s.value for s in SessionStage] == [
        Stage.SETUP, *SECAGG_STAGES, Stage.DONE, Stage.ABORTED]


def test_the_client_app_registers_every_message_type_the_coordinator_sends() -> None:
    registered = set(build_app()._registered_funcs)
    sent = {MessageType.HELLO, MessageType.SECAGG_EVALUATE, *STAGE_MESSAGE_TYPE.values()}
    assert registered == {f"{MessageType.TRAIN}.default", f"{MessageType.EVALUATE}.default",
                          *sent}


def test_fault_points_keep_the_short_names_users_write() -> None:
    assert fault_point("advertise") == Stage.ADVERTISE_KEYS
    assert fault_point("share") == Stage.SHARE_KEYS
    assert all(fault_point(s) == s for s in SECAGG_STAGES)
    assert fault_point(MessageType.TRAIN) == MessageType.TRAIN
    assert fault_point("evaluate") is None and len(FAULT_POINTS) == 8


#: the same record today: the legacy fields, then the wire format's version
WIRE = {**LEGACY, "protocol-version": 5}


def test_instructions_are_byte_compatible_with_the_legacy_record() -> None:
    cfg = RunConfig()
    instr = RoundInstructions.for_round(cfg, round_num=3, run_id="0123abcd")
    assert list(instr.to_config().items()) == list(WIRE.items())
    assert all(type(v) is type(WIRE[k]) for k, v in instr.to_config().items())
    assert RoundInstructions.from_record(instr.to_record()) == instr
    assert RoundInstructions.from_record(LEGACY) == instr  # absent: not checked


@pytest.mark.parametrize("version", [1, 2, 3, 4, 6, "5", True])
def test_a_site_refuses_another_protocol_version_naming_it(version: Any) -> None:
    with pytest.raises(InstructionError, match=f"`protocol-version` must be 5, the version "
                                               f"this site speaks, got {version!r}"):
        RoundInstructions.from_record({**WIRE, "protocol-version": version})


def test_secure_instructions_round_trip_with_codec_and_site_level_dp_plan() -> None:
    base = RoundInstructions.from_record(LEGACY)
    codec = SecAggCodec(clip=10.0, scale=1e-6, max_weight=1e5, manifest="d1")
    plan = SiteLevelDPPlan("distributed", _plan())
    instr = base.with_secagg(codec, plan)
    keys = list(instr.to_config())
    assert keys == [*WIRE, "secagg-clip", "secagg-scale", "secagg-max-weight", "manifest",
                    *SiteLevelDPKey.ALL, "site-level-dp-mode"]
    assert RoundInstructions.from_record(instr.to_record()) == instr


def test_a_train_message_that_evaluates_what_it_carries_says_so_on_the_wire() -> None:
    base = RoundInstructions.from_record(LEGACY)
    asked = base.evaluating_received()
    assert asked.to_config() == {**WIRE, "evaluate-received": True}
    assert RoundInstructions.from_record(asked.to_record()) == asked
    assert "evaluate-received" not in base.to_config()  # absent unless asked
    assert not RoundInstructions.from_record(WIRE).evaluate_received


@pytest.mark.parametrize("change,match", [
    ({"evaluate-received": 1}, "`evaluate-received` must be true or false, got 1"),
    ({"evaluate-received": True, "round": 0},
     r"`round` must be >= 1 when the message evaluates the adapter it carries .*got 0"),
])
def test_a_site_refuses_a_malformed_evaluate_received_naming_it(change: dict[str, Any],
                                                                 match: str) -> None:
    with pytest.raises(InstructionError, match=match):
        RoundInstructions.from_record({**WIRE, **change})


def test_a_site_refuses_to_evaluate_inside_a_site_level_dp_input() -> None:
    # the DDG noise covers the whole input: the figures could not decode, so never asked
    codec = SecAggCodec(clip=10.0, scale=1e-6, max_weight=1e5, manifest="d1")
    instr = RoundInstructions.from_record(LEGACY).with_secagg(
        codec, SiteLevelDPPlan("distributed", _plan()))
    with pytest.raises(InstructionError, match="`evaluate-received` with site-level DP"):
        RoundInstructions.from_record({**instr.to_config(), "evaluate-received": True})


@pytest.mark.parametrize("key,value,match", [
    ("batch-size", True, "`batch-size` must be int, got True"),
    ("dp-enabled", 1, "`dp-enabled` must be bool, got 1"),
    ("learning-rate", "0.1", "`learning-rate` must be float, got '0.1'"),
    ("local-steps", 0, "`local-steps` must be > 0, got 0"),
    ("aggregation", "mean", "`aggregation` must be one of"),
    ("noise-multiplier", -0.5, "`noise-multiplier` must be >= 0"),
    ("unknown-key", 1, "unknown round-instructions key `unknown-key`"),
])
def test_a_bad_instruction_field_is_refused_naming_field_and_value(
    key: str, value: Any, match: str
) -> None:
    with pytest.raises(InstructionError, match=match):
        RoundInstructions.from_record({**LEGACY, key: value})


def test_missing_fields_are_refused_not_defaulted() -> None:
    rec = {k: v for k, v in LEGACY.items() if k != "planned-rounds"}
    with pytest.raises(InstructionError, match="lack `planned-rounds`"):
        RoundInstructions.from_record(rec)
    with pytest.raises(InstructionError, match="lack `secagg-clip`"):
        RoundInstructions.from_record({**LEGACY, Field.MANIFEST: "d1"})
    plan = {k: v for k, v in _plan().items() if k != SiteLevelDPKey.GAMMA}
    secure = {**LEGACY, **SecAggCodec(1.0, 1.0, 1.0, "d").to_config()}
    with pytest.raises(InstructionError, match="lack `site-level-dp-gamma`"):
        RoundInstructions.from_record({**secure, **plan, "site-level-dp-mode": "distributed"})
