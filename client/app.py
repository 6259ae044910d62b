"""Flower ClientApp: the site agent's train and evaluate handlers (Message API)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import SiteData, load_site_data, site_spec
from client.privacy_agent import SitePrivacy, policy_from_config
from privacy.budget import Decline, RoundPlan
from privacy.policy import PolicyError
from protocol.adapter import trainable_keys
from protocol.config import RunConfig
from protocol.messages import (
    ARRAYS,
    CONFIG,
    LEDGER_SIGNATURE,
    LEDGER_SUMMARY,
    METRICS,
    STATUS_DECLINED,
    STATUS_OK,
    record_to_state,
    state_to_record,
)
from protocol.model_ref import resolve_model

if TYPE_CHECKING:
    from client.model import SiteModel

# torch, transformers and peft (client.model, client.train) are imported inside the train and
# evaluate handlers only: in deployment every message runs in a fresh process, and the
# query stages (hello, secure-aggregation advertise / share / unmask) need none of them.

__all__ = ["app"]

logger = logging.getLogger(__name__)

#: Set by ``confide client`` for its SuperNode: the site's own events (DP plan, decline,
#: training) then reach the site operator's log, one line each with the round number.
SITE_LOG_ENV = "CONFIDE_SITE_LOG"
if os.environ.get(SITE_LOG_ENV) == "1":
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    for _name in ("client", "privacy"):
        _lg = logging.getLogger(_name)
        if not _lg.handlers:
            _lg.addHandler(_handler)
            _lg.setLevel(logging.INFO)
            _lg.propagate = False

app = ClientApp()


def _setup(context: Context) -> tuple[RunConfig, SiteModel, SiteData]:
    from client.model import load_site_model, resolve_device

    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    spec = site_spec(context.node_config, cfg)
    device = resolve_device(spec.device)
    # deployment: a site may hold the base model at its own path (node config `model`)
    model_ref = str(context.node_config.get("model") or cfg.model)
    site_model = load_site_model(
        resolve_model(model_ref), device=device, r=cfg.lora_r, alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
    )
    data = load_site_data(spec, cfg, site_model.tokenizer)
    return cfg, site_model, data


def _round_seed(cfg_seed: int, round_num: int, site: str) -> int:
    digest = hashlib.sha256(f"{cfg_seed}|{round_num}|{site}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _site_privacy(context: Context, cfg: RunConfig, data: SiteData) -> SitePrivacy | None:
    policy = policy_from_config(context.node_config, cfg.site_dp_policy)
    if policy is None:
        return None
    if data.spec.state_dir is None:
        raise PolicyError(f"site {data.spec.name} has a privacy policy but no state directory "
                          "for its ledger (`state-dir`)")
    return SitePrivacy.open(policy, data.spec.state_dir, site=data.spec.name,
                            num_examples=len(data.train))


def _reply(msg: Message, *, site: str, status: str, reason: str = "",
           metrics: dict[str, Any] | None = None, arrays: Any = None,
           ledger_summary: tuple[str, str] | None = None) -> Message:
    content = RecordDict({CONFIG: status_record(site, status, reason, ledger_summary)})
    if metrics:
        content[METRICS] = MetricRecord(metrics)
    if arrays is not None:
        content[ARRAYS] = arrays
    return Message(content, reply_to=msg)


@dataclass
class LocalUpdate:
    """The outcome of a site's local round: a delta, or a decline with its reason."""

    site: str
    status: str
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    delta: dict[str, np.ndarray] | None = None
    #: ``(summary JSON, hex signature)`` of the site's ledger after this round, if signed
    ledger_summary: tuple[str, str] | None = None


def status_record(site: str, status: str, reason: str = "",
                  ledger_summary: tuple[str, str] | None = None) -> ConfigRecord:
    """The reply's status record, with the signed ledger summary when there is one."""
    rec: dict[str, Any] = {"status": status, "site": site, "reason": reason}
    if ledger_summary is not None:
        rec[LEDGER_SUMMARY], rec[LEDGER_SIGNATURE] = ledger_summary
    return ConfigRecord(rec)


def local_update(instr: Any, arrays: Any, context: Context) -> LocalUpdate:
    """Plan (or decline) under the site's policy, train, write the ledger, return the delta.

    With a site privacy policy the ledger entry is written before this returns, i.e. before
    anything derived from the round's training can leave the site.
    """
    from client.model import get_adapter_state, set_adapter_state
    from client.train import dp_train, train_steps

    t0 = time.perf_counter()
    cfg, sm, data = _setup(context)
    round_num = int(instr["round"])
    run_id = str(instr.get("run-id", context.run_id))
    aggregation = str(instr.get("aggregation", cfg.aggregation))
    steps = int(instr.get("local-steps", cfg.local_steps))
    batch_size = int(instr.get("batch-size", cfg.batch_size))
    dp_enabled = bool(instr.get("dp-enabled", False))
    requested = float(instr.get("noise-multiplier", -1.0))
    site = data.spec.name

    privacy = _site_privacy(context, cfg, data)
    plan: RoundPlan | None = None
    if privacy is not None:
        decision = privacy.plan(
            run_id=run_id, batch_size=batch_size, local_steps=steps,
            planned_rounds=int(instr.get("planned-rounds", cfg.num_server_rounds)),
            dp_enabled=dp_enabled, requested_noise_multiplier=requested if requested >= 0 else None)
        if isinstance(decision, Decline):
            privacy.record_decline(decision, run_id=run_id, round_num=round_num)
            logger.warning("site %s declines round %d: %s (%s)", site, round_num,
                           decision.reason, decision.detail)
            return LocalUpdate(site, STATUS_DECLINED, decision.reason,
                               {"epsilon": decision.epsilon_spent, "delta": decision.delta},
                               ledger_summary=_summary(privacy, data, run_id, round_num))
        plan = decision
        logger.info("site %s round %d: DP plan %s", site, round_num, plan.summary())
    elif dp_enabled:
        return LocalUpdate(site, STATUS_DECLINED, "no-privacy-policy")

    global_state = record_to_state(arrays)
    set_adapter_state(sm, global_state, aggregation=aggregation)
    t_setup = time.perf_counter() - t0
    seed = _round_seed(cfg.seed, round_num, site)
    lr = float(instr.get("learning-rate", cfg.learning_rate))
    pad_id = int(sm.tokenizer.pad_token_id)
    if plan is not None and privacy is not None:
        mean_loss = dp_train(sm, data, plan=plan, policy=privacy.policy, learning_rate=lr,
                             pad_id=pad_id, seed=seed)
        privacy.record(plan, run_id=run_id, round_num=round_num)  # before anything leaves
    else:
        mean_loss = train_steps(sm.model, data.train, steps=steps, batch_size=batch_size,
                                learning_rate=lr, pad_id=pad_id, device=sm.device,
                                seed=seed).mean_loss
    t_train = time.perf_counter() - t0 - t_setup
    local = get_adapter_state(sm)
    delta = {k: local[k] - global_state[k] for k in trainable_keys(list(local), aggregation)}
    metrics: dict[str, Any] = {
        "num-examples": len(data.train), "train-loss": mean_loss, "steps": steps,
        "time-setup": t_setup, "time-train": t_train,
    }
    if plan is not None:
        metrics.update({"epsilon": plan.epsilon_after, "delta": plan.delta,
                        "noise-multiplier": plan.noise_multiplier,
                        "sample-rate": plan.sample_rate, "max-grad-norm": plan.max_grad_norm})
    logger.info("site %s round %d: %d steps, train loss %.4f", site, round_num, steps, mean_loss)
    return LocalUpdate(site, STATUS_OK, metrics=metrics, delta=delta,
                       ledger_summary=_summary(privacy, data, run_id, round_num))


def _summary(privacy: SitePrivacy | None, data: SiteData, run_id: str,
             round_num: int) -> tuple[str, str] | None:
    if privacy is None or data.spec.state_dir is None:
        return None
    return privacy.signed_summary(data.spec.state_dir, run_id=run_id, round_num=round_num)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Plain (unmasked) round: return the adapter delta of the trained tensors."""
    from client.secure import inject_fault

    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    inject_fault(cfg, site_spec(context.node_config, cfg).name, "train",
                 int(msg.content[CONFIG]["round"]))
    upd = local_update(msg.content[CONFIG], msg.content[ARRAYS], context)
    arrays = state_to_record(upd.delta) if upd.delta is not None else None
    return _reply(msg, site=upd.site, status=upd.status, reason=upd.reason,
                  metrics=upd.metrics, arrays=arrays, ledger_summary=upd.ledger_summary)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Held-out loss of the global adapter on this site's held-out split."""
    from client.model import set_adapter_state
    from client.train import evaluate

    t0 = time.perf_counter()
    cfg, sm, data = _setup(context)
    instr: Any = msg.content[CONFIG]
    aggregation = str(instr.get("aggregation", cfg.aggregation))
    set_adapter_state(sm, record_to_state(msg.content[ARRAYS]), aggregation=aggregation)
    res = evaluate(sm.model, data.held_out, batch_size=max(cfg.batch_size, 16),
                   pad_id=int(sm.tokenizer.pad_token_id), device=sm.device)
    metrics = MetricRecord({
        "num-examples": res.num_examples,
        "num-tokens": res.num_tokens,
        "eval-loss": res.loss,
        "time-eval": time.perf_counter() - t0,
    })
    status = ConfigRecord({"status": STATUS_OK, "site": data.spec.name})
    return Message(RecordDict({METRICS: metrics, CONFIG: status}), reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Tell the coordinator this node's site name (no model or data is loaded)."""
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    spec = site_spec(context.node_config, cfg)
    return _reply(msg, site=spec.name, status=STATUS_OK)


# secure-aggregation stages register themselves on `app`
from client import secure as _secure  # noqa: E402,F401
