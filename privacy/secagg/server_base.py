"""State, helpers and result type shared by the server's stage methods (see :mod:`.server`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from privacy.secagg.cohort import check_distinct_identities
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggAbort, SecAggError
from privacy.secagg.graph import prune_to_threshold
from privacy.secagg.payloads import REPLY_KEYS, check_reply
from privacy.secagg.stages import Stage, check_transition
from protocol.secure_stats import round_label

__all__ = ["SecAggResult", "ServerBase"]

logger = logging.getLogger("privacy.secagg.server")

_F = TypeVar("_F", bound=Callable[..., bool])


def _never_raises(stage: Stage) -> Callable[[_F], _F]:
    """Turn anything a malformed reply makes a ``receive_*`` method raise into a rejection."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def guarded(self: ServerBase, node_id: object, reply: object) -> bool:
            try:
                return method(self, node_id, reply)
            except (SecAggAbort, AssertionError):
                raise
            except Exception as exc:  # a reply must never take the round down
                logger.debug("reply from node %s raised", node_id, exc_info=True)
                return self._reject(node_id, stage, f"malformed reply ({type(exc).__name__})")

        return guarded  # type: ignore[return-value]

    return wrap


@dataclass(frozen=True)
class SecAggResult:
    """Outcome of a completed round.

    Attributes
    ----------
    vector : numpy.ndarray
        Sum mod 2^k of the encoded inputs of ``contributors``; decode it with
        :func:`protocol.codec.decode`.
    contributors : tuple of int
        Sites whose input is in the sum.
    dropped : tuple of int
        Sampled sites whose input is not in the sum.
    threshold : int
        The round's threshold t.
    rejections : tuple of (int, str, str)
        ``(node id, stage, reason)`` of every rejected reply.
    """

    vector: np.ndarray
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    threshold: int
    rejections: tuple[tuple[int, str, str], ...]


class ServerBase:
    """State and checks of the server's state machine for one round (stages: ServerSession).

    Parameters
    ----------
    config : SecAggConfig
        The round's configuration; ``config.cohort`` is the set of sampled sites.
    registry : mapping of int to bytes
        Raw Ed25519 identity public keys of (at least) every sampled site.
    """

    def __init__(self, *, config: SecAggConfig, registry: Mapping[int, bytes]) -> None:
        if not isinstance(config, SecAggConfig):
            raise ValueError(f"`config` must be a SecAggConfig, got {type(config).__name__}")
        missing = [n for n in config.cohort if n not in registry]
        if missing:
            raise ValueError(f"`registry` has no identity key for sampled node {missing[0]}")
        try:
            check_distinct_identities(registry, config.cohort)
        except SecAggError as exc:
            raise ValueError(f"`registry`: {exc}") from None
        self._config = config
        self._binding = config.binding
        self._graph = config.graph()
        self._registry = {n: registry[n] for n in config.cohort}
        self._stage = Stage.SETUP
        self._adverts: dict[int, tuple[bytes, bytes, bytes, bytes]] = {}
        self._u1: frozenset[int] = frozenset()
        self._expected_recipients: dict[int, list[int]] = {}
        self._inbox: dict[int, dict[int, bytes]] = {}
        self._shared: set[int] = set()
        self._u2: frozenset[int] = frozenset()
        self._acc: np.ndarray | None = None
        self._u3: set[int] = set()
        self._commits: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        self._signatures: dict[int, bytes] = {}
        self._unmask_lists: dict[int, tuple[list[int], list[int]]] = {}
        self._unmask_done: set[int] = set()
        self._seed_shares: dict[int, list[bytes]] = {}
        self._key_shares: dict[int, list[bytes]] = {}
        self._rejections: list[tuple[int, str, str]] = []

    @property
    def stage(self) -> Stage:
        """The stage whose replies are being collected."""
        return self._stage

    @property
    def config(self) -> SecAggConfig:
        """The round's configuration."""
        return self._config

    @property
    def rejections(self) -> tuple[tuple[int, str, str], ...]:
        """``(node id, stage, reason)`` of every rejected reply so far."""
        return tuple(self._rejections)

    # ------------------------------------------------------------------ helpers

    def _advance(self, stage: Stage) -> None:
        check_transition(self._stage, stage)
        self._stage = stage

    def _abort(self, reason: str) -> SecAggAbort:
        stage = self._stage.value
        logger.warning(
            "secure aggregation round %s aborted at %s: %s", round_label(self._config.round), stage,
            reason
        )
        self._stage = Stage.ABORTED
        self._acc = None
        self._seed_shares.clear()
        self._key_shares.clear()
        self._inbox.clear()
        return SecAggAbort(stage, reason)

    def _reject(self, node_id: object, stage: Stage, reason: str) -> bool:
        logger.warning("rejected %s reply from node %s: %s", stage.value, node_id, reason)
        self._rejections.append((node_id if type(node_id) is int else -1, stage.value, reason))
        return False

    def _accept(
        self, node_id: int, reply: Mapping[str, Any], stage: Stage, allowed: frozenset[int]
    ) -> str | None:
        """Reason to reject a reply before reading its body, or None."""
        if type(node_id) is not int or node_id not in self._config.cohort:
            return "node was not sampled"
        if self._stage != stage:
            return f"the server is at stage {self._stage.value!r}"
        if node_id not in allowed:
            return "node is no longer in the round"
        try:
            check_reply(
                reply, stage=stage, binding=self._binding, node_id=node_id, extra=REPLY_KEYS[stage]
            )
        except SecAggError as exc:
            return str(exc)
        return None

    def _header(self, stage: Stage) -> dict[str, Any]:
        return {
            "run-id": self._config.run_id,
            "round": self._config.round,
            "stage": stage.value,
            "config-digest": self._binding.config_digest,
        }

    def _prune(self, alive: set[int], stage: Stage) -> frozenset[int]:
        """Keep the sites that still have t - 1 live neighbours; abort if fewer than t."""
        t = self._config.threshold
        kept, removed = prune_to_threshold(self._graph, alive, threshold=t)
        for node in removed:
            logger.warning(
                "node %d leaves round %d at %s: too few live neighbours for threshold %d",
                node,
                self._config.round,
                stage.value,
                t,
            )
        if len(kept) < t:
            raise self._abort(f"{len(kept)} sites remain, threshold is {t}")
        return kept
