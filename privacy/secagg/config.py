"""The configuration of one secure-aggregation round, agreed by the server and every site."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from privacy.secagg.graph import (
    NeighbourGraph,
    default_degree,
    default_threshold,
    validate_threshold,
)
from privacy.secagg.keys import RoundBinding
from protocol.secure_stats import round_label

__all__ = ["CONFIG_KEYS", "SecAggConfig", "default_degree", "default_threshold"]

_U64 = (1 << 64) - 1
_SEED_LEN = 32
_MAX_VECTOR = 1 << 40

#: Payload keys of :meth:`SecAggConfig.to_payload`, kebab-case as on Flower's wire.
CONFIG_KEYS = (
    "attempt",
    "cohort",
    "degree",
    "graph-seed",
    "modulus-bits",
    "round",
    "run-id",
    "threshold",
    "vector-length",
)


def _u64(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= _U64:
        raise ValueError(f"`{name}` must be an int in [0, 2^64), got {value!r}")
    return value


@dataclass(frozen=True)
class SecAggConfig:
    """Everything both sides of a round must agree on; its digest is signed by every site.

    Parameters
    ----------
    run_id : int
        Flower run id.
    round : int
        Server round.
    cohort : tuple of int
        Sorted, distinct node ids of the sampled sites (at least 3).
    threshold : int
        t: shares needed to reconstruct a secret, and survivors needed to finish.
    degree : int
        Neighbourhood size; ``len(cohort) - 1`` means the complete graph.
    graph_seed : bytes
        32 bytes fixing the neighbour graph, chosen by the server before key sharing.
    modulus_bits : int
        k: vectors live in Z/2^k (see :func:`protocol.codec.choose_modulus_bits`).
    vector_length : int
        Number of elements of every encoded vector.
    attempt : int
        Which attempt of ``(run_id, round)`` this is (0 for the first; a resumed or
        retried round gets a new one). Bound into the digest and into every consistency
        signature; a site contributes to at most one attempt of a round
        (:class:`~privacy.secagg.guard.RoundGuard`).
    """

    run_id: int
    round: int
    cohort: tuple[int, ...]
    threshold: int
    degree: int
    graph_seed: bytes
    modulus_bits: int
    vector_length: int
    attempt: int = 0

    def __post_init__(self) -> None:
        _u64("run_id", self.run_id)
        _u64("round", self.round)
        _u64("attempt", self.attempt)
        if not isinstance(self.cohort, tuple):
            raise ValueError(f"`cohort` must be a tuple of node ids, got {self.cohort!r}")
        for node in self.cohort:
            _u64("cohort[i]", node)
        if list(self.cohort) != sorted(set(self.cohort)):
            raise ValueError("`cohort` must be sorted and hold distinct node ids")
        validate_threshold(
            threshold=self.threshold, cohort_size=len(self.cohort), degree=self.degree
        )
        if not isinstance(self.graph_seed, bytes) or len(self.graph_seed) != _SEED_LEN:
            raise ValueError(f"`graph_seed` must be {_SEED_LEN} bytes, got {self.graph_seed!r}")
        if type(self.modulus_bits) is not int or not 2 <= self.modulus_bits <= 64:
            raise ValueError(f"`modulus_bits` must be an int in [2, 64], got {self.modulus_bits!r}")
        if type(self.vector_length) is not int or not 1 <= self.vector_length <= _MAX_VECTOR:
            raise ValueError(
                f"`vector_length` must be an int in [1, 2^40], got {self.vector_length!r}"
            )

    @classmethod
    def create(
        cls,
        *,
        run_id: int,
        round: int,
        cohort: Sequence[int],
        modulus_bits: int,
        vector_length: int,
        degree: int | None = None,
        threshold: int | None = None,
        graph_seed: bytes | None = None,
        attempt: int = 0,
    ) -> SecAggConfig:
        """Build a config, filling in defaults for what is not given.

        The degree defaults to :func:`default_degree` of the cohort size, the threshold to
        the smallest majority of share holders, and the graph seed to 32 fresh random bytes.
        """
        nodes = tuple(sorted(cohort))
        deg = default_degree(len(nodes)) if degree is None else degree
        return cls(
            run_id=run_id,
            round=round,
            cohort=nodes,
            threshold=default_threshold(deg) if threshold is None else threshold,
            degree=deg,
            graph_seed=os.urandom(_SEED_LEN) if graph_seed is None else graph_seed,
            modulus_bits=modulus_bits,
            vector_length=vector_length,
            attempt=attempt,
        )

    def to_payload(self) -> dict[str, Any]:
        """Return the config as payload entries (kebab-case keys; ints, int list, bytes)."""
        return {
            "run-id": self.run_id,
            "round": self.round,
            "cohort": list(self.cohort),
            "threshold": self.threshold,
            "degree": self.degree,
            "graph-seed": self.graph_seed,
            "modulus-bits": self.modulus_bits,
            "vector-length": self.vector_length,
            "attempt": self.attempt,
        }

    @classmethod
    def from_payload(
        cls, payload: Mapping[str, Any], *, allow_extra: Sequence[str] = ()
    ) -> SecAggConfig:
        """Parse :meth:`to_payload` output; unknown keys (beyond ``allow_extra``) are refused.

        Raises
        ------
        ValueError
            Naming the missing or unknown key, or the field that is out of range.
        """
        missing = [k for k in CONFIG_KEYS if k not in payload]
        if missing:
            raise ValueError(f"secure-aggregation config is missing key {missing[0]!r}")
        unknown = sorted(set(payload) - set(CONFIG_KEYS) - set(allow_extra))
        if unknown:
            raise ValueError(f"secure-aggregation config has unknown key {unknown[0]!r}")
        cohort = payload["cohort"]
        if not isinstance(cohort, (list, tuple)):
            raise ValueError(f"`cohort` must be a list of node ids, got {cohort!r}")
        return cls(
            run_id=payload["run-id"],
            round=payload["round"],
            cohort=tuple(cohort),
            threshold=payload["threshold"],
            degree=payload["degree"],
            graph_seed=payload["graph-seed"],
            modulus_bits=payload["modulus-bits"],
            vector_length=payload["vector-length"],
            attempt=payload["attempt"],
        )

    def to_json(self) -> bytes:
        """Canonical JSON of :meth:`to_payload` (graph seed in hex), for storage."""
        payload = self.to_payload()
        payload["graph-seed"] = self.graph_seed.hex()
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SecAggConfig:
        """Parse :meth:`to_json` output.

        Raises
        ------
        ValueError
            If the JSON is malformed or a field is out of range.
        """
        payload = json.loads(data)
        if not isinstance(payload, dict) or not isinstance(payload.get("graph-seed"), str):
            raise ValueError("stored secure-aggregation config is malformed")
        payload["graph-seed"] = bytes.fromhex(payload["graph-seed"])
        return cls.from_payload(payload)

    def digest(self) -> bytes:
        """SHA-256 of the canonical binary encoding of every field."""
        parts = [
            b"confide/secagg/v1/config",
            struct.pack(">QQQ", self.run_id, self.round, self.attempt),
            struct.pack(">I", len(self.cohort)),
            *(struct.pack(">Q", v) for v in self.cohort),
            struct.pack(
                ">IIIQ", self.threshold, self.degree, self.modulus_bits, self.vector_length
            ),
            self.graph_seed,
        ]
        return hashlib.sha256(b"".join(parts)).digest()

    @property
    def signature_threshold(self) -> int:
        """Consistency signatures a site needs before it reveals anything.

        ``max(t, floor(n / 2) + 1)`` for a cohort of n: a strict majority of the cohort, so
        that two different contributor sets can never both be signed by enough sites (an
        honest site signs one set per attempt). In the complete graph with the default
        threshold this is t itself; in a sparse graph t alone would let the coordinator
        show disjoint groups of t sites different sets.
        """
        return max(self.threshold, len(self.cohort) // 2 + 1)

    @property
    def binding(self) -> RoundBinding:
        """Run, round and config digest that every key and signature is bound to."""
        return RoundBinding(self.run_id, self.round, self.digest())

    def graph(self) -> NeighbourGraph:
        """Build the round's neighbour graph."""
        return NeighbourGraph(self.cohort, self.degree, self.graph_seed)

    def summary(self) -> str:
        """One-screen description of the round's secure-aggregation settings (no secrets)."""
        kind = "complete" if self.degree == len(self.cohort) - 1 else f"{self.degree}-regular"
        return (
            f"SecAgg run {self.run_id} round {round_label(self.round)} attempt {self.attempt}: "
            f"{len(self.cohort)} sites, "
            f"{kind} graph, threshold {self.threshold}, "
            f"{self.signature_threshold} consistency signatures, ring Z/2^{self.modulus_bits}, "
            f"{self.vector_length} elements"
        )
