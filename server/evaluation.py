"""A round's federated evaluation: each site's held-out loss, or under secure aggregation a sum.

:class:`RoundEvaluator` evaluates one adapter over the sites its driver picked. On the plain
path each site's figures come back in the clear and the metrics row lists them; under secure
aggregation (``SecureAggregator.evaluate``) the row holds the round's totals, no site's
figures. A secure evaluation that aborts over an adapter already evaluated (its digest
unchanged, e.g. every site declined a re-run) keeps that evaluation, since sites rightly
refuse a second sum over it; after a resume the recorded row stands in for it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from flwr.app import RecordDict

from protocol.instructions import RoundInstructions
from protocol.messages import state_to_record
from protocol.wire import Key, MessageType, Metric, Reason, Status
from server.replies import SiteReply
from server.rundir import RunDir
from server.stage_clock import StageClock

__all__ = ["RoundEvaluator", "state_digest"]

logger = logging.getLogger(__name__)

#: metrics-row fields of a secure evaluation, taken from the recorded row on resume
_SECURE_EVAL_FIELDS = ("eval_loss", "eval_perplexity", "sites", "secure_evaluation",
                       "eval_num_examples", "eval_num_tokens", "eval_contributed",
                       "eval_decoding_error_bound")


class _Driver(Protocol):
    """What the evaluator needs of its round driver (:class:`server.rounds.RoundDriver`)."""

    rundir: RunDir
    #: times the stages of each round (:class:`server.stage_clock.StageClock`)
    clock: StageClock
    #: a server.secure.SecureAggregator when secure aggregation is on, else None
    secure: Any

    def instructions(self, round_num: int) -> RoundInstructions:
        """Return what every site is asked to do in ``round_num``."""
        ...

    def send_each(self, contents: Mapping[int, RecordDict], kind: str,
                  round_num: int) -> list[SiteReply]:
        """Send each node its own content; return the replies."""
        ...

    def discover_names(self, nodes: list[int], round_num: int) -> None:
        """Learn the site names of ``nodes`` not known yet."""
        ...


def state_digest(state: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over an adapter's tensors in name order (to tell an unchanged adapter)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    return h.hexdigest()


def _eval_problem(m: Mapping[str, Any]) -> str | None:
    """Say what is missing or wrong in an evaluation reply's metrics, or return None."""
    for key in (Metric.EVAL_LOSS, Metric.NUM_EXAMPLES, Metric.NUM_TOKENS):
        if key not in m:
            return f"metric `{key}` is missing"
    if m[Metric.NUM_EXAMPLES] <= 0:
        return f"metric `{Metric.NUM_EXAMPLES}` must be > 0, got {m[Metric.NUM_EXAMPLES]!r}"
    return None


class RoundEvaluator:
    """Evaluates the global adapter for a round driver; remembers the last secure evaluation."""

    def __init__(self, driver: _Driver) -> None:
        self.driver = driver
        #: (digest, evaluation) of the last adapter evaluated under secure aggregation
        self._last_eval: tuple[str, dict[str, Any]] | None = None

    def evaluate(self, round_num: int, state: Mapping[str, np.ndarray],
                 nodes: list[int]) -> dict[str, Any]:
        """Evaluate ``state`` at ``nodes``: the round's metrics row fields."""
        if self.driver.secure is not None:
            return self._secure_evaluate(round_num, state, nodes)
        content = RecordDict({Key.ARRAYS: state_to_record(state),
                              Key.CONFIG: self.driver.instructions(round_num).to_record()})
        replies = self.driver.send_each({n: content for n in nodes}, MessageType.EVALUATE,
                                        round_num)
        for r in replies:
            problem = _eval_problem(r.metrics) if r.status == Status.OK else None
            if problem is not None:
                r.status, r.reason = Status.FAILED, f"{Reason.MALFORMED_REPLY}: {problem}"
        ok = [r for r in replies if r.status == Status.OK]
        for r in replies:
            if r.status != Status.OK:
                logger.warning("round %d: evaluation at %s %s: %s", round_num, r.site, r.status,
                               r.reason)
        if not ok:
            raise RuntimeError(f"round {round_num}: no site returned an evaluation")
        sites = {
            r.site: {
                "eval_loss": float(r.metrics[Metric.EVAL_LOSS]),
                "eval_perplexity": math.exp(min(float(r.metrics[Metric.EVAL_LOSS]), 50.0)),
                "num_examples": int(r.metrics[Metric.NUM_EXAMPLES]),
                "num_tokens": int(r.metrics[Metric.NUM_TOKENS]),
            }
            for r in ok
        }
        total = sum(s["num_examples"] for s in sites.values())
        loss = sum(s["eval_loss"] * s["num_examples"] for s in sites.values()) / total
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "sites": sites}

    def _secure_evaluate(self, round_num: int, state: Mapping[str, np.ndarray],
                         nodes: list[int]) -> dict[str, Any]:
        """Evaluate the round as a secure sum: totals only, no site's figure."""
        with self.driver.clock.stage(round_num, "eval: hello"):
            self.driver.discover_names(nodes, round_num)
        totals, part = self.driver.secure.evaluate(round_num, state, nodes,
                                                   self.driver.instructions(round_num))
        for site, why in {**part["declined"], **part["failed"]}.items():
            logger.warning("round %d: secure evaluation without %s: %s", round_num, site, why)
        digest = state_digest(state)
        if totals is None:
            if self._last_eval is not None and self._last_eval[0] == digest:
                # the adapter did not change (e.g. every site declined a re-run): its secure
                # evaluation stands, and sites rightly refuse a second sum over it
                logger.warning("round %d: secure evaluation aborted (%s); the adapter is "
                               "unchanged, its last evaluation stands", round_num,
                               part.get("abort_reason", ""))
                return dict(self._last_eval[1])
            raise RuntimeError(f"round {round_num}: the secure evaluation was aborted: "
                               f"{part.get('abort_reason', '')}")
        loss = totals.eval_loss
        ev = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "sites": {},
              "secure_evaluation": True, "eval_num_examples": totals.num_examples,
              "eval_num_tokens": totals.num_tokens, "eval_contributed": part["contributed"],
              "eval_decoding_error_bound": part["decoding_error_bound"] / totals.num_examples}
        self._last_eval = (digest, ev)
        return ev

    def resume(self, state: Mapping[str, np.ndarray], last_round: int) -> None:
        """Take the recorded secure evaluation of the checkpointed adapter (resume)."""
        rows = [r for r in self.driver.rundir.read_metrics() if r.round == last_round]
        if rows and rows[-1].secure_evaluation:
            doc = rows[-1].to_json()
            self._last_eval = (state_digest(state),
                               {k: doc[k] for k in _SECURE_EVAL_FIELDS if k in doc})
