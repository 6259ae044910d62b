"""The site's plain message handlers: ``train``, ``evaluate`` and ``query.hello``.

Each one parses the message, calls the round logic (:mod:`client.local_round`) and builds the
reply; :mod:`client.app` registers them on the ClientApp.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.ahead import MODEL_LOCK
from client.deploy_config import NODE_ENROLMENT
from client.faults import inject_fault
from client.local_round import MODEL_LOAD, load_site_timed, local_update
from client.site import site_spec
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import record_to_state, reply_content, state_to_record
from protocol.site_log import EVALUATE, append_site_row
from protocol.wire import Field, Key, MessageType, Metric, Reason, Status

__all__ = ["carried_metrics", "evaluate", "held_out", "held_out_of", "hello", "received_figures",
           "requires_secure_aggregation", "train"]

logger = logging.getLogger(__name__)


def requires_secure_aggregation(context: Context) -> bool:
    """Whether this site answers only masked requests: it holds its own enrolment list.

    A deployed site configured for secure aggregation (``enrolment`` in its ``site.toml``,
    node config ``secagg-enrolment``) never sends an update or per-site figures in the
    clear, whatever the coordinator's run config says; the coordinator cannot turn that off.
    """
    return bool(context.node_config.get(NODE_ENROLMENT))


def _decline_plain(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    name = site_spec(context.node_config, cfg).name
    logger.warning("site %s declines a plain %s request: it answers only under secure "
                   "aggregation", name, msg.metadata.message_type)
    return Message(reply_content(site=name, status=Status.DECLINED,
                                 reason=Reason.SECAGG_REQUIRED), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Plain (unmasked) round: return the adapter delta of the trained tensors."""
    if requires_secure_aggregation(context):
        return _decline_plain(msg, context)
    instr = RoundInstructions.from_record(msg.content[Key.CONFIG])
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    inject_fault(cfg, site_spec(context.node_config, cfg).name, MessageType.TRAIN,
                 instr.round_num)
    figures = (received_figures(instr, msg.content[Key.ARRAYS], context)
               if instr.evaluate_received else None)
    upd = local_update(instr, msg.content[Key.ARRAYS], context)
    arrays = state_to_record(upd.delta) if upd.delta is not None else None
    metrics = dict(upd.metrics)
    if figures is not None and upd.status == Status.OK:
        metrics.update({**carried_metrics(figures), Metric.TIME_EVAL: figures[Metric.TIME_EVAL]})
    return Message(reply_content(site=upd.site, status=upd.status, reason=upd.reason,
                                 metrics=metrics, arrays=arrays,
                                 ledger_summary=upd.ledger_summary), reply_to=msg)


def received_figures(instr: RoundInstructions, arrays: Any,
                     context: Context) -> dict[str, Any]:
    """Return the held-out figures of the adapter a round carries (``evaluate-received``).

    That adapter is the one after the previous round, so the site's log files them under
    ``round - 1``, where the coordinator's metrics row puts them. They are computed before
    the site trains, on the adapter as received.
    """
    return held_out_of(instr, arrays, context, round_num=instr.round_num - 1)[1]


def carried_metrics(figures: dict[str, Any]) -> dict[str, Any]:
    """Return held-out figures under the names a train reply carries them (``eval-*``)."""
    return {Metric.EVAL_LOSS: figures[Metric.EVAL_LOSS],
            Metric.EVAL_NUM_EXAMPLES: figures[Metric.NUM_EXAMPLES],
            Metric.EVAL_NUM_TOKENS: figures[Metric.NUM_TOKENS]}


def held_out(msg: Message, context: Context, *,
             round_num: int | None = None) -> tuple[str, dict[str, Any]]:
    """Return the site's name and the held-out figures of the message's adapter."""
    return held_out_of(RoundInstructions.from_record(msg.content[Key.CONFIG]),
                       msg.content.array_records[Key.ARRAYS], context, round_num=round_num)


def held_out_of(instr: RoundInstructions, arrays: Any, context: Context, *,
                round_num: int | None = None) -> tuple[str, dict[str, Any]]:
    """Return the site's name and the held-out figures of the adapter ``arrays``.

    The figures are also appended to the site's own log (:mod:`protocol.site_log`), under
    ``round_num`` (default: the instructions' round). Holds :data:`client.ahead.MODEL_LOCK`.
    """
    from client.model import set_adapter_state
    from client.train import evaluate as held_out_loss

    with MODEL_LOCK:
        t0 = time.perf_counter()
        cfg, sm, data, t_model_load = load_site_timed(context)
        set_adapter_state(sm, record_to_state(arrays), aggregation=instr.aggregation)
        res = held_out_loss(sm.model, data.held_out, batch_size=max(cfg.batch_size, 16),
                            pad_id=int(sm.tokenizer.pad_token_id), device=sm.device)
        metrics: dict[str, Any] = {
            Metric.NUM_EXAMPLES: res.num_examples,
            Metric.NUM_TOKENS: res.num_tokens,
            Metric.EVAL_LOSS: res.loss,
            Metric.TIME_EVAL: time.perf_counter() - t0,
        }
    if data.spec.state_dir is not None:
        append_site_row(data.spec.state_dir, kind=EVALUATE, run_id=instr.run_id,
                        round_num=instr.round_num if round_num is None else round_num,
                        figures={**metrics, MODEL_LOAD: t_model_load})
    return data.spec.name, metrics


def evaluate(msg: Message, context: Context) -> Message:
    """Reply with the global adapter's loss on this site's held-out split.

    Plain path: the coordinator sees each site's figures, as it sees each site's update; a
    site enrolled for secure aggregation declines it.
    """
    if requires_secure_aggregation(context):
        return _decline_plain(msg, context)
    name, metrics = held_out(msg, context)
    status = ConfigRecord({Field.STATUS: Status.OK, Field.SITE: name})
    return Message(RecordDict({Key.METRICS: MetricRecord(metrics), Key.CONFIG: status}),
                   reply_to=msg)


def hello(msg: Message, context: Context) -> Message:
    """Tell the coordinator this node's site name (no model or data is loaded)."""
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    spec = site_spec(context.node_config, cfg)
    return Message(reply_content(site=spec.name, status=Status.OK), reply_to=msg)
