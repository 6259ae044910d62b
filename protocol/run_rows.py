"""Typed rows of RUN_DIR, its JSONL lines and its JSON documents.

One row per line of ``metrics.jsonl`` / ``participation.jsonl``, and the documents
``state.json``, ``run.json`` and ``ledger-summaries/<site>.json``.

Each row is a frozen dataclass whose field names are its JSON keys. Construction validates
every field and names the bad one (``metrics row: `eval_loss` must be a number, got 'x'``);
:meth:`from_json` also refuses a missing required key or an unknown key. An optional field
left ``None`` is absent from :meth:`to_json`, so what is written is exactly what the
coordinator has always written (rows are serialised with sorted keys), and folders written
before a field existed still read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "LEGACY_KEYS",
    "RUN_COMPLETED",
    "RUN_FAILED",
    "RUN_RUNNING",
    "RUN_STATUSES",
    "LedgerSummaryRecord",
    "MetricsRow",
    "ParticipationRow",
    "ResumeRecord",
    "RowError",
    "RunInfo",
    "RunState",
    "SiteEval",
    "current_key",
    "upgrade_keys",
]

RUN_RUNNING = "running"
RUN_COMPLETED = "completed"
RUN_FAILED = "failed"
RUN_STATUSES: tuple[str, ...] = (RUN_RUNNING, RUN_COMPLETED, RUN_FAILED)


class RowError(ValueError):
    """A run-folder row or document does not match the schema (the message names the field)."""


_Check = Callable[[Any, str], Any]
_R = TypeVar("_R", bound="_Row")


def _fail(where: str, what: str, value: Any) -> RowError:
    return RowError(f"{where} must be {what}, got {value!r}")


def _int(v: Any, where: str) -> int:
    if type(v) is not int or v < 0:
        raise _fail(where, "an integer >= 0", v)
    return v


def _num(v: Any, where: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _fail(where, "a number", v)
    return v  # kept as given (an int stays an int on disk)


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _fail(where, "a string", v)
    return v


def _bool(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise _fail(where, "true or false", v)
    return v


def _obj(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        raise _fail(where, "a JSON object", v)
    return dict(v)


def _names(v: Any, where: str) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise _fail(where, "a list of site names", v)
    return tuple(v)


def _map_of(check: _Check, what: str) -> _Check:
    def inner(v: Any, where: str) -> dict[str, Any]:
        out = _obj(v, where)
        return {k: check(x, f"{where}[{k!r}]") for k, x in out.items()}
    inner.__doc__ = f"A JSON object of {what}."
    return inner


_str_map = _map_of(_str, "strings")
_num_map = _map_of(_num, "numbers")


def _dump(v: Any) -> Any:
    if isinstance(v, _Row):
        return v.to_json()
    if isinstance(v, tuple):
        return [_dump(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _dump(x) for k, x in v.items()}
    return v

#: Keys of run folders written before example-level and site-level DP were named apart
#: (``site-dp-policy`` was the example-level policy; ``site-dp*`` / ``site_dp`` site-level DP).
LEGACY_KEYS = {"site-dp-policy": "dp-policy", "site_dp": "site_level_dp"}
_LEGACY_PREFIX = ("site-dp-", "site-level-dp-")


def current_key(key: str) -> str:
    """Return the key's current name (old run folders still read; see :data:`LEGACY_KEYS`)."""
    if key in LEGACY_KEYS:
        return LEGACY_KEYS[key]
    if key == "site-dp":
        return "site-level-dp"
    if key.startswith(_LEGACY_PREFIX[0]):
        return _LEGACY_PREFIX[1] + key[len(_LEGACY_PREFIX[0]):]
    return key


def upgrade_keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with every legacy key renamed to its current name."""
    return {current_key(str(k)): v for k, v in doc.items()}


class _Row:
    """Validation and JSON form shared by the rows (field name == JSON key)."""

    _WHAT: ClassVar[str]
    _CHECKS: ClassVar[Mapping[str, _Check]]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None or f.default is dataclasses.MISSING:
                object.__setattr__(self, f.name,
                                   self._CHECKS[f.name](value, f"{self._WHAT}: `{f.name}`"))

    @classmethod
    def from_json(cls: type[_R], doc: Any) -> _R:  # noqa: PYI019 - Self needs 3.11
        """Parse one row; :class:`RowError` names a missing, unknown or bad key."""
        if not isinstance(doc, Mapping):
            raise _fail(cls._WHAT, "a JSON object", doc)
        doc = upgrade_keys(doc)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in doc if k not in fields)
        if unknown:
            raise RowError(f"{cls._WHAT}: unknown key `{unknown[0]}`")
        for name, f in fields.items():
            if f.default is dataclasses.MISSING and name not in doc:
                raise RowError(f"{cls._WHAT}: `{name}` is missing")
        return cls(**doc)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object written to disk (fields left ``None`` are absent)."""
        return {f.name: _dump(getattr(self, f.name))
                for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if getattr(self, f.name) is not None}


def _rows_of(cls: type[_R]) -> _Check:
    def inner(v: Any, where: str) -> Any:
        if isinstance(v, cls):
            return v
        try:
            return cls.from_json(v)
        except RowError as exc:
            raise RowError(f"{where}: {exc}") from None
    return inner


@dataclass(frozen=True)
class SiteEval(_Row):
    """One site's held-out evaluation in a metrics row (``sites[<site>]``)."""

    _WHAT = "site evaluation"
    eval_loss: float
    eval_perplexity: float
    num_examples: int
    num_tokens: int


_SITE_EVAL = _rows_of(SiteEval)


@dataclass(frozen=True)
class MetricsRow(_Row):
    """One line of ``metrics.jsonl``: the evaluation after a round (round 0: before training).

    ``contributed`` ... ``declined`` are written for rounds >= 1 only.

    With secure aggregation the coordinator knows sums only: ``sites`` is empty and
    ``train_loss`` absent; ``eval_loss`` comes from the secure evaluation's totals
    (``eval_num_examples``, ``eval_num_tokens``, summed over ``eval_contributed``) and is
    within ``eval_decoding_error_bound`` of the plaintext figure of the same sites. Each
    site's own figures stay in its state directory (:mod:`protocol.site_log`).

    A round whose evaluation could not be had (a secure sum aborted or did not decode: a
    site's input is hidden, so one enrolled site can spoil the sum) has no ``eval_loss`` and
    ``eval_perplexity`` but ``eval_unavailable``, the reason; the run goes on.
    """

    _WHAT = "metrics row"
    round: int
    sites: Mapping[str, SiteEval]
    #: the held-out loss and perplexity; both None exactly when ``eval_unavailable`` says why
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    eval_unavailable: str | None = None
    round_time_s: float | None = None
    bytes_received: int | None = None
    contributed: tuple[str, ...] | None = None
    released: bool | None = None
    dropped: tuple[str, ...] | None = None
    train_loss: Mapping[str, float] | None = None
    epsilon: Mapping[str, float] | None = None
    declined: Mapping[str, str] | None = None
    secure_evaluation: bool | None = None
    eval_num_examples: int | None = None
    eval_num_tokens: int | None = None
    eval_contributed: tuple[str, ...] | None = None
    eval_decoding_error_bound: float | None = None
    #: the coordinator's wall seconds per stage of the round (``server.stage_clock``) and the
    #: part of each spent waiting for the sites' replies; durations only, nothing per site
    stage_time_s: Mapping[str, float] | None = None
    stage_wait_s: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_unavailable is not None:
            for name in ("eval_loss", "eval_perplexity"):
                if getattr(self, name) is not None:
                    raise RowError(f"{self._WHAT}: `{name}` is given but `eval_unavailable` "
                                   f"says there is no evaluation ({self.eval_unavailable!r})")
            return
        for name in ("eval_loss", "eval_perplexity"):  # an evaluation, or why there is none
            if getattr(self, name) is None:
                raise RowError(f"{self._WHAT}: `{name}` is missing (and no "
                               "`eval_unavailable` says why)")

    @property
    def evaluated(self) -> bool:
        """Whether the row holds an evaluation (not ``eval_unavailable``)."""
        return self.eval_unavailable is None

    def held_out(self) -> tuple[float, float]:
        """Return the held-out loss and perplexity; :class:`RowError` says why if none."""
        if self.eval_loss is None or self.eval_perplexity is None:
            raise RowError(f"round {self.round}: no held-out evaluation ({self.eval_unavailable})")
        return float(self.eval_loss), float(self.eval_perplexity)


MetricsRow._CHECKS = {
    "round": _int, "eval_loss": _num, "eval_perplexity": _num, "eval_unavailable": _str,
    "sites": _map_of(_SITE_EVAL, "site evaluations"), "round_time_s": _num,
    "bytes_received": _int, "contributed": _names, "released": _bool, "dropped": _names,
    "train_loss": _num_map, "epsilon": _num_map, "declined": _str_map,
    "secure_evaluation": _bool, "eval_num_examples": _int, "eval_num_tokens": _int,
    "eval_contributed": _names, "eval_decoding_error_bound": _num,
    "stage_time_s": _num_map, "stage_wait_s": _num_map,
}
SiteEval._CHECKS = {"eval_loss": _num, "eval_perplexity": _num, "num_examples": _int,
                    "num_tokens": _int}


@dataclass(frozen=True)
class ParticipationRow(_Row):
    """One line of ``participation.jsonl``: who was sampled, who is in the aggregate, and why not.

    ``declined`` / ``failed`` map a site to its reason. With secure aggregation the row also
    holds ``dropped``, ``threshold``, ``degree``, ``modulus_bits``,
    ``decoding_error_bound`` and, when a round is aborted, ``abort_reason``; with site-level
    DP ``site_level_dp`` is the round's accounting record (see :mod:`server.site_level_dp`).

    ``attempt`` is the secure-aggregation attempt of the round (a resumed re-run gets a new
    one); ``charged`` is true once the row was written ahead of the unmask stage: from then
    on the aggregate may be unmasked, so the row (its ``site_level_dp`` charge included) stands
    whatever happens next, and a resume keeps it although the round was not checkpointed.
    """

    _WHAT = "participation row"
    round: int
    sampled: tuple[str, ...]
    contributed: tuple[str, ...]
    declined: Mapping[str, str]
    failed: Mapping[str, str]
    epsilon: Mapping[str, float] | None = None
    released: bool | None = None
    train_loss: Mapping[str, float] | None = None
    dropped: tuple[str, ...] | None = None
    secure_aggregation: bool | None = None
    threshold: int | None = None
    degree: int | None = None
    modulus_bits: int | None = None
    decoding_error_bound: Mapping[str, float] | None = None
    abort_reason: str | None = None
    site_level_dp: Mapping[str, Any] | None = None
    attempt: int | None = None
    charged: bool | None = None
    #: secure aggregation: the contributors' total weight, decoded from the masked sum
    total_weight: int | None = None


ParticipationRow._CHECKS = {
    "round": _int, "sampled": _names, "contributed": _names, "declined": _str_map,
    "failed": _str_map, "epsilon": _num_map, "released": _bool, "train_loss": _num_map,
    "dropped": _names, "secure_aggregation": _bool, "threshold": _int, "degree": _int,
    "modulus_bits": _int, "decoding_error_bound": _num_map, "abort_reason": _str,
    "site_level_dp": _obj, "attempt": _int, "charged": _bool, "total_weight": _int,
}


@dataclass(frozen=True)
class RunState(_Row):
    """``state.json``: the last completed round of a run (written last in every round)."""

    _WHAT = "state.json"
    run_id: str
    completed_round: int
    num_rounds: int
    status: str  # one of RUN_STATUSES
    stopped_early: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.status not in RUN_STATUSES:
            raise _fail(f"{self._WHAT}: `status`", f"one of {', '.join(RUN_STATUSES)}",
                        self.status)


RunState._CHECKS = {"run_id": _str, "completed_round": _int, "num_rounds": _int,
                    "status": _str, "stopped_early": _str}


@dataclass(frozen=True)
class ResumeRecord(_Row):
    """One resume of a run, as ``run.json`` lists it under ``resumed``."""

    _WHAT = "run.json resume"
    at: str
    versions: Mapping[str, str]


ResumeRecord._CHECKS = {"at": _str, "versions": _str_map}


@dataclass(frozen=True)
class RunInfo(_Row):
    """``run.json``: what the run is (id, configuration, software versions, adapter size).

    ``mode`` is ``"simulation"`` (every site's state under ``sites/``) or ``"deployment"``.
    """

    _WHAT = "run.json"
    run_id: str
    created: str
    config: Mapping[str, Any]
    versions: Mapping[str, str]
    model_resolved: str | None = None
    mode: str | None = None
    adapter_tensors: int | None = None
    adapter_parameters: int | None = None
    resumed: tuple[ResumeRecord, ...] | None = None


def _resumes(v: Any, where: str) -> tuple[ResumeRecord, ...]:
    if not isinstance(v, (list, tuple)):
        raise _fail(where, "a list", v)
    check = _rows_of(ResumeRecord)
    return tuple(check(x, f"{where}[{i}]") for i, x in enumerate(v))


RunInfo._CHECKS = {"run_id": _str, "created": _str, "config": _obj, "versions": _str_map,
                   "model_resolved": _str, "mode": _str, "adapter_tensors": _int,
                   "adapter_parameters": _int, "resumed": _resumes}


@dataclass(frozen=True)
class LedgerSummaryRecord(_Row):
    """``ledger-summaries/<site>.json``: a site's latest signed ledger summary, as received.

    ``summary`` and ``signature`` are checked by the audit (:mod:`privacy.ledger_summary`),
    not here.
    """

    _WHAT = "ledger summary"
    site: str
    node_id: int
    received_round: int
    summary: Any
    signature: str


LedgerSummaryRecord._CHECKS = {"site": _str, "node_id": _int, "received_round": _int,
                               "summary": lambda v, where: v, "signature": _str}
