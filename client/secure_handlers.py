"""The site's secure-aggregation message handlers, one per stage.

Each handler restores the site's session (:mod:`client.secure`), runs its stage and replies.
A request the site will not serve (bad signature, lists, parameters, a stage out of order) is
answered with a refusal and the session wiped; a failed local round (data, policy, model) is
answered as a training failure — never as a refusal, and never with the error's text, which
may quote the site's records. A reply sent after the site trained and wrote its ledger, a
refusal included, carries the site's signed ledger summary, so the audit never shows less than
the site spent.

Nothing per-site travels in the clear: the weight is a coordinate of the masked input, the
evaluation is a secure sum of its own (:func:`masked_evaluate`, :mod:`protocol.secure_stats`),
and a reply's metrics hold only the privacy parameters its signed ledger summary reveals
anyway, unless the site's own policy sets ``release-metrics``. The figures themselves stay in
the site's own log (:mod:`protocol.site_log`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client import ahead
from client.faults import inject_fault
from client.local_round import LocalUpdate, clear_metrics, local_update, releases_metrics
from client.secure import SecureSite
from client.site_level_dp import check_unmask
from privacy.secagg import SecAggError, SiteSession, check_transition
from privacy.secagg import Stage as SessionStage
from protocol.instructions import RoundInstructions
from protocol.messages import get_payload, reply_content
from protocol.secure_stats import encode_eval_stats, eval_round, is_eval_round
from protocol.wire import Key, Metric, Reason, Stage, Status

__all__ = ["advertise", "consistency", "masked_evaluate", "masked_train", "share", "unmask"]

logger = logging.getLogger(__name__)

#: what a site refuses a request for (the request is malformed or would be unsafe to serve)
_REFUSALS = (SecAggError, ValueError, KeyError)


def _round_of(msg: Message) -> int | None:
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        return None


def _answer(msg: Message, me: str, payload: dict[str, Any] | None, *, status: str = Status.OK,
            reason: str = "", metrics: dict[str, Any] | None = None,
            ledger_summary: tuple[str, str] | None = None) -> Message:
    return Message(reply_content(site=me, status=status, reason=reason, metrics=metrics,
                                 payload=payload, ledger_summary=ledger_summary), reply_to=msg)


def _refuse(msg: Message, context: Context, me: str, exc: Exception,
            session: SiteSession | None = None,
            ledger_summary: tuple[str, str] | None = None) -> Message:
    SecureSite.wipe(context, session)
    logger.warning("site %s refuses the secure-aggregation request: %s", me, exc)
    return _answer(msg, me, None, status=Status.FAILED, reason=Reason.SECAGG_REFUSED,
                   ledger_summary=ledger_summary)


def _training_failed(msg: Message, context: Context, me: str, exc: Exception,
                     session: SiteSession) -> Message:
    SecureSite.wipe(context, session)
    logger.error("site %s: local round failed: %s", me, exc, exc_info=exc)
    return _answer(msg, me, None, status=Status.FAILED,
                   reason=f"{Reason.TRAINING_FAILED} ({type(exc).__name__})")


def advertise(msg: Message, context: Context) -> Message:
    """Stage 1: fresh round keys, signed with the site's identity key; the local work begins.

    The request carries the round's adapter and instructions (:mod:`client.ahead`). They are
    checked against the session here, before any work: instructions for another round than
    the session's, an evaluation outside its own session, or a round whose evaluation this
    site already sent are refused. A round this site already sent a masked input for starts
    no work (the masked-input stage declines it).
    """
    site = SecureSite.of(context)
    site.wipe(context)
    inject_fault(site.cfg, site.name, Stage.ADVERTISE_KEYS, _round_of(msg))
    session = None
    try:
        session, reply = site.start(context, msg.content)
        work = _local_work(site, session, msg.content)
    except _REFUSALS as exc:
        return _refuse(msg, context, site.name, exc, session)
    site.save(context, session)
    ahead.start(context, session.config.binding.encode(), *work)
    return _answer(msg, site.name, reply)


def _local_work(site: SecureSite, session: SiteSession, content: RecordDict,
                ) -> tuple[ConfigRecord, ArrayRecord, ahead.Work | None]:
    """Check the round's adapter and instructions against the session; the work they ask for.

    No work (None) when this site already sent a masked input in this (run, round): the
    masked-input stage declines it.
    """
    if Key.CONFIG not in content.config_records or Key.ARRAYS not in content.array_records:
        raise SecAggError("the round's adapter and instructions must come with advertise-keys")
    record, arrays = content.config_records[Key.CONFIG], content.array_records[Key.ARRAYS]
    instr = RoundInstructions.from_record(record)
    cfg = session.config
    if is_eval_round(cfg.round):
        if cfg.round != eval_round(instr.round_num):
            raise SecAggError("an evaluation asked for outside its round's evaluation session")
        if Stage.MASKED_INPUT in site.guard.record(cfg.run_id, cfg.round):
            return record, arrays, None
        return record, arrays, _evaluate_work
    if cfg.round != instr.round_num:
        raise SecAggError(f"instructions for round {instr.round_num} in the session of "
                          f"round {cfg.round}")
    if Stage.MASKED_INPUT in site.guard.record(cfg.run_id, cfg.round):
        return record, arrays, None
    if instr.evaluate_received and Stage.MASKED_INPUT in site.guard.record(
            cfg.run_id, eval_round(cfg.round - 1)):
        raise SecAggError(f"this site already sent its evaluation of round {cfg.round - 1}; "
                          f"it never sends two")
    return record, arrays, _train_work


def _train_work(instr: RoundInstructions, arrays: ArrayRecord, context: Context,
                ) -> tuple[dict[str, Any] | None, LocalUpdate]:
    """Evaluate the received adapter (``evaluate-received``), then train: a round's work."""
    from client.handlers import received_figures

    figures = received_figures(instr, arrays, context) if instr.evaluate_received else None
    return figures, local_update(instr, arrays, context)


def _evaluate_work(instr: RoundInstructions, arrays: ArrayRecord,
                   context: Context) -> dict[str, Any]:
    """Return the held-out figures of the adapter: a secure evaluation's work."""
    from client.handlers import held_out_of

    return held_out_of(instr, arrays, context)[1]


def _session_stage(msg: Message, context: Context, stage: str,
                   step: Callable[[SiteSession, dict[str, Any]], dict[str, Any]]) -> Message:
    """Run one stage of the restored session on the request; refuse on any failure."""
    site = SecureSite.of(context)
    inject_fault(site.cfg, site.name, stage, _round_of(msg))
    session = None
    try:
        session = site.restore(context)
        reply = step(session, get_payload(msg.content))
    except _REFUSALS as exc:
        return _refuse(msg, context, site.name, exc, session)
    site.save(context, session)
    return _answer(msg, site.name, reply)


def share(msg: Message, context: Context) -> Message:
    """Stage 2: check neighbours' signatures, send them encrypted Shamir shares."""
    return _session_stage(msg, context, Stage.SHARE_KEYS,
                          lambda session, request: session.share_keys(request))


def masked_train(msg: Message, context: Context) -> Message:
    """Stage 3: take the round's local work (DP first), encode the delta, mask it, send it.

    The work began at advertise-keys (:func:`advertise`, :mod:`client.ahead`), on the adapter
    and instructions that came with it; this request carries only the shares routed here.

    A request out of order (before share-keys) is refused before any work is run here. A
    site that already sent a masked input for this (run, round), in any attempt, declines:
    it never trains a round twice nor sends two inputs to sums that could differ in it (the
    coordinator's re-run of an interrupted round goes on without it).

    With ``evaluate-received`` the work first evaluated the adapter received (the one after
    round r - 1); the figures are appended to the input (:func:`~protocol.secure_stats.
    append_eval_stats`), so they reach the coordinator only inside the round's sum. That uses
    up the site's evaluation of round r - 1: it refuses such a round when it already sent an
    evaluation for round r - 1 (at advertise-keys, and again here), and a later evaluation of
    round r - 1.
    """
    from client.handlers import carried_metrics

    site = SecureSite.of(context)
    inject_fault(site.cfg, site.name, Stage.MASKED_INPUT, _round_of(msg))
    session = None
    try:
        session = site.restore(context)
        check_transition(session.stage, SessionStage.MASKED_INPUT)  # before any work
        cfg = session.config
        if is_eval_round(cfg.round):
            raise SecAggError("a training input asked for in an evaluation's session")
        instr = ahead.instructions(context, cfg.binding.encode())
        done = Stage.MASKED_INPUT in site.guard.record(cfg.run_id, cfg.round)
        evaluated = None
        if instr.evaluate_received and not done:
            evaluated = eval_round(cfg.round - 1)
            if Stage.MASKED_INPUT in site.guard.record(cfg.run_id, evaluated):
                raise SecAggError(f"this site already sent its evaluation of round "
                                  f"{cfg.round - 1}; it never sends two")
    except _REFUSALS as exc:
        return _refuse(msg, context, site.name, exc, session)
    if done:
        site.wipe(context, session)
        logger.warning("site %s declines round %d: it already sent a masked input for it",
                       site.name, cfg.round)
        return _answer(msg, site.name, None, status=Status.DECLINED,
                       reason=Reason.ROUND_ALREADY_CONTRIBUTED)
    try:
        figures, upd = ahead.result(context, cfg.binding.encode(), instr, _train_work)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the local round failed
        return _training_failed(msg, context, site.name, exc, session)
    release = releases_metrics(context, site.cfg)
    if upd.status != Status.OK or upd.delta is None:
        site.wipe(context, session)
        return _answer(msg, site.name, None, status=upd.status, reason=upd.reason,
                       metrics=clear_metrics(upd.metrics, release=release),
                       ledger_summary=upd.ledger_summary)
    try:
        stats = None if figures is None else _eval_stats(figures)
        vector = site.encode(upd, instr, session, context, eval_stats=stats)
        if evaluated is not None:  # before anything is sent: a second evaluation is refused
            site.guard.claim_masked_input(cfg.run_id, evaluated, cfg.attempt)
        reply = session.masked_input(get_payload(msg.content), vector=vector)
        del vector, stats  # only the masked vector leaves
    except _REFUSALS as exc:  # trained and charged: the refusal carries the ledger summary
        upd.refresh_summary()
        return _refuse(msg, context, site.name, exc, session, upd.ledger_summary)
    upd.refresh_summary()  # now covering this round's site-level charge (made by encode)
    ahead.discard(context)
    site.save(context, session)
    metrics = clear_metrics(upd.metrics, release=release)
    if release and figures is not None:
        metrics.update(carried_metrics(figures))
    return _answer(msg, site.name, reply, metrics=metrics, ledger_summary=upd.ledger_summary)


def _eval_stats(figures: dict[str, Any]) -> Any:
    """Encode a site's held-out figures as the stats vector of a secure sum."""
    return encode_eval_stats(loss=float(figures[Metric.EVAL_LOSS]),
                             num_examples=int(figures[Metric.NUM_EXAMPLES]),
                             num_tokens=int(figures[Metric.NUM_TOKENS]))


def masked_evaluate(msg: Message, context: Context) -> Message:
    """Stage 3 of a secure evaluation: the held-out figures of the global adapter, masked.

    The session must be this round's evaluation (its secure-aggregation round carries
    :data:`~protocol.secure_stats.EVAL_ROUND_BIT`), and the site sends one evaluation per
    (run, round): a re-run could otherwise difference this site's figures out of two sums.
    The evaluation began at advertise-keys, on the adapter that came with it.
    """
    site = SecureSite.of(context)
    session = None
    try:
        session = site.restore(context)
        check_transition(session.stage, SessionStage.MASKED_INPUT)  # before any work
        cfg = session.config
        instr = ahead.instructions(context, cfg.binding.encode())
        if cfg.round != eval_round(instr.round_num):
            raise SecAggError("an evaluation asked for outside its round's evaluation session")
        done = Stage.MASKED_INPUT in site.guard.record(cfg.run_id, cfg.round)
    except _REFUSALS as exc:
        return _refuse(msg, context, site.name, exc, session)
    if done:
        site.wipe(context, session)
        return _answer(msg, site.name, None, status=Status.DECLINED,
                       reason=Reason.ROUND_ALREADY_CONTRIBUTED)
    try:
        figures = ahead.result(context, cfg.binding.encode(), instr, _evaluate_work)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the evaluation failed
        return _training_failed(msg, context, site.name, exc, session)
    try:
        vector = _eval_stats(figures)
        reply = session.masked_input(get_payload(msg.content), vector=vector)
        del vector
    except _REFUSALS as exc:
        return _refuse(msg, context, site.name, exc, session)
    ahead.discard(context)
    site.save(context, session)
    release = releases_metrics(context, site.cfg)
    return _answer(msg, site.name, reply, metrics=figures if release else None)


def consistency(msg: Message, context: Context) -> Message:
    """Stage 4: sign the announced contributor set, if it agrees with what this site saw."""
    return _session_stage(msg, context, Stage.CONSISTENCY_CHECK,
                          lambda session, request: session.consistency_check(request))


def unmask(msg: Message, context: Context) -> Message:
    """Stage 5: reveal, per neighbour, the self-mask share (alive) or key share (dropped).

    With site-level DP the signed contributor set must hold the calibration cohort.
    """
    site = SecureSite.of(context)
    inject_fault(site.cfg, site.name, Stage.UNMASK, _round_of(msg))
    session = None
    try:
        session = site.restore(context)
        request = get_payload(msg.content)
        cohort = check_unmask(context, request, session.config, session.node_id,
                              signed_contributors=session.signed_contributors)
        reply = session.unmask(request, min_contributors=cohort)
    except _REFUSALS as exc:
        return _refuse(msg, context, site.name, exc, session)
    site.wipe(context, session)
    return _answer(msg, site.name, reply)
