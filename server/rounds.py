"""The coordinator's round loop: sample, train, aggregate, checkpoint, evaluate.

Every reply is parsed by :func:`~server.replies.parse_reply`, which never raises: a malformed
one becomes a failed reply with a reason naming what was wrong, so one site can drop out of a
round but never fail the run. A secure round's participation row is written ahead of its unmask
(:meth:`RoundDriver.write_ahead`) and amended once the round's outcome is known. Under
secure aggregation the evaluation (:mod:`server.evaluation`) is a secure sum too: the
metrics row holds the round's totals, no site's figures. Messages go out and come back
through :func:`exchange`, which polls every ``poll-interval`` s (0.1 by default; Flower's
``send_and_receive`` sleeps 3 s between pulls), so the stages of a secure round cost little
waiting. Each round's metrics row records the coordinator's wall time per stage and the part
of it spent waiting for replies (:mod:`server.stage_clock`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privacy.secagg import MIN_COHORT
from protocol.adapter import AdapterError, check_state, trainable_keys
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import state_to_record
from protocol.run_rows import RUN_RUNNING, ParticipationRow, RunState
from protocol.wire import Key, MessageType, Metric, Reason, Status
from server.aggregate import apply_delta, weighted_mean
from server.evaluation import RoundEvaluator
from server.received import describe_reply
from server.replies import SiteReply, content_bytes, parse_reply
from server.rundir import RunDir
from server.stage_clock import StageClock

__all__ = ["RoundDriver", "SLOW_STAGE_SHARE", "SiteReply", "exchange", "parse_reply",
           "wait_for_nodes"]

logger = logging.getLogger(__name__)

#: a message exchange that takes more than this share of ``round-timeout`` is logged
SLOW_STAGE_SHARE = 0.5


def exchange(grid: Grid, messages: Iterable[Message], *, timeout: float,
             poll: float) -> list[Message]:
    """Push ``messages``, then pull their replies until all have come or ``timeout`` s pass.

    Replies are pulled every ``poll`` s (the semantics of ``Grid.send_and_receive``, polled
    faster).
    """
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        time.sleep(min(poll, left))
    return replies


class NoSitesError(RuntimeError):
    """Not enough sites connected within the timeout."""


def wait_for_nodes(grid: Grid, *, minimum: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Wait until at least ``minimum`` sites are connected; error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise NoSitesError(
                f"waited {timeout:.0f} s for at least {minimum} sites to connect, "
                f"{len(nodes)} connected"
            )
        time.sleep(poll)


def _safe_bytes(msg: Message) -> int:
    try:
        return content_bytes(msg)
    except Exception:  # noqa: BLE001 - a malformed reply is counted as empty
        return 0


class RoundDriver:
    """Runs rounds over a Flower :class:`Grid` and records everything in a :class:`RunDir`."""

    def __init__(self, grid: Grid, cfg: RunConfig, rundir: RunDir, *, run_id: str,
                 lora_cfg: Any, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.grid = grid
        self.cfg = cfg
        self.rundir = rundir
        self.run_id = run_id
        self.lora_cfg = lora_cfg
        self.shapes = dict(shapes)
        self.site_names: dict[int, str] = {}
        #: node -> the round in which it did not answer ``query.hello`` (not asked again then)
        self._silent: dict[int, int] = {}
        self.upload_keys = trainable_keys(list(shapes), cfg.aggregation)
        self.exhausted: set[int] = set()  # declined for budget: never sampled again
        self.stopped_early = ""
        self.secure: Any = None  # a server.secure.SecureAggregator when secure aggregation is on
        self.bytes_received: dict[int, int] = {}  # round -> payload bytes of the sites' replies
        self.evaluator = RoundEvaluator(self)
        #: wall time per stage of each round, and the part spent waiting for replies
        self.clock = StageClock()

    # messaging ---------------------------------------------------------------------------

    def instructions(self, round_num: int) -> RoundInstructions:
        """Return what every site is asked to do in ``round_num`` (train and evaluate)."""
        return RoundInstructions.for_round(self.cfg, round_num=round_num, run_id=self.run_id)

    def _send(self, nodes: Iterable[int], kind: str, content: RecordDict,
              round_num: int) -> list[SiteReply]:
        return self.send_each({n: content for n in nodes}, kind, round_num)

    def send_each(self, contents: Mapping[int, RecordDict], kind: str,
                  round_num: int, *, timeout_key: str = "round-timeout") -> list[SiteReply]:
        """Send each node its own content; wait at most ``round-timeout`` for the replies.

        ``timeout_key`` names another run-config key to wait for instead (``hello-timeout``).
        """
        limit = float(getattr(self.cfg, timeout_key.replace("-", "_")))
        nodes = sorted(contents)
        messages = [Message(contents[n], dst_node_id=n, message_type=kind,
                            group_id=str(round_num)) for n in nodes]
        t0 = time.perf_counter()
        raw = exchange(self.grid, messages, timeout=limit, poll=self.cfg.poll_interval)
        waited = time.perf_counter() - t0
        self.clock.waited(round_num, waited)
        if waited > SLOW_STAGE_SHARE * limit:
            logger.warning("round %d: %s took %.0f s of the %.0f s %s: on a slower or busier "
                           "machine sites would be dropped here (raise %s)", round_num, kind,
                           waited, limit, timeout_key, timeout_key)
        self.bytes_received[round_num] = (self.bytes_received.get(round_num, 0)
                                          + sum(_safe_bytes(m) for m in raw))
        if self.cfg.record_received:  # what the coordinator received, as received
            self.rundir.append_received([describe_reply(m, round_num=round_num) for m in raw])
        replies = [parse_reply(m) for m in raw]
        replies = [r for r in replies if r.node_id in contents]
        got = {r.node_id for r in replies}
        if len(got) < len(nodes):
            logger.warning("round %d: %s: %d of %d sites replied within %g s (%s)", round_num,
                           kind, len(got), len(nodes), limit, timeout_key)
        for n in nodes:
            if n not in got:
                replies.append(SiteReply(
                    n, self.site_names.get(n, f"node-{n}"), Status.TIMEOUT,
                    reason=f"no reply to {kind} within {limit:g} s ({timeout_key})"))
        for r in replies:
            if r.status == Status.OK:
                self.site_names[r.node_id] = r.site
            elif r.site.startswith("node-"):
                r.site = self.site_names.get(r.node_id, r.site)
            if r.ledger_summary is not None:
                self.rundir.save_ledger_summary(r.site, *r.ledger_summary, round_num=round_num,
                                                node_id=r.node_id)
        return sorted(replies, key=lambda r: r.node_id)

    def discover_names(self, nodes: Iterable[int], round_num: int) -> None:
        """Ask nodes whose site name is not known yet (cheap: no model is loaded).

        Each waits at most ``hello-timeout``; one that stayed silent is not asked again in
        the same round (a killed SuperNode stays listed until its heartbeats expire).
        """
        unknown = [n for n in nodes if n not in self.site_names
                   and self._silent.get(n) != round_num]
        if not unknown:
            return
        content = RecordDict({Key.CONFIG: ConfigRecord({})})
        replies = self.send_each({n: content for n in unknown}, MessageType.HELLO, round_num,
                                 timeout_key="hello-timeout")
        for r in replies:
            if r.status == Status.TIMEOUT:
                self._silent[r.node_id] = round_num

    # phases ------------------------------------------------------------------------------
    def sample(self, round_num: int) -> list[int]:
        """Sites for this round, among those whose budget is not known to be exhausted.

        Under secure aggregation it first waits for as many connected sites as a secure sum
        needs (:meth:`_connected`).
        """
        nodes = self._connected(round_num, "secure round")
        able = [n for n in nodes if n not in self.exhausted]
        k = max(self.cfg.min_sites, math.ceil(self.cfg.fraction_train * len(able)))
        rng = random.Random(f"{self.cfg.seed}|{round_num}")
        return sorted(rng.sample(able, min(k, len(able))))

    def evaluate(self, round_num: int, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Evaluate ``state`` at the connected sites: the round's metrics row fields.

        A secure evaluation first waits, up to ``round-timeout``, for as many connected sites
        as a secure sum needs (:data:`privacy.secagg.MIN_COHORT`; a site dropped in the round
        may still be reconnecting); after that it runs over whoever is there.
        """
        return self.evaluator.evaluate(round_num, state,
                                       self._connected(round_num, "secure evaluation"))

    def _connected(self, round_num: int, what: str) -> list[int]:
        """Return the connected sites: at least ``min-sites``, more under secure aggregation.

        A secure sum needs :data:`privacy.secagg.MIN_COHORT` sites (a site dropped in the
        last round may still be reconnecting): wait for them up to ``round-timeout``, then
        take whoever is there (the sum then says why it cannot be set up).
        """
        nodes = wait_for_nodes(self.grid, minimum=self.cfg.min_sites,
                               timeout=self.cfg.round_timeout)
        if self.secure is None or len(nodes) >= MIN_COHORT:
            return nodes
        logger.info("round %d: %d sites connected; waiting up to %.0f s for the %d a %s "
                    "needs", round_num, len(nodes), self.cfg.round_timeout, MIN_COHORT, what)
        try:
            return wait_for_nodes(self.grid, minimum=MIN_COHORT,
                                  timeout=self.cfg.round_timeout, poll=self.cfg.poll_interval)
        except NoSitesError:
            return sorted(self.grid.get_node_ids())

    def train_and_aggregate(
        self, round_num: int, state: Mapping[str, np.ndarray], nodes: list[int], *,
        evaluate: bool = False,
    ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any], dict[str, Any] | None]:
        """Send ``train``, check and aggregate the replies.

        Return the new state (or None), the round's participation record and, with
        ``evaluate``, the metrics-row evaluation of ``state`` from the figures the replies
        carry (None: no site's).
        """
        instr = self.instructions(round_num)
        content = RecordDict({Key.ARRAYS: state_to_record(state),
                              Key.CONFIG: (instr.evaluating_received() if evaluate
                                           else instr).to_record()})
        replies = self._send(nodes, MessageType.TRAIN, content, round_num)
        ev = (self.evaluator.plain_fields(replies, in_train=True, round_num=round_num)
              if evaluate else None)
        expected = {k: self.shapes[k] for k in self.upload_keys}
        accepted: list[SiteReply] = []
        part: dict[str, Any] = {"round": round_num, "sampled": [], "contributed": [],
                                "declined": {}, "failed": {}, "epsilon": {}}
        for r in replies:
            part["sampled"].append(r.site)
            if Metric.EPSILON in r.metrics:
                part["epsilon"][r.site] = float(r.metrics[Metric.EPSILON])
            if r.status == Status.DECLINED and r.reason == Reason.BUDGET_EXHAUSTED:
                self.exhausted.add(r.node_id)
            if r.status != Status.OK:
                bucket = "declined" if r.status == Status.DECLINED else "failed"
                part[bucket][r.site] = r.reason or r.status
                logger.warning("round %d: site %s %s: %s", round_num, r.site, r.status, r.reason)
                continue
            try:
                if r.arrays is None:
                    raise AdapterError("reply carries no adapter delta")
                check_state(r.arrays, expected, what=f"delta from {r.site}")
                n = r.metrics.get(Metric.NUM_EXAMPLES)
                if type(n) is not int or n <= 0:
                    raise AdapterError(f"`{Metric.NUM_EXAMPLES}` must be a positive integer, "
                                       f"got {n!r}")
            except AdapterError as exc:
                part["failed"][r.site] = f"rejected: {exc}"
                logger.warning("round %d: rejected update from %s: %s", round_num, r.site, exc)
                continue
            accepted.append(r)
        if len(accepted) < 1:
            part["released"] = False
            part["abort_reason"] = (f"no update accepted ({len(part['declined'])} declined, "
                                    f"{len(part['failed'])} failed of {len(replies)} sampled)")
            logger.warning("round %d: %s; nothing released", round_num, part["abort_reason"])
            part["sampled"].sort()
            return None, part, ev
        mean = weighted_mean([r.arrays for r in accepted if r.arrays is not None],
                             [float(r.metrics[Metric.NUM_EXAMPLES]) for r in accepted])
        part["contributed"] = sorted(r.site for r in accepted)
        part["released"] = True
        part["train_loss"] = {r.site: float(r.metrics.get(Metric.TRAIN_LOSS, float("nan")))
                              for r in accepted}
        part["sampled"].sort()
        return apply_delta(state, mean), part, ev

    # the record --------------------------------------------------------------------------
    def write_ahead(self, part: Mapping[str, Any]) -> None:
        """Append a secure round's participation row before its unmask (``charged``)."""
        self.rundir.append_participation(ParticipationRow.from_json(dict(part)))

    def _record(self, part: Mapping[str, Any]) -> None:
        """Record the round's final participation row, replacing the row written ahead, if any."""
        row = ParticipationRow.from_json(dict(part))
        if row.charged:
            self.rundir.replace_last_participation(row)
        else:
            self.rundir.append_participation(row)

    def attempt(self, round_num: int, *, resumed: bool) -> int:
        """Return the secure-aggregation attempt number of ``round_num``.

        0, or for a resumed re-run one more than any attempt recorded for it (rows written
        ahead survive the resume).
        """
        tried = [p.attempt or 0 for p in self.rundir.read_participation()
                 if p.round == round_num]
        if tried:
            return max(tried) + 1
        return 1 if resumed else 0

    def _stage_fields(self, round_num: int) -> dict[str, dict[str, float]]:
        """Return the round's stage times as metrics-row fields (and forget them)."""
        times, waits = self.clock.pop(round_num)
        return {"stage_time_s": times, "stage_wait_s": waits}

    def _timed_evaluate(self, round_num: int, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Evaluate; the plain path is one stage, a secure one times its own stages."""
        if self.secure is not None:
            return self.evaluate(round_num, state)
        with self.clock.stage(round_num, "evaluate"):
            return self.evaluate(round_num, state)

    # the run -----------------------------------------------------------------------------
    @property
    def eval_in_train(self) -> bool:
        """Whether each train message evaluates the adapter it carries (``eval-in-train``).

        Not with site-level DP: its noise covers the whole input.
        """
        return self.cfg.eval_in_train and (self.secure is None
                                           or self.secure.site_level_dp is None)

    def _train_round(self, rnd: int, state: dict[str, np.ndarray], nodes: list[int], *,
                     resumed_at: int) -> tuple[dict[str, np.ndarray] | None, dict[str, Any],
                                               dict[str, Any] | None, bool]:
        """Run round ``rnd``'s training: new state, participation, evaluation of ``state``.

        The last item says whether the train message asked for that evaluation: only when a
        metrics row waits for it (:meth:`RoundEvaluator.defer`).
        """
        evaluate = self.eval_in_train and self.evaluator.unsettled
        if self.secure is None:
            with self.clock.stage(rnd, "train"):
                return (*self.train_and_aggregate(rnd, state, nodes, evaluate=evaluate),
                        evaluate)
        with self.clock.stage(rnd, "hello"):
            self.discover_names(nodes, rnd)
        attempt = self.attempt(rnd, resumed=rnd == resumed_at)
        new_state, part, totals = self.secure.round(rnd, state, nodes, self.instructions(rnd),
                                                    attempt=attempt, evaluate=evaluate)
        ev = None if totals is None else self.evaluator.secure_fields(totals, part)
        return new_state, part, ev, evaluate

    def _settle(self, rnd: int, sent: dict[str, np.ndarray], ev: dict[str, Any] | None,
                changed: bool) -> None:
        """Write the rows waiting for ``sent`` with the evaluation round ``rnd`` brought.

        Without one (the figures did not come or decode) they wait for the next round when
        the adapter is unchanged; otherwise ``sent`` is evaluated on its own now, at the
        sites that can still give one (a site sends one evaluation per adapter).
        """
        if ev is None and not changed:
            return
        if ev is None:
            logger.warning("round %d: the training inputs brought no evaluation of round "
                           "%d's adapter; evaluating it on its own", rnd, rnd - 1)
            ev = self._timed_evaluate(rnd - 1, sent)
        self.evaluator.settle(sent, ev)

    def _metrics_row(self, rnd: int, t0: float, part: Mapping[str, Any]) -> dict[str, Any]:
        """Round ``rnd``'s metrics-row fields other than its evaluation (and forget its times)."""
        fields: dict[str, Any] = {"round": rnd, "round_time_s": time.perf_counter() - t0,
                                  "bytes_received": self.bytes_received.pop(rnd, 0),
                                  **self._stage_fields(rnd)}
        if rnd > 0:
            fields.update({"contributed": part["contributed"], "released": part["released"],
                           "dropped": part.get("dropped", []),
                           "train_loss": part.get("train_loss", {}),
                           "epsilon": part["epsilon"], "declined": part["declined"]})
        return fields

    def _close_round(self, rnd: int, t0: float, part: Mapping[str, Any],
                     state: dict[str, np.ndarray]) -> None:
        """Write round ``rnd``'s metrics row (or defer it to the next round's evaluation)."""
        if self.eval_in_train:
            self.evaluator.defer(self._metrics_row(rnd, t0, part), state)
        else:
            ev = self._timed_evaluate(rnd, state)
            self.evaluator.write([self._metrics_row(rnd, t0, part)], ev)
        self.rundir.write_state(RunState(self.run_id, rnd, self.cfg.num_server_rounds,
                                         RUN_RUNNING))

    # the run -----------------------------------------------------------------------------
    def run(self, state: dict[str, np.ndarray], *, start_round: int) -> dict[str, np.ndarray]:
        """Run rounds ``start_round``.. to the end and return the final global adapter.

        With ``eval-in-train`` round r's train message evaluates the adapter after round
        r - 1, whose metrics row is written then; the last adapter is evaluated on its own.
        """
        cfg = self.cfg
        resumed_at = start_round if start_round > 0 else -1
        check_state(state, self.shapes, what="starting adapter")
        if start_round > 0:
            self.evaluator.resume(state, start_round - 1)
        last = start_round - 1
        if start_round == 0:
            start_round, last = 1, 0
            t0 = time.perf_counter()
            with self.clock.stage(0, "checkpoint"):
                self.rundir.save_round(0, state, self.lora_cfg)
            self._close_round(0, t0, {}, state)
        for rnd in range(start_round, cfg.num_server_rounds + 1):
            t0 = time.perf_counter()
            with self.clock.stage(rnd, "sample"):
                nodes = self.sample(rnd)
            if not nodes:
                self.stopped_early = (f"before round {rnd}: every site has declined for "
                                      f"{Reason.BUDGET_EXHAUSTED}; no site can train")
                logger.warning("stopping %s", self.stopped_early)
                break
            new_state, part, ev, asked = self._train_round(rnd, state, nodes,
                                                           resumed_at=resumed_at)
            if part.get("site_level_dp", {}).get("budget_exhausted"):
                # nothing was trained or released; further rounds would only be refused
                self.rundir.append_participation(ParticipationRow.from_json(part))
                self.stopped_early = (f"before round {rnd}: {part['abort_reason']}; no "
                                      "further aggregate may be released")
                logger.warning("stopping %s", self.stopped_early)
                break
            sent = state
            if new_state is None:
                logger.warning("round %d: no update released; global adapter unchanged", rnd)
            else:
                state = new_state
            if asked:
                self._settle(rnd, sent, ev, changed=new_state is not None)
            with self.clock.stage(rnd, "checkpoint"):
                self._record(part)  # before the checkpoint: a crash after it keeps the record
                self.rundir.save_round(rnd, state, self.lora_cfg)
            self._close_round(rnd, t0, part, state)
            last = rnd
            logger.info("round %d/%d: %d/%d sites contributed, %.1f s", rnd,
                        cfg.num_server_rounds, len(part["contributed"]), len(nodes),
                        time.perf_counter() - t0)
        if self.evaluator.unsettled:  # the last adapter, on its own
            self.evaluator.settle(state, self._timed_evaluate(last, state))
        return state
