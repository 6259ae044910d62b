"""The round's instructions: built by the coordinator, parsed and checked by the site.

They travel as the ``Key.CONFIG`` ConfigRecord of ``train``, ``evaluate`` and
``train.secagg`` messages. Every default comes from :class:`protocol.config.RunConfig`
(the coordinator builds the instructions from it); a site reads each field from the record
or refuses it, naming the field and the value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord

from protocol.config import AGGREGATION_MODES, SITE_LEVEL_DP_MODES, RunConfig
from protocol.wire import PROTOCOL_VERSION, Field, SiteLevelDPKey

__all__ = ["InstructionError", "RoundInstructions", "SecAggCodec", "SiteLevelDPPlan"]

Scalar = int | float | str | bool


class InstructionError(ValueError):
    """A round-instructions field is missing, unknown, of the wrong type or out of range."""


def _typed(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (an int is a float; a bool is never an int), else raise."""
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise InstructionError(f"`{name}` must be {kind.__name__}, got {value!r}")
    return value


def _take(rec: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in rec:
        raise InstructionError(f"round instructions lack `{name}`")
    return _typed(name, rec[name], kind)


def _need(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise InstructionError(f"`{name}` must be {rule}, got {value!r}")


#: (wire name, attribute, type) of a record's fields
_Table = tuple[tuple[str, str, type], ...]


def _check_fields(obj: Any, table: _Table) -> None:
    for name, attr, kind in table:
        object.__setattr__(obj, attr, _typed(name, getattr(obj, attr), kind))


_CODEC: _Table = (
    (Field.SECAGG_CLIP, "clip", float),
    (Field.SECAGG_SCALE, "scale", float),
    (Field.SECAGG_MAX_WEIGHT, "max_weight", float),
    (Field.MANIFEST, "manifest", str),
)


@dataclass(frozen=True)
class SecAggCodec:
    """How a site encodes its delta for secure aggregation (without site-level DP)."""

    clip: float
    scale: float
    max_weight: float
    manifest: str  # digest of the names and shapes the site's delta must have

    def __post_init__(self) -> None:
        _check_fields(self, _CODEC)
        _need(self.clip > 0, Field.SECAGG_CLIP, "> 0", self.clip)
        _need(self.scale > 0, Field.SECAGG_SCALE, "> 0", self.scale)
        _need(self.max_weight >= 1, Field.SECAGG_MAX_WEIGHT, ">= 1", self.max_weight)

    def to_config(self) -> dict[str, Scalar]:
        """Return the codec's wire fields (kebab-case keys)."""
        return {name: getattr(self, attr) for name, attr, _ in _CODEC}

    @classmethod
    def from_config(cls, rec: Mapping[str, Any]) -> SecAggCodec:
        """Parse (and check) the codec's fields of a received record."""
        return cls(*(_take(rec, name, kind) for name, _, kind in _CODEC))


_PLAN_TYPES: dict[str, type] = {
    SiteLevelDPKey.CLIP: float, SiteLevelDPKey.DIM: int, SiteLevelDPKey.BITS: int,
    SiteLevelDPKey.GAMMA: float, SiteLevelDPKey.LOCAL_SIGMA: float, SiteLevelDPKey.COHORT: int,
    SiteLevelDPKey.MAX_CONTRIBUTORS: int, SiteLevelDPKey.BETA: float,
    SiteLevelDPKey.ROTATION_SEED: str,
}


@dataclass(frozen=True)
class SiteLevelDPPlan:
    """The round's site-level DP mode and plan (``privacy.ddg.DDGParams.to_config`` keys).

    The site checks the plan's privacy itself (``client.site_level_dp``).
    """

    mode: str
    params: Mapping[str, Scalar]

    def __post_init__(self) -> None:
        _need(self.mode in SITE_LEVEL_DP_MODES, Field.SITE_LEVEL_DP_MODE,
              f"one of {SITE_LEVEL_DP_MODES}", self.mode)
        unknown = sorted(set(self.params) - set(_PLAN_TYPES))
        if unknown:
            raise InstructionError(f"unknown site-level DP plan key `{unknown[0]}`")
        object.__setattr__(self, "params", {
            k: _take(self.params, k, kind) for k, kind in _PLAN_TYPES.items()})

    def to_config(self) -> dict[str, Scalar]:
        """Return the plan's wire fields: its parameters and the mode."""
        return {**self.params, Field.SITE_LEVEL_DP_MODE: self.mode}

    @classmethod
    def from_config(cls, rec: Mapping[str, Any]) -> SiteLevelDPPlan:
        """Parse (and check) the site-level DP fields of a received record."""
        return cls(_take(rec, Field.SITE_LEVEL_DP_MODE, str), {k: rec[k] for k in _PLAN_TYPES
                                                         if k in rec})


_BASE: _Table = (
    (Field.ROUND, "round_num", int),
    (Field.RUN_ID, "run_id", str),
    (Field.AGGREGATION, "aggregation", str),
    (Field.LOCAL_STEPS, "local_steps", int),
    (Field.BATCH_SIZE, "batch_size", int),
    (Field.LEARNING_RATE, "learning_rate", float),
    (Field.PLANNED_ROUNDS, "planned_rounds", int),
    (Field.DP_ENABLED, "dp_enabled", bool),
    (Field.NOISE_MULTIPLIER, "noise_multiplier", float),
)


@dataclass(frozen=True)
class RoundInstructions:
    """What the coordinator asks of a site for one round (frozen; validated)."""

    round_num: int
    run_id: str
    aggregation: str
    local_steps: int
    batch_size: int
    learning_rate: float
    planned_rounds: int
    dp_enabled: bool
    #: σ the coordinator asks for; -1: left to the site's policy
    noise_multiplier: float
    codec: SecAggCodec | None = field(default=None, kw_only=True)
    site_level_dp: SiteLevelDPPlan | None = field(default=None, kw_only=True)
    #: the wire format the coordinator speaks (:data:`protocol.wire.PROTOCOL_VERSION`)
    protocol_version: int = field(default=PROTOCOL_VERSION, kw_only=True)
    #: train messages only: also return the held-out figures of the adapter received (the
    #: adapter after round ``round_num - 1``); never with site-level DP
    evaluate_received: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_fields(self, _BASE)
        _need(type(self.protocol_version) is int and self.protocol_version == PROTOCOL_VERSION,
              Field.PROTOCOL_VERSION, f"{PROTOCOL_VERSION}, the version this site speaks",
              self.protocol_version)
        _need(self.round_num >= 0, Field.ROUND, ">= 0", self.round_num)
        _need(self.aggregation in AGGREGATION_MODES, Field.AGGREGATION,
              f"one of {AGGREGATION_MODES}", self.aggregation)
        _need(self.local_steps > 0, Field.LOCAL_STEPS, "> 0", self.local_steps)
        _need(self.batch_size > 0, Field.BATCH_SIZE, "> 0", self.batch_size)
        _need(self.learning_rate > 0, Field.LEARNING_RATE, "> 0", self.learning_rate)
        _need(self.planned_rounds > 0, Field.PLANNED_ROUNDS, "> 0", self.planned_rounds)
        _need(self.noise_multiplier == -1.0 or self.noise_multiplier >= 0,
              Field.NOISE_MULTIPLIER, ">= 0 (or -1: left to the site)", self.noise_multiplier)
        if self.site_level_dp is not None and self.codec is None:
            raise InstructionError("site-level DP instructions without the secagg codec")
        _need(type(self.evaluate_received) is bool, Field.EVALUATE_RECEIVED, "true or false",
              self.evaluate_received)
        if self.evaluate_received:
            _need(self.round_num >= 1, Field.ROUND, ">= 1 when the message evaluates the "
                  "adapter it carries (the previous round's)", self.round_num)
            if self.site_level_dp is not None:
                raise InstructionError(f"`{Field.EVALUATE_RECEIVED}` with site-level DP: its "
                                       "noise covers the whole input, the figures would not "
                                       "decode")

    @classmethod
    def for_round(cls, cfg: RunConfig, *, round_num: int, run_id: str) -> RoundInstructions:
        """Build the coordinator's instructions for ``round_num`` of run ``run_id``."""
        return cls(round_num=round_num, run_id=run_id, aggregation=cfg.aggregation,
                   local_steps=cfg.local_steps, batch_size=cfg.batch_size,
                   learning_rate=cfg.learning_rate, planned_rounds=cfg.num_server_rounds,
                   dp_enabled=cfg.dp, noise_multiplier=cfg.dp_noise_multiplier)

    def evaluating_received(self) -> RoundInstructions:
        """Return these instructions, also asking for the figures of the adapter sent."""
        return dataclasses.replace(self, evaluate_received=True)

    def with_secagg(self, codec: SecAggCodec,
                    site_level_dp: SiteLevelDPPlan | None = None) -> RoundInstructions:
        """Return the same instructions for a secure-aggregation round (``train.secagg``)."""
        return dataclasses.replace(self, codec=codec, site_level_dp=site_level_dp)

    @property
    def requested_noise_multiplier(self) -> float | None:
        """σ the coordinator asks for, or None when it leaves σ to the site."""
        return self.noise_multiplier if self.noise_multiplier >= 0 else None

    def to_config(self) -> dict[str, Scalar]:
        """Return the wire form: kebab-case keys, base fields, then codec, then site-level DP."""
        out: dict[str, Scalar] = {name: getattr(self, attr) for name, attr, _ in _BASE}
        out[Field.PROTOCOL_VERSION] = self.protocol_version
        if self.evaluate_received:
            out[Field.EVALUATE_RECEIVED] = True
        if self.codec is not None:
            out.update(self.codec.to_config())
        if self.site_level_dp is not None:
            out.update(self.site_level_dp.to_config())
        return out

    def to_record(self) -> ConfigRecord:
        """Return the wire form as the ConfigRecord sent to the site."""
        return ConfigRecord(dict(self.to_config().items()))

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> RoundInstructions:
        """Parse (and check) the ConfigRecord a site received; unknown keys are refused."""
        known = {name for name, _, _ in _BASE} | {Field.PROTOCOL_VERSION,
                                                   Field.EVALUATE_RECEIVED}
        codec = site_level_dp = None
        if Field.MANIFEST in rec:
            codec = SecAggCodec.from_config(rec)
            known.update(name for name, _, _ in _CODEC)
        if Field.SITE_LEVEL_DP_MODE in rec:
            site_level_dp = SiteLevelDPPlan.from_config(rec)
            known.update([Field.SITE_LEVEL_DP_MODE, *_PLAN_TYPES])
        unknown = sorted(set(rec) - known)
        if unknown:
            raise InstructionError(f"unknown round-instructions key `{unknown[0]}` "
                                   f"(value {rec[unknown[0]]!r})")
        return cls(*(_take(rec, name, kind) for name, _, kind in _BASE), codec=codec,
                   site_level_dp=site_level_dp,
                   protocol_version=rec.get(Field.PROTOCOL_VERSION, PROTOCOL_VERSION),
                   evaluate_received=rec.get(Field.EVALUATE_RECEIVED, False))
