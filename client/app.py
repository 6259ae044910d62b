"""Flower ClientApp: the site agent's train and evaluate handlers (Message API)."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.model import SiteModel, get_adapter_state, load_site_model, resolve_device, set_adapter_state
from client.site import SiteData, load_site_data, site_spec
from client.train import evaluate, train_steps
from protocol.adapter import trainable_keys
from protocol.config import RunConfig
from protocol.messages import (
    ARRAYS,
    CONFIG,
    METRICS,
    STATUS_OK,
    record_to_state,
    state_to_record,
)
from protocol.model_ref import resolve_model

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = ClientApp()


def _setup(context: Context) -> tuple[RunConfig, SiteModel, SiteData]:
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    spec = site_spec(context.node_config, cfg)
    device = resolve_device(spec.device)
    site_model = load_site_model(
        resolve_model(cfg.model), device=device, r=cfg.lora_r, alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
    )
    data = load_site_data(spec, cfg, site_model.tokenizer)
    return cfg, site_model, data


def _round_seed(cfg_seed: int, round_num: int, site: str) -> int:
    digest = hashlib.sha256(f"{cfg_seed}|{round_num}|{site}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the LoRA parameters locally and return the adapter delta (trained tensors only)."""
    t0 = time.perf_counter()
    cfg, sm, data = _setup(context)
    instr: Any = msg.content[CONFIG]
    round_num = int(instr["round"])
    aggregation = str(instr.get("aggregation", cfg.aggregation))
    steps = int(instr.get("local-steps", cfg.local_steps))
    global_state = record_to_state(msg.content[ARRAYS])
    set_adapter_state(sm, global_state, aggregation=aggregation)
    t_setup = time.perf_counter() - t0
    result = train_steps(
        sm.model, data.train, steps=steps,
        batch_size=int(instr.get("batch-size", cfg.batch_size)),
        learning_rate=float(instr.get("learning-rate", cfg.learning_rate)),
        pad_id=int(sm.tokenizer.pad_token_id), device=sm.device,
        seed=_round_seed(cfg.seed, round_num, data.spec.name),
    )
    t_train = time.perf_counter() - t0 - t_setup
    local = get_adapter_state(sm)
    delta = {k: local[k] - global_state[k] for k in trainable_keys(list(local), aggregation)}
    metrics = MetricRecord({
        "num-examples": len(data.train),
        "train-loss": result.mean_loss,
        "steps": result.steps,
        "time-setup": t_setup,
        "time-train": t_train,
    })
    status = ConfigRecord({"status": STATUS_OK, "site": data.spec.name})
    logger.info("site %s round %d: %d steps, train loss %.4f", data.spec.name, round_num,
                result.steps, result.mean_loss)
    content = RecordDict({ARRAYS: state_to_record(delta), METRICS: metrics, CONFIG: status})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Held-out loss of the global adapter on this site's held-out split."""
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
