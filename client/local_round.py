"""The site's local round: plan (or decline) under its policy, train, record, return a delta.

Called by the plain ``train`` handler and by the secure-aggregation ``train.secagg`` handler;
it knows nothing about messages. torch, transformers and peft (``client.model``,
``client.train``) are imported inside the functions only: in deployment every message runs
in a fresh process, and the query stages need none of them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context

from client.ahead import MODEL_LOCK
from client.privacy_agent import SitePrivacy, policy_from_config
from client.site import SiteData, load_site_data, site_spec
from privacy.budget import Decline, RoundPlan
from privacy.noise_source import CSPRNG, SEEDED, round_seed, site_secret_seed
from privacy.policy import PolicyError
from protocol.adapter import trainable_keys
from protocol.config import RunConfig
from protocol.instructions import RoundInstructions
from protocol.messages import record_to_state
from protocol.model_ref import resolve_model
from protocol.site_log import TRAIN, append_site_row
from protocol.wire import Metric, Reason, Status

if TYPE_CHECKING:
    from client.model import SiteModel

__all__ = ["LocalUpdate", "MODEL_LOAD", "clear_metrics", "load_site", "load_site_timed",
           "local_update", "releases_metrics"]

#: the site log's figure of a train message: seconds spent loading the base model (0: cached)
MODEL_LOAD = "time-model-load"

logger = logging.getLogger(__name__)


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
    #: signs the site's ledgers again as they stand (after a later charge, e.g. site-level DP)
    _resign: Callable[[], tuple[str, str] | None] | None = field(default=None, repr=False)

    def refresh_summary(self) -> None:
        """Sign again, so the summary covers charges made after the local round (site-level)."""
        if self._resign is not None:
            self.ledger_summary = self._resign()


def load_site(context: Context) -> tuple[RunConfig, SiteModel, SiteData]:
    """Load the run config, the (cached) base model with its LoRA adapter, and the site's data."""
    from client.compute import site_compute
    from client.model import load_site_model

    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    spec = site_spec(context.node_config, cfg)
    compute = site_compute(cfg, context.node_config)  # device, precision: the site's own
    # deployment: a site may hold the base model at its own path (node config `model`)
    model_ref = str(context.node_config.get("model") or cfg.model)
    site_model = load_site_model(
        resolve_model(model_ref), compute=compute, r=cfg.lora_r, alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
    )
    data = load_site_data(spec, cfg, site_model.tokenizer)
    return cfg, site_model, data


def load_site_timed(context: Context) -> tuple[RunConfig, SiteModel, SiteData, float]:
    """:func:`load_site`, and the seconds it spent loading the base model (0: cached).

    The site's own log records that time per message (:data:`MODEL_LOAD`): a resident
    worker loads the model once per run, so it is 0 after its first message.
    """
    from client.model import _load_cached

    t0 = time.perf_counter()
    loads = _load_cached.cache_info().misses
    cfg, sm, data = load_site(context)
    loaded = _load_cached.cache_info().misses > loads
    return cfg, sm, data, time.perf_counter() - t0 if loaded else 0.0


def _round_seed(cfg_seed: int, round_num: int, site: str) -> int:
    """Batch order of *non-private* training only (public values; no DP noise uses it)."""
    digest = hashlib.sha256(f"{cfg_seed}|{round_num}|{site}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _noise_seed(context: Context, privacy: SitePrivacy, data: SiteData, *, run_id: str,
                round_num: int) -> tuple[str, int | None]:
    """Choose the round's DP noise source and seed: ``("csprng", None)`` or ``("seeded", seed)``.

    CSPRNG unless the site's policy turns secure mode off. At a deployed site (``data-path``
    in the node config) only the node config itself can: a policy that came from the run
    config (the coordinator) never weakens the noise. A seeded round's seed is keyed by the
    site's secret seed in its state directory; nothing the coordinator knows enters it.
    """
    deployed = "data-path" in context.node_config
    site_off = context.node_config.get("dp-secure-mode") is False
    if privacy.policy.secure_mode or (deployed and not site_off):
        return CSPRNG, None
    assert data.spec.state_dir is not None  # _site_privacy refuses a policy without one
    (logger.warning if deployed else logger.debug)(
        "site %s round %d: DP noise from a generator seeded by the site's secret seed, not "
        "the OS CSPRNG (the site's policy turned secure mode off)", data.spec.name, round_num)
    secret = site_secret_seed(data.spec.state_dir)
    return SEEDED, round_seed(secret, run_id=run_id, round_num=round_num)


def releases_metrics(context: Context, cfg: RunConfig) -> bool:
    """Whether this site's own policy lets it release its per-site figures in the clear.

    Off by default. At a deployed site (``data-path`` in the node config) only the node
    config can turn it on (``dp-release-metrics = true``); a policy that came from the run
    config (the coordinator) never does. In simulation the simulated policy's
    ``release-metrics`` counts.
    """
    if "data-path" in context.node_config:
        return context.node_config.get("dp-release-metrics") is True
    policy = policy_from_config(context.node_config, cfg.dp_policy)
    return policy is not None and policy.release_metrics


def clear_metrics(metrics: dict[str, Any], *, release: bool) -> dict[str, Any]:
    """Select what of ``metrics`` a secure-aggregation reply carries in the clear.

    By default only the privacy parameters its signed ledger summary reveals anyway
    (:data:`Metric.LEDGER`).
    """
    if release:
        return dict(metrics)
    return {k: v for k, v in metrics.items() if k in Metric.LEDGER}


def _site_privacy(context: Context, cfg: RunConfig, data: SiteData) -> SitePrivacy | None:
    policy = policy_from_config(context.node_config, cfg.dp_policy)
    if policy is None:
        return None
    if data.spec.state_dir is None:
        raise PolicyError(f"site {data.spec.name} has a privacy policy but no state directory "
                          "for its ledger (`state-dir`)")
    return SitePrivacy.open(policy, data.spec.state_dir, site=data.spec.name,
                            num_examples=len(data.train))


def _summary(privacy: SitePrivacy | None, data: SiteData, run_id: str,
             round_num: int) -> tuple[str, str] | None:
    if privacy is None or data.spec.state_dir is None:
        return None
    return privacy.signed_summary(data.spec.state_dir, run_id=run_id, round_num=round_num)


def local_update(instr: RoundInstructions, arrays: Any, context: Context) -> LocalUpdate:
    """Plan (or decline) under the site's policy, train, write the ledger, return the delta.

    With a site privacy policy the ledger entry is written before this returns, i.e. before
    anything derived from the round's training can leave the site. Holds
    :data:`client.ahead.MODEL_LOCK` throughout.
    """
    with MODEL_LOCK:
        return _local_update(instr, arrays, context)


def _local_update(instr: RoundInstructions, arrays: Any, context: Context) -> LocalUpdate:
    from client.model import get_adapter_state, set_adapter_state
    from client.train import dp_train, train_steps

    t0 = time.perf_counter()
    cfg, sm, data, t_model_load = load_site_timed(context)
    round_num, run_id, steps = instr.round_num, instr.run_id, instr.local_steps
    site = data.spec.name

    privacy = _site_privacy(context, cfg, data)
    plan: RoundPlan | None = None
    if privacy is not None:
        decision = privacy.plan(
            run_id=run_id, batch_size=instr.batch_size, local_steps=steps,
            planned_rounds=instr.planned_rounds, dp_enabled=instr.dp_enabled,
            requested_noise_multiplier=instr.requested_noise_multiplier)
        if isinstance(decision, Decline):
            privacy.record_decline(decision, run_id=run_id, round_num=round_num)
            logger.warning("site %s declines round %d: %s (%s)", site, round_num,
                           decision.reason, decision.detail)
            return LocalUpdate(site, Status.DECLINED, decision.reason,
                               {Metric.EPSILON: decision.epsilon_spent,
                                Metric.DELTA: decision.delta},
                               ledger_summary=_summary(privacy, data, run_id, round_num))
        plan = decision
        logger.info("site %s round %d: DP plan %s", site, round_num, plan.summary())
    elif instr.dp_enabled:
        return LocalUpdate(site, Status.DECLINED, Reason.NO_PRIVACY_POLICY)

    global_state = record_to_state(arrays)
    set_adapter_state(sm, global_state, aggregation=instr.aggregation)
    t_setup = time.perf_counter() - t0
    seed = _round_seed(cfg.seed, round_num, site)
    lr = instr.learning_rate
    pad_id = int(sm.tokenizer.pad_token_id)
    if plan is not None and privacy is not None:
        source, noise_seed = _noise_seed(context, privacy, data, run_id=run_id,
                                         round_num=round_num)
        mean_loss = dp_train(sm, data, plan=plan, policy=privacy.policy, learning_rate=lr,
                             pad_id=pad_id, seed=noise_seed)
        privacy.record(plan, run_id=run_id, round_num=round_num,  # before anything leaves
                       noise_source=source)
    else:
        mean_loss = train_steps(sm.model, data.train, steps=steps, batch_size=instr.batch_size,
                                learning_rate=lr, pad_id=pad_id, device=sm.device,
                                seed=seed).mean_loss
    t_train = time.perf_counter() - t0 - t_setup
    local = get_adapter_state(sm)
    delta = {k: local[k] - global_state[k]
             for k in trainable_keys(list(local), instr.aggregation)}
    metrics: dict[str, Any] = {
        Metric.NUM_EXAMPLES: len(data.train), Metric.TRAIN_LOSS: mean_loss,
        Metric.STEPS: steps, Metric.TIME_SETUP: t_setup, Metric.TIME_TRAIN: t_train,
    }
    if plan is not None:
        metrics.update({Metric.EPSILON: plan.epsilon_after, Metric.DELTA: plan.delta,
                        Metric.NOISE_MULTIPLIER: plan.noise_multiplier,
                        Metric.SAMPLE_RATE: plan.sample_rate,
                        Metric.MAX_GRAD_NORM: plan.max_grad_norm})
    logger.info("site %s round %d: %d steps, train loss %.4f", site, round_num, steps, mean_loss)
    if data.spec.state_dir is not None:  # the site's own record; nothing here is sent
        append_site_row(data.spec.state_dir, kind=TRAIN, run_id=run_id, round_num=round_num,
                        figures={**metrics, MODEL_LOAD: t_model_load})
    return LocalUpdate(site, Status.OK, metrics=metrics, delta=delta,
                       ledger_summary=_summary(privacy, data, run_id, round_num),
                       _resign=lambda: _summary(privacy, data, run_id, round_num))
