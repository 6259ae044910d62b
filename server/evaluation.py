"""A round's federated evaluation: each site's held-out loss, or under secure aggregation a sum.

:class:`RoundEvaluator` evaluates one adapter over the sites its driver picked. On the plain
path each site's figures come back in the clear and the metrics row lists them; under secure
aggregation (``SecureAggregator.evaluate``) the row holds the round's totals, no site's
figures. A secure evaluation that aborts over an adapter already evaluated (its digest
unchanged, e.g. every site declined a re-run) keeps that evaluation, since sites rightly
refuse a second sum over it; after a resume the recorded row stands in for it. One that
aborts over a new adapter, or does not decode, leaves the row without an evaluation
(``eval_unavailable``: why) and the run goes on: a site's input is hidden, so one enrolled
site can spoil a sum, and a malformed message from one site must not end a run.

With ``eval-in-train`` a round's metrics row waits (:meth:`RoundEvaluator.defer`) until the
next round's train message has evaluated its adapter at the sites (:meth:`RoundEvaluator.settle`);
the rows waiting are kept in RUN_DIR (``pending-metrics.json``) so a resumed run writes them.
They all wait for one adapter, the current global one: a row is only deferred for it, and
settled before the adapter changes.
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
from protocol.run_rows import MetricsRow
from protocol.secure_stats import EvalTotals
from protocol.wire import Key, MessageType, Metric, Reason, Status
from server.replies import SiteReply
from server.rundir import RunDir
from server.stage_clock import StageClock

__all__ = ["RoundEvaluator", "state_digest"]

logger = logging.getLogger(__name__)

#: metrics-row fields of a secure evaluation, taken from the recorded row on resume
_SECURE_EVAL_FIELDS = ("eval_loss", "eval_perplexity", "sites", "secure_evaluation",
                       "eval_num_examples", "eval_num_tokens", "eval_contributed",
                       "eval_decoding_error_bound", "eval_unavailable")


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


def _eval_problem(m: Mapping[str, Any], keys: tuple[str, str, str]) -> str | None:
    """Say what is missing or wrong in an evaluation's metrics ``keys``: loss, examples, tokens."""
    for key in keys:
        if key not in m:
            return f"{Reason.MALFORMED_REPLY}: metric `{key}` is missing"
    loss, n = m[keys[0]], m[keys[1]]
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
        return (f"{Reason.MALFORMED_REPLY}: metric `{keys[0]}` must be a finite number, "
                f"got {loss!r}")
    if type(n) is not int or n <= 0:
        return f"{Reason.MALFORMED_REPLY}: metric `{keys[1]}` must be an integer > 0, got {n!r}"
    return None


class RoundEvaluator:
    """Evaluates the global adapter for a round driver; remembers the last secure evaluation."""

    def __init__(self, driver: _Driver) -> None:
        self.driver = driver
        #: (digest, evaluation) of the last adapter evaluated under secure aggregation
        self._last_eval: tuple[str, dict[str, Any]] | None = None
        #: the adapter the deferred rows wait for (its digest), and the rows
        self._pending_digest = ""
        self._pending: list[dict[str, Any]] = []

    # rows waiting for their adapter's evaluation (eval-in-train) -------------------------
    @property
    def unsettled(self) -> bool:
        """Whether some metrics row waits for the evaluation of the current adapter."""
        return bool(self._pending)

    def defer(self, fields: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> None:
        """Keep a metrics row (without its evaluation) until ``state`` is evaluated.

        An adapter evaluated already (a round released nothing) has its row written at once.
        """
        digest = state_digest(state)
        if self._pending and self._pending_digest != digest:
            raise RuntimeError(f"round {fields['round']}: rows of another adapter still wait "
                               "for their evaluation")
        if self._last_eval is not None and self._last_eval[0] == digest:
            self.write([dict(fields)], self._last_eval[1])
            return
        self._pending_digest = digest
        self._pending.append(dict(fields))
        self.driver.rundir.write_pending_metrics(digest, self._pending)

    def settle(self, state: Mapping[str, np.ndarray], ev: Mapping[str, Any]) -> None:
        """Write the rows waiting for ``state`` with its evaluation ``ev``."""
        digest = state_digest(state)
        if self._pending and self._pending_digest != digest:
            raise RuntimeError("an evaluation of another adapter than the rows wait for")
        self.write(self._pending, ev)
        self._pending = []
        self.driver.rundir.write_pending_metrics(digest, [])
        if ev.get("secure_evaluation"):
            self._last_eval = (digest, dict(ev))

    def write(self, rows: list[dict[str, Any]], ev: Mapping[str, Any]) -> None:
        """Append ``rows`` (metrics rows without their evaluation) with the evaluation ``ev``."""
        for fields in rows:
            self.driver.rundir.append_metrics(MetricsRow.from_json({**fields, **ev}))
            if "eval_unavailable" in ev:
                logger.warning("round %d: no held-out evaluation: %s", fields["round"],
                               ev["eval_unavailable"])
            else:
                logger.info("round %d: eval loss %.4f (perplexity %.2f)", fields["round"],
                            ev["eval_loss"], ev["eval_perplexity"])

    @staticmethod
    def unavailable(reason: str, *, secure: bool) -> dict[str, Any]:
        """Return the metrics-row fields of an evaluation that could not be had, and why.

        Under secure aggregation one enrolled site can spoil a sum (its input is hidden, so
        the coordinator cannot tell whose it was): the round's row says so, the run goes on.
        """
        fields: dict[str, Any] = {"sites": {}, "eval_unavailable": reason}
        if secure:
            fields["secure_evaluation"] = True
        return fields

    def secure_fields(self, totals: EvalTotals, part: Mapping[str, Any]) -> dict[str, Any]:
        """Return the metrics-row fields of a secure evaluation: its totals, its sites."""
        loss = totals.eval_loss
        n = len(part["contributed"])
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "sites": {},
                "secure_evaluation": True, "eval_num_examples": totals.num_examples,
                "eval_num_tokens": totals.num_tokens, "eval_contributed": part["contributed"],
                "eval_decoding_error_bound": EvalTotals.error_bound(n) / totals.num_examples}

    @staticmethod
    def plain_fields(replies: list[SiteReply], *, in_train: bool = False,
                     round_num: int) -> dict[str, Any] | None:
        """Return a plain evaluation's metrics-row fields: each site's figures (None: none).

        ``in_train``: the figures a plain train reply carries for the adapter it received.
        """
        loss_key, n_key, t_key = ((Metric.EVAL_LOSS, Metric.EVAL_NUM_EXAMPLES,
                                   Metric.EVAL_NUM_TOKENS) if in_train else
                                  (Metric.EVAL_LOSS, Metric.NUM_EXAMPLES, Metric.NUM_TOKENS))
        sites = {}
        for r in replies:
            problem = (_eval_problem(r.metrics, (loss_key, n_key, t_key))
                       if r.status == Status.OK else r.reason or r.status)
            if problem is not None:
                logger.warning("round %d: evaluation at %s: %s", round_num, r.site, problem)
                continue
            loss = float(r.metrics[loss_key])
            sites[r.site] = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
                             "num_examples": int(r.metrics[n_key]),
                             "num_tokens": int(r.metrics[t_key])}
        if not sites:
            return None
        total = sum(s["num_examples"] for s in sites.values())
        loss = sum(s["eval_loss"] * s["num_examples"] for s in sites.values()) / total
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "sites": sites}

    def evaluate(self, round_num: int, state: Mapping[str, np.ndarray],
                 nodes: list[int]) -> dict[str, Any]:
        """Evaluate ``state`` at ``nodes``: the round's metrics row fields."""
        if self.driver.secure is not None:
            return self._secure_evaluate(round_num, state, nodes)
        content = RecordDict({Key.ARRAYS: state_to_record(state),
                              Key.CONFIG: self.driver.instructions(round_num).to_record()})
        replies = self.driver.send_each({n: content for n in nodes}, MessageType.EVALUATE,
                                        round_num)
        ev = self.plain_fields(replies, round_num=round_num)
        return ev if ev is not None else self.unavailable("no site returned an evaluation",
                                                          secure=False)

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
            ev = self.unavailable(f"the secure evaluation was aborted: "
                                  f"{part.get('abort_reason', '')}", secure=True)
            self._last_eval = (digest, ev)  # no second sum over the same adapter
            return ev
        ev = self.secure_fields(totals, part)
        self._last_eval = (digest, ev)
        return ev

    def resume(self, state: Mapping[str, np.ndarray], last_round: int) -> None:
        """Take up the rows waiting for the checkpointed adapter, or its recorded evaluation."""
        digest = state_digest(state)
        pending_digest, pending = self.driver.rundir.read_pending_metrics()
        if pending:
            if pending_digest != digest:
                raise RuntimeError(f"the metrics rows of rounds {[r['round'] for r in pending]} "
                                   "wait for another adapter than the checkpoint of round "
                                   f"{last_round}")
            self._pending_digest, self._pending = digest, pending
        rows = [r for r in self.driver.rundir.read_metrics() if r.round == last_round]
        if rows and rows[-1].secure_evaluation:
            doc = rows[-1].to_json()
            self._last_eval = (digest, {k: doc[k] for k in _SECURE_EVAL_FIELDS if k in doc})
