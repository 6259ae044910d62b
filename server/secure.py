"""One round of secure aggregation driven over Flower messages.

Stages (each one message per site, each with the round timeout), one method each, named as
in Flower's ``SecAggPlusWorkflow``:

1. :meth:`~SecureAggregator.setup_stage` (``query.secagg_advertise``): the round's config,
   with the global adapter, the round's instructions and the codec parameters; sites return
   signed X25519 keys and begin the round's local work at once (:mod:`client.ahead`), so
   it runs while keys and shares are routed.
2. :meth:`~SecureAggregator.share_keys_stage` (``query.secagg_share``): neighbours' signed
   adverts; sites return encrypted Shamir shares.
3. :meth:`~SecureAggregator.collect_masked_vectors_stage` (``train.secagg``): the shares
   routed to the site; the site takes its local work (DP-SGD first), encodes its delta
   (clip, weight, stochastic rounding mod 2^k) and returns it masked.
4. :meth:`~SecureAggregator.consistency_check_stage` (``query.secagg_consistency``): the
   set of sites whose masked inputs the server holds; every contributor signs that exact set
   (Bonawitz et al. 2017, ConsistencyCheck) and no site reveals anything without enough
   signatures over the set it signed.
5. :meth:`~SecureAggregator.charge_stage`: the round's participation and accounting record
   (its site-level DP charge included) is written, atomically, before any share is asked for:
   from here on the aggregate may be unmasked, so it is charged whatever happens next.
6. :meth:`~SecureAggregator.unmask_stage` (``query.secagg_unmask``): the signed set and the
   lists it implies; sites return the shares needed.

Then :meth:`~SecureAggregator.release_stage`: the server only ever holds masked vectors and
their sum; it decodes the sum of the contributors, divides by their total weight (the sum's
last coordinate: each site's weight travels inside its masked input, never in the clear) and
applies it (or, with site-level DP, releases the accounted unweighted mean).

:meth:`~SecureAggregator.evaluate` runs the same stages for a round's federated evaluation
(``kind`` evaluate: the adapter at stage 1, ``evaluate.secagg`` at stage 3, no charge): each
site masks a short stats
vector (:mod:`protocol.secure_stats`) and the coordinator learns the round's total held-out
loss and example and token counts, never a site's. With ``eval-in-train`` a training round
carries that evaluation instead, for the adapter it sends (``round(evaluate=True)``): each
input ends in the site's stats as exact limbs, and the unmasked sum gives their totals.

A malformed reply (a wrong type, a bad metric, a payload nested too deep or too large) drops
that site from the round with a named reason (``server.replies.parse_reply``); never the run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from privacy.ddg import DDGParams, WrapError
from privacy.secagg import SecAggAbort, SecAggConfig, SecAggResult, ServerSession
from protocol.codec import Manifest, decode, decoding_error_bound
from protocol.enrolment import load_enrolment
from protocol.instructions import RoundInstructions, SecAggCodec, SiteLevelDPPlan
from protocol.messages import put_payload, state_to_record
from protocol.secure_stats import (
    EVAL_MODULUS_BITS,
    EVAL_STATS_LEN,
    EvalTotals,
    decode_eval_stats,
    eval_round,
    eval_stats_limbs,
    split_eval_stats,
    split_weight,
    weight_limbs,
)
from protocol.wire import (
    STAGE_MESSAGE_TYPE,
    Field,
    Key,
    MessageType,
    Metric,
    Reason,
    Stage,
    Status,
)
from server.aggregate import apply_delta
from server.secure_round import (
    EVALUATE,
    TRAIN,
    Outcome,
    RoundAborted,
    SecureRound,
    plan_ring,
)
from server.site_level_dp import Admission, PlanRefusal
from server.stage_clock import stage_timer

__all__ = ["SecureAggregator", "load_enrolment"]

logger = logging.getLogger(__name__)

class SecureAggregator:
    """Runs the stages of one round; the driver supplies messaging, names and the record."""

    def __init__(self, driver: Any, *, enrolment: Mapping[str, bytes], clip: float,
                 max_weight: float, site_level_dp: Any = None, bits: int = 0) -> None:
        self.driver = driver
        # a server.site_level_dp.SiteLevelDP when site-level DP is on
        self.site_level_dp = site_level_dp
        self.enrolment = dict(enrolment)
        self.clip = clip
        self.max_weight = max_weight
        #: ``secagg-bits``: the ring of every training round; 0 = what each round needs
        self.bits = bits

    def round(self, round_num: int, state: Mapping[str, np.ndarray], nodes: list[int],
              instructions: RoundInstructions, *, attempt: int = 0,
              evaluate: bool = False) -> tuple[dict[str, np.ndarray] | None, dict[str, Any],
                                               EvalTotals | None]:
        """Run one secure round over ``nodes``.

        Return the new global state (None: unchanged), the round's participation record
        (``part["charged"]``: already written ahead) and, with ``evaluate``, the totals of
        the held-out figures of ``state`` the contributors' inputs end in (None when they
        were not released or did not decode). Not with site-level DP.

        ``attempt`` is 0 for a round's first run; a resumed re-run passes a new one.
        """
        if evaluate and self.site_level_dp is not None:
            raise ValueError("a round with site-level DP cannot carry its evaluation")
        rnd = self._new_round(round_num, state, nodes)
        rnd.attempt = rnd.part["attempt"] = attempt
        rnd.evaluate = evaluate
        new_state, part = self._train(rnd, instructions)
        return new_state, part, rnd.eval_totals

    def _train(self, rnd: SecureRound, instructions: RoundInstructions) -> Outcome:
        """Run the stages of a training round (:meth:`round`); abort with the reason."""
        timed = stage_timer(getattr(self.driver, "clock", None), rnd.num)
        try:
            with timed("secagg: keys"):
                self.setup_stage(rnd, instructions)
            with timed("secagg: shares"):
                self.share_keys_stage(rnd)
            with timed("train (masked)"):
                self.collect_masked_vectors_stage(rnd)
            with timed("secagg: consistency"):
                self.consistency_check_stage(rnd)
            with timed("secagg: charge"):
                self.charge_stage(rnd)
            with timed("secagg: unmask"):
                result = self.unmask_stage(rnd)
        except RoundAborted as exc:
            return self._abort(rnd.part, exc.reason)
        except SecAggAbort as exc:
            self._note_rejections(rnd, rnd.session.rejections)
            return self._abort(rnd.part, str(exc))
        self._note_rejections(rnd, result.rejections)
        with timed("secagg: release"):
            return self.release_stage(rnd, result)

    def evaluate(self, round_num: int, state: Mapping[str, np.ndarray], nodes: list[int],
                 instructions: RoundInstructions) -> tuple[EvalTotals | None, dict[str, Any]]:
        """Evaluate ``state`` over ``nodes`` as a secure sum.

        Return the decoded totals (None: the round aborted) and its record (contributors,
        failures, the decoding bound).
        """
        rnd = self._new_round(round_num, state, nodes)
        rnd.kind = EVALUATE
        timed = stage_timer(getattr(self.driver, "clock", None), rnd.num)
        try:
            with timed("eval: keys"):
                self.setup_stage(rnd, instructions)
            with timed("eval: shares"):
                self.share_keys_stage(rnd)
            with timed("evaluate (masked)"):
                self.collect_masked_vectors_stage(rnd)
            with timed("eval: consistency"):
                self.consistency_check_stage(rnd)
            with timed("eval: unmask"):
                result = self.unmask_stage(rnd)
                totals = decode_eval_stats(result.vector, n_sites=len(result.contributors))
        except RoundAborted as exc:
            return None, self._abort(rnd.part, exc.reason, what="secure evaluation")[1]
        except (SecAggAbort, ValueError) as exc:
            return None, self._abort(rnd.part, str(exc), what="secure evaluation")[1]
        self._note_outcome(rnd, result)
        rnd.part["decoding_error_bound"] = EvalTotals.error_bound(len(result.contributors))
        return totals, rnd.part

    # stages ------------------------------------------------------------------------------
    def setup_stage(self, rnd: SecureRound, instructions: RoundInstructions) -> None:
        """Plan the round (ring, site-level DP), open the server session, collect adverts.

        The advertise-keys request carries the round's work: the adapter and instructions
        (:meth:`_work`).
        """
        if self.site_level_dp is not None and rnd.kind == TRAIN:
            plan = self.site_level_dp.plan(cohort_size=len(rnd.cohort), dim=rnd.manifest.dim)
            if isinstance(plan, PlanRefusal):
                rnd.part["site_level_dp"] = {"mode": self.site_level_dp.mode, "released": False,
                                       "refused": plan.reason,
                                       "budget_exhausted": plan.budget_exhausted}
                raise RoundAborted(plan.reason)
            rnd.plan = plan
        try:
            if rnd.kind == EVALUATE:
                bits, length, secagg_round = EVAL_MODULUS_BITS, EVAL_STATS_LEN, eval_round(
                    rnd.num)
            elif rnd.plan is not None:  # site-level DP: the plan's ring and grid
                bits, length, secagg_round = rnd.plan.modulus_bits, rnd.plan.padded, rnd.num
                rnd.scale = rnd.plan.gamma
            else:  # the delta, then the weight's limbs (protocol.secure_stats.weight_limbs)
                n = max(len(rnd.cohort), 1)
                bits, rnd.scale = plan_ring(n_sites=n, clip=self.clip, max_weight=self.max_weight,
                                            dim=rnd.manifest.dim, bits=self.bits)
                limbs = weight_limbs(modulus_bits=bits, n_sites=n, max_weight=self.max_weight)[1]
                if rnd.evaluate:  # then the held-out stats of the adapter sent
                    limbs += eval_stats_limbs(modulus_bits=bits, n_sites=n)
                length, secagg_round = rnd.manifest.dim + limbs, rnd.num
            config = SecAggConfig.create(
                run_id=int(self.driver.run_id, 16), round=secagg_round, cohort=rnd.cohort,
                modulus_bits=bits, vector_length=length,
                graph_seed=os.urandom(32), attempt=rnd.attempt)
            rnd.server = ServerSession(config=config, registry={
                n: self.enrolment[rnd.names[n]] for n in rnd.cohort})
        except (ValueError, SecAggAbort) as exc:
            raise RoundAborted(f"cannot set up secure aggregation: {exc}") from None
        rnd.part.update(threshold=config.threshold, degree=config.degree, modulus_bits=bits)
        replies = self._send_stage(Stage.ADVERTISE_KEYS, rnd.session.advertise_requests(), rnd,
                                   self._work(rnd, instructions),
                                   names={n: rnd.names[n] for n in rnd.cohort})
        self._accept(replies, rnd.session.receive_advertisement)

    def _work(self, rnd: SecureRound, instructions: RoundInstructions) -> RecordDict:
        """Return the adapter and instructions of the round's local work (codec included)."""
        if rnd.kind == TRAIN:
            codec = SecAggCodec(clip=self.clip, scale=rnd.scale, max_weight=self.max_weight,
                                manifest=rnd.manifest.digest())
            plan = None if rnd.plan is None else SiteLevelDPPlan(self.site_level_dp.mode,
                                                                 rnd.plan.to_config())
            if rnd.evaluate:
                instructions = instructions.evaluating_received()
            instructions = instructions.with_secagg(codec, plan)
        return RecordDict({Key.ARRAYS: state_to_record(rnd.state),
                           Key.CONFIG: instructions.to_record()})

    def share_keys_stage(self, rnd: SecureRound) -> None:
        """Route the signed adverts; collect each site's encrypted Shamir shares."""
        replies = self._send_stage(Stage.SHARE_KEYS, rnd.session.share_keys_requests(), rnd)
        self._accept(replies, rnd.session.receive_shares)

    def collect_masked_vectors_stage(self, rnd: SecureRound) -> None:
        """Route each site its shares; check and keep each masked input and weight.

        With site-level DP the sum of the inputs received is admitted (or the round aborted)
        here, before anything is unmasked.
        """
        replies = self._send_stage(Stage.MASKED_INPUT, rnd.session.masked_input_requests(), rnd)
        for n, r in replies.items():
            self._take_masked_input(rnd, n, r)
        if rnd.plan is not None:  # decide before anything is unmasked
            rnd.admission = self.site_level_dp.admit(rnd.plan, len(rnd.inputs))
            if not rnd.admission.ok:
                rnd.part["site_level_dp"] = {**rnd.admission.record,
                                             "refused": rnd.admission.reason}
                raise RoundAborted(rnd.admission.reason)

    def _take_masked_input(self, rnd: SecureRound, n: int, r: Any) -> None:
        """Record a decline or failure; keep a masked input (its weight is inside it)."""
        if Metric.EPSILON in r.metrics:
            rnd.part["epsilon"][r.site] = float(r.metrics[Metric.EPSILON])
        if r.status == Status.DECLINED:
            rnd.part["declined"][r.site] = r.reason
            if r.reason == Reason.BUDGET_EXHAUSTED:
                self.driver.exhausted.add(n)
            return
        if r.status != Status.OK or r.payload is None:
            rnd.part["failed"][r.site] = r.reason or r.status
            return
        if rnd.session.receive_masked_input(n, r.payload):
            rnd.inputs.add(n)

    def consistency_check_stage(self, rnd: SecureRound) -> None:
        """Announce the contributor set; collect each contributor's signature over it."""
        replies = self._send_stage(Stage.CONSISTENCY_CHECK, rnd.session.consistency_requests(),
                                   rnd)
        self._accept(replies, rnd.session.receive_consistency)

    def charge_stage(self, rnd: SecureRound) -> None:
        """Write the round's record ahead of the unmask: from here it is charged.

        The contributors are the set every signer signed (exactly the inputs any unmask of
        this attempt can hold); with site-level DP the admitted round joins the run's history
        here, so a crash, a wrap or any failure after the unmask never leaves it uncharged.
        """
        part, names = rnd.part, rnd.names
        self._note_rejections(rnd, rnd.session.rejections)
        part["contributed"] = sorted(names[c] for c in rnd.inputs)
        part["dropped"] = sorted(names[c] for c in rnd.cohort if c not in rnd.inputs
                                 and names[c] not in part["declined"])
        if rnd.plan is not None and rnd.admission is not None:
            part["site_level_dp"] = self.site_level_dp.release(rnd.admission)
        part["released"] = True  # may be released from here on; amended if it is not
        part["charged"] = True
        self.driver.write_ahead(part)

    def unmask_stage(self, rnd: SecureRound) -> SecAggResult:
        """Send the signed set and the lists it implies; collect the shares; unmask."""
        replies = self._send_stage(Stage.UNMASK, rnd.session.unmask_requests(), rnd)
        self._accept(replies, rnd.session.receive_unmask)
        return rnd.session.finish()

    def release_stage(self, rnd: SecureRound, result: SecAggResult) -> Outcome:
        """Decode the unmasked sum into the contributors' weighted mean and apply it."""
        if rnd.plan is not None and rnd.admission is not None:
            return self._release_site_level_dp(rnd, result, rnd.plan, rnd.admission)
        part = rnd.part
        bits = part["modulus_bits"]
        vector = result.vector
        if rnd.evaluate:  # the stats come last; their sum decodes whatever the weight says
            n_cohort = max(len(rnd.cohort), 1)
            count = eval_stats_limbs(modulus_bits=bits, n_sites=n_cohort)
            vector, limbs = vector[:-count], vector[-count:]
            try:  # a site may have sent anything there: it spoils the figures, not the round
                _, stats = split_eval_stats(limbs, modulus_bits=bits, n_sites=n_cohort)
                rnd.eval_totals = decode_eval_stats(stats, n_sites=len(result.contributors))
            except ValueError as exc:
                logger.warning("round %d: the evaluation in the training inputs does not "
                               "decode (%s); it is not used", rnd.num, exc)
        vector, total_weight = split_weight(vector, modulus_bits=bits,
                                            max_weight=self.max_weight,
                                            n_sites=len(rnd.cohort))
        n = len(result.contributors)
        if not 0 < total_weight <= n * self.max_weight:  # an out-of-range weight, or a wrap
            return self._abort(part, f"decoded total weight {total_weight} outside (0, "
                                     f"{n} x {self.max_weight:g}]")
        total = float(total_weight)
        part["total_weight"] = total_weight
        summed = decode(vector, rnd.manifest, scale=rnd.scale, modulus_bits=bits)
        mean = {k: (v / total).astype(np.float32) for k, v in summed.items()}
        bound = decoding_error_bound(n_sites=len(result.contributors), clip_norm=self.clip,
                                     max_weight=self.max_weight, scale=rnd.scale,
                                     dim=rnd.manifest.dim)
        self._note_outcome(rnd, result)
        part["decoding_error_bound"] = {"per_coordinate": bound.per_coordinate / total,
                                        "l2": bound.l2 / total}
        logger.info("round %d: secure aggregate of %d sites (t=%d, k=%d bits), %d dropped; "
                    "decoding error <= %.3g per coordinate of the mean", rnd.num,
                    len(result.contributors), part["threshold"], bits, len(part["dropped"]),
                    bound.per_coordinate / total)
        return apply_delta(rnd.state, mean), part

    # helpers -----------------------------------------------------------------------------
    def _new_round(self, round_num: int, state: Mapping[str, np.ndarray],
                   nodes: list[int]) -> SecureRound:
        d = self.driver
        part: dict[str, Any] = {"round": round_num, "sampled": [], "contributed": [],
                                "dropped": [], "declined": {}, "failed": {}, "epsilon": {},
                                "secure_aggregation": True}
        names = {n: d.site_names.get(n, f"node-{n}") for n in nodes}
        part["sampled"] = sorted(names.values())
        cohort = [n for n in nodes if names[n] in self.enrolment]
        for n in nodes:
            if n not in cohort:
                part["failed"][names[n]] = "not enrolled (no identity key in the enrolment list)"
        manifest = Manifest.from_arrays({k: np.zeros(d.shapes[k], np.float32)
                                         for k in d.upload_keys})
        return SecureRound(round_num, state, names, cohort, manifest, part)

    def _send_stage(self, stage: str, requests: Mapping[int, Mapping[str, Any]], rnd: SecureRound,
                    extra: RecordDict | None = None, names: Mapping[int, str] | None = None,
                    ) -> dict[int, Any]:
        """Send each node its stage request (over ``extra``); the replies by node id."""
        contents = {}
        # the same claim for every site: encoded once, not once per site
        claimed = None if names is None else json.dumps({str(n): s for n, s in names.items()})
        for node, payload in requests.items():
            content = RecordDict(dict(extra.items()) if extra is not None else {})
            if claimed is not None:
                content[Key.COHORT_NAMES] = ConfigRecord({Field.NAMES: claimed})
            contents[node] = put_payload(content, payload)
        kind = (MessageType.SECAGG_EVALUATE if rnd.kind == EVALUATE and stage == Stage.MASKED_INPUT
                else STAGE_MESSAGE_TYPE[stage])
        replies = {r.node_id: r for r in self.driver.send_each(contents, kind, rnd.num)}
        for r in replies.values():  # a site that failed here is out of the round, and why
            if r.status not in (Status.OK, Status.DECLINED):
                rnd.part["failed"].setdefault(r.site, f"{stage}: {r.reason or r.status}")
        return replies

    @staticmethod
    def _accept(replies: Mapping[int, Any], receive: Callable[[int, Any], Any]) -> None:
        """Hand each OK reply's payload to the session, which checks the content.

        A reply it rejects, or an OK reply without a payload, leaves the site out of the round.
        """
        for n, r in replies.items():
            if r.status == Status.OK:
                receive(n, r.payload if r.payload is not None else {})

    @staticmethod
    def _note_rejections(rnd: SecureRound, rejections: Any) -> None:
        for node, stage, reason in rejections:
            rnd.part["failed"].setdefault(rnd.names.get(node, str(node)), f"{stage}: {reason}")

    @staticmethod
    def _note_outcome(rnd: SecureRound, result: SecAggResult) -> None:
        part, names = rnd.part, rnd.names
        part["contributed"] = sorted(names[c] for c in result.contributors)
        part["dropped"] = sorted(names[c] for c in result.dropped
                                 if names[c] not in part["declined"])
        part["released"] = True

    def _release_site_level_dp(self, rnd: SecureRound, result: SecAggResult, plan: DDGParams,
                         admission: Admission) -> Outcome:
        """Site-level DP: the unweighted mean of the (noised) sum, accounted."""
        part = rnd.part  # part["site_level_dp"]: charged at the write-ahead, whatever happens here
        n = len(result.contributors)
        if n != admission.record["contributors"]:  # never release a sum other than admitted
            return self._abort(part, f"site-level DP: {n} contributors in the sum, "
                                     f"{admission.record['contributors']} admitted")
        try:
            mean = self.site_level_dp.decode_mean(result.vector, rnd.manifest, plan, n)
        except WrapError as exc:
            return self._abort(part, str(exc))
        self._note_outcome(rnd, result)
        logger.info("round %d: site-level DP aggregate of %d sites, %d dropped; site eps %.4f",
                    part["round"], n, len(part["dropped"]), part["site_level_dp"]["epsilon_after"])
        return apply_delta(rnd.state, mean), part

    def _abort(self, part: dict[str, Any], reason: str,
               what: str = "secure aggregation") -> tuple[None, dict[str, Any]]:
        part["released"] = False
        part["abort_reason"] = reason
        logger.warning("round %d: %s aborted: %s; nothing released", part["round"], what,
                       reason)
        return None, part
