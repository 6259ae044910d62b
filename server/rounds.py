"""The coordinator's round loop: sample, train, aggregate, checkpoint, evaluate.

Every reply is parsed by :func:`parse_reply`, which never raises: a malformed one (an error
in its records, a metric of the wrong type, a payload nested too deep or too large) becomes
a failed reply with a reason naming what was wrong, so one site can drop out of a round but
never fail the run. A secure round's participation row is written ahead of its unmask
(:meth:`RoundDriver.write_ahead`) and amended once the round's outcome is known. Under
secure aggregation the evaluation is a secure sum too (``SecureAggregator.evaluate``): the
metrics row holds the round's totals, no site's figures. Messages go out and come back
through :func:`exchange`, which polls every ``POLL_S`` (Flower's ``send_and_receive`` sleeps
3 s between pulls), so the stages of a secure round cost little waiting.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from protocol.adapter import AdapterError, check_state, trainable_keys
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import get_payload, record_to_state, state_to_record
from protocol.run_rows import RUN_RUNNING, MetricsRow, ParticipationRow
from protocol.wire import Field, Key, MessageType, Metric, Reason, Status
from server.aggregate import apply_delta, weighted_mean
from server.rundir import RunDir, RunState

__all__ = ["POLL_S", "RoundDriver", "SiteReply", "exchange", "parse_reply", "wait_for_nodes"]

logger = logging.getLogger(__name__)

#: seconds between two pulls of the replies not yet received
POLL_S = 0.1


def exchange(grid: Grid, messages: Iterable[Message], *, timeout: float,
             poll: float = POLL_S) -> list[Message]:
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


@dataclass
class SiteReply:
    """One site's answer to a train or evaluate message."""

    node_id: int
    site: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = None
    reason: str = ""
    payload: dict[str, Any] | None = None
    #: the site's signed ledger summary ``(JSON, hex signature)``, when it sent one
    ledger_summary: tuple[str, str] | None = None


#: metrics that count something: an int >= 0; every other metric is a finite number
_COUNTS = (Metric.NUM_EXAMPLES, Metric.NUM_TOKENS, Metric.STEPS)
_MAX_REASON = 600


def _metrics_problem(metrics: Mapping[str, Any]) -> str | None:
    """Say what is wrong with a reply's metrics, or return None."""
    for key, value in metrics.items():
        if key in _COUNTS:
            if type(value) is not int or value < 0:
                return f"metric `{key}` must be an integer >= 0, got {value!r:.80}"
        elif (not isinstance(value, (int, float)) or isinstance(value, bool)
              or not math.isfinite(value)):
            return f"metric `{key}` must be a finite number, got {value!r:.80}"
    return None


def _parse(msg: Message) -> SiteReply:
    node = int(msg.metadata.src_node_id)
    if msg.has_error():
        return SiteReply(node, f"node-{node}", Status.FAILED,
                         reason=str(msg.error.reason)[-_MAX_REASON:])
    content = msg.content
    status: Any = content.get(Key.CONFIG, {})
    site = status.get(Field.SITE, f"node-{node}")
    if not isinstance(site, str):
        return SiteReply(node, f"node-{node}", Status.FAILED,
                         reason=f"{Reason.MALFORMED_REPLY}: `{Field.SITE}` is not a string")
    metrics = dict(content[Key.METRICS]) if Key.METRICS in content else {}
    problem = _metrics_problem(metrics)
    if problem is not None:
        return SiteReply(node, site, Status.FAILED, reason=f"{Reason.MALFORMED_REPLY}: {problem}")
    arrays = record_to_state(content.array_records[Key.ARRAYS]) \
        if Key.ARRAYS in content.array_records else None
    payload = None
    if Key.SECAGG in content:
        try:
            payload = get_payload(content)
        except ValueError as exc:
            return SiteReply(node, site, Status.FAILED,
                             reason=f"malformed secure-aggregation payload: {exc}")
    summary = None
    if Field.LEDGER_SUMMARY in status and Field.LEDGER_SIGNATURE in status:
        summary = (str(status[Field.LEDGER_SUMMARY]), str(status[Field.LEDGER_SIGNATURE]))
    return SiteReply(node, site, str(status.get(Field.STATUS, "")), metrics, arrays,
                     str(status.get(Field.REASON, ""))[:_MAX_REASON], payload, summary)


def parse_reply(msg: Message) -> SiteReply:
    """Parse a site's reply as a :class:`SiteReply`.

    A malformed reply is a failed one, never an exception (the reason names the error's type
    and message).
    """
    try:
        return _parse(msg)
    except Exception as exc:  # noqa: BLE001 - whatever a site sent, the run goes on
        try:
            node = int(msg.metadata.src_node_id)
        except Exception:  # noqa: BLE001
            node = -1
        return SiteReply(node, f"node-{node}", Status.FAILED,
                         reason=f"{Reason.MALFORMED_REPLY} ({type(exc).__name__}: "
                                f"{str(exc)[:200]})")


def _state_digest(state: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over an adapter's tensors in name order (to tell an unchanged adapter)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    return h.hexdigest()


def content_bytes(msg: Message) -> int:
    """Payload bytes a reply carries: tensor data plus string / bytes config values."""
    if msg.has_error():
        return 0
    total = 0
    for rec in msg.content.values():
        for value in rec.values():
            data = getattr(value, "data", None)
            if isinstance(data, bytes):  # an Array
                total += len(data)
            elif isinstance(value, (bytes, str)):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in value)
            else:
                total += 8
    return total


def _safe_bytes(msg: Message) -> int:
    try:
        return content_bytes(msg)
    except Exception:  # noqa: BLE001 - a malformed reply is counted as empty
        return 0


def _eval_problem(m: Mapping[str, Any]) -> str | None:
    for key in (Metric.EVAL_LOSS, Metric.NUM_EXAMPLES, Metric.NUM_TOKENS):
        if key not in m:
            return f"metric `{key}` is missing"
    if m[Metric.NUM_EXAMPLES] <= 0:
        return f"metric `{Metric.NUM_EXAMPLES}` must be > 0, got {m[Metric.NUM_EXAMPLES]!r}"
    return None


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
        self.upload_keys = trainable_keys(list(shapes), cfg.aggregation)
        self.exhausted: set[int] = set()  # declined for budget: never sampled again
        self.stopped_early = ""
        self.secure: Any = None  # a server.secure.SecureAggregator when secure aggregation is on
        self.bytes_received: dict[int, int] = {}  # round -> payload bytes of the sites' replies

    # messaging ---------------------------------------------------------------------------
        #: (digest, evaluation) of the last adapter evaluated under secure aggregation
        self._last_eval: tuple[str, dict[str, Any]] | None = None

    def instructions(self, round_num: int) -> RoundInstructions:
        """Return what every site is asked to do in ``round_num`` (train and evaluate)."""
        return RoundInstructions.for_round(self.cfg, round_num=round_num, run_id=self.run_id)

    def _send(self, nodes: Iterable[int], kind: str, content: RecordDict,
              round_num: int) -> list[SiteReply]:
        return self.send_each({n: content for n in nodes}, kind, round_num)

    def send_each(self, contents: Mapping[int, RecordDict], kind: str,
                  round_num: int) -> list[SiteReply]:
        """Send each node its own content; wait at most ``round-timeout`` for the replies."""
        nodes = sorted(contents)
        messages = [Message(contents[n], dst_node_id=n, message_type=kind,
                            group_id=str(round_num)) for n in nodes]
        raw = exchange(self.grid, messages, timeout=self.cfg.round_timeout)
        self.bytes_received[round_num] = (self.bytes_received.get(round_num, 0)
                                          + sum(_safe_bytes(m) for m in raw))
        replies = [parse_reply(m) for m in raw]
        replies = [r for r in replies if r.node_id in contents]
        got = {r.node_id for r in replies}
        if len(got) < len(nodes):
            logger.warning("round %d: %s: %d of %d sites replied within %.0f s", round_num, kind,
                           len(got), len(nodes), self.cfg.round_timeout)
        for n in nodes:
            if n not in got:
                replies.append(SiteReply(n, self.site_names.get(n, f"node-{n}"), Status.TIMEOUT,
                                         reason=f"no reply within {self.cfg.round_timeout:.0f} s"))
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
        """Ask nodes whose site name is not known yet (cheap: no model is loaded)."""
        unknown = [n for n in nodes if n not in self.site_names]
        if unknown:
            self._send(unknown, MessageType.HELLO, RecordDict({Key.CONFIG: ConfigRecord({})}),
                       round_num)

    # phases ------------------------------------------------------------------------------
    def sample(self, round_num: int) -> list[int]:
        """Sites for this round, among those whose budget is not known to be exhausted."""
        nodes = wait_for_nodes(self.grid, minimum=self.cfg.min_sites,
                               timeout=self.cfg.round_timeout)
        able = [n for n in nodes if n not in self.exhausted]
        k = max(self.cfg.min_sites, math.ceil(self.cfg.fraction_train * len(able)))
        rng = random.Random(f"{self.cfg.seed}|{round_num}")
        return sorted(rng.sample(able, min(k, len(able))))

    def evaluate(self, round_num: int, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Evaluate ``state`` at the connected sites: the round's metrics row fields."""
        nodes = wait_for_nodes(self.grid, minimum=self.cfg.min_sites,
                               timeout=self.cfg.round_timeout)
        if self.secure is not None:
            return self._secure_evaluate(round_num, state, nodes)
        content = RecordDict({Key.ARRAYS: state_to_record(state),
                              Key.CONFIG: self.instructions(round_num).to_record()})
        replies = self._send(nodes, MessageType.EVALUATE, content, round_num)
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
        self.discover_names(nodes, round_num)
        totals, part = self.secure.evaluate(round_num, state, nodes,
                                            self.instructions(round_num))
        for site, why in {**part["declined"], **part["failed"]}.items():
            logger.warning("round %d: secure evaluation without %s: %s", round_num, site, why)
        digest = _state_digest(state)
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

    def train_and_aggregate(
        self, round_num: int, state: Mapping[str, np.ndarray], nodes: list[int]
    ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
        """Send ``train``, check and aggregate the replies; return the new state (or None)."""
        content = RecordDict({Key.ARRAYS: state_to_record(state),
                              Key.CONFIG: self.instructions(round_num).to_record()})
        replies = self._send(nodes, MessageType.TRAIN, content, round_num)
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
            part["sampled"].sort()
            return None, part
        mean = weighted_mean([r.arrays for r in accepted if r.arrays is not None],
                             [float(r.metrics[Metric.NUM_EXAMPLES]) for r in accepted])
        part["contributed"] = sorted(r.site for r in accepted)
        part["released"] = True
        part["train_loss"] = {r.site: float(r.metrics.get(Metric.TRAIN_LOSS, float("nan")))
                              for r in accepted}
        part["sampled"].sort()
        return apply_delta(state, mean), part

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

    # the run -----------------------------------------------------------------------------
    def _resume_evaluation(self, state: Mapping[str, np.ndarray], last_round: int) -> None:
        """Take the recorded secure evaluation of the checkpointed adapter (resume)."""
        rows = [r for r in self.rundir.read_metrics() if r.round == last_round]
        if rows and rows[-1].secure_evaluation:
            doc = rows[-1].to_json()
            keep = ("eval_loss", "eval_perplexity", "sites", "secure_evaluation",
                    "eval_num_examples", "eval_num_tokens", "eval_contributed",
                    "eval_decoding_error_bound")
            self._last_eval = (_state_digest(state), {k: doc[k] for k in keep if k in doc})

    def run(self, state: dict[str, np.ndarray], *, start_round: int) -> dict[str, np.ndarray]:
        """Run rounds ``start_round``.. to the end and return the final global adapter."""
        cfg = self.cfg
        resumed_at = start_round if start_round > 0 else -1
        check_state(state, self.shapes, what="starting adapter")
        if start_round > 0 and self.secure is not None:
            self._resume_evaluation(state, start_round - 1)
        if start_round == 0:
            start_round = 1
            t0 = time.perf_counter()
            ev = self.evaluate(0, state)
            self.rundir.save_round(0, state, self.lora_cfg)
            self.rundir.append_metrics(MetricsRow.from_json({
                "round": 0, **ev, "round_time_s": time.perf_counter() - t0,
                "bytes_received": self.bytes_received.pop(0, 0)}))
            self.rundir.write_state(RunState(self.run_id, 0, cfg.num_server_rounds,
                                             RUN_RUNNING))
            logger.info("round 0/%d: eval loss %.4f (perplexity %.2f)", cfg.num_server_rounds,
                        ev["eval_loss"], ev["eval_perplexity"])
        for rnd in range(start_round, cfg.num_server_rounds + 1):
            t0 = time.perf_counter()
            nodes = self.sample(rnd)
            if not nodes:
                self.stopped_early = (f"before round {rnd}: every site has declined for "
                                      f"{Reason.BUDGET_EXHAUSTED}; no site can train")
                logger.warning("stopping %s", self.stopped_early)
                break
            if self.secure is not None:
                self.discover_names(nodes, rnd)
                attempt = self.attempt(rnd, resumed=rnd == resumed_at)
                new_state, part = self.secure.round(rnd, state, nodes, self.instructions(rnd),
                                                    attempt=attempt)
                if part.get("site_level_dp", {}).get("budget_exhausted"):
                    # nothing was trained or released; further rounds would only be refused
                    self.rundir.append_participation(ParticipationRow.from_json(part))
                    self.stopped_early = (f"before round {rnd}: {part['abort_reason']}; no "
                                          "further aggregate may be released")
                    logger.warning("stopping %s", self.stopped_early)
                    break
            else:
                new_state, part = self.train_and_aggregate(rnd, state, nodes)
            if new_state is None:
                logger.warning("round %d: no update released; global adapter unchanged", rnd)
            else:
                state = new_state
            self._record(part)  # before the checkpoint: a crash after it keeps the record
            self.rundir.save_round(rnd, state, self.lora_cfg)
            ev = self.evaluate(rnd, state)
            elapsed = time.perf_counter() - t0
            self.rundir.append_metrics(MetricsRow.from_json({
                "round": rnd, **ev, "round_time_s": elapsed,
                "contributed": part["contributed"], "released": part["released"],
                "dropped": part.get("dropped", []),
                "train_loss": part.get("train_loss", {}), "epsilon": part["epsilon"],
                "declined": part["declined"], "bytes_received": self.bytes_received.pop(rnd, 0),
            }))
            self.rundir.write_state(RunState(self.run_id, rnd, cfg.num_server_rounds,
                                             RUN_RUNNING))
            logger.info("round %d/%d: %d/%d sites contributed, eval loss %.4f (perplexity %.2f), "
                        "%.1f s", rnd, cfg.num_server_rounds, len(part["contributed"]), len(nodes),
                        ev["eval_loss"], ev["eval_perplexity"], elapsed)
        return state
