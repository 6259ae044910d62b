"""``confide simulate --canaries M``: plant M audit canaries at one site of a real run, score them.

The one-run audit of Steinke, Nasr & Jagielski (NeurIPS 2023) on the *federated* pipeline:
the site ``--canary-site`` (default: the first virtual site) adds the canaries whose recorded
coin came up to its training split (:mod:`client.canaries`) and the run goes on as usual —
the site's DP-SGD, secure aggregation, every other site. After the run each canary is scored
by its loss drop from the starting adapter (``RUN_DIR/rounds/0/adapter``) to the released one
(``RUN_DIR/adapter``); the top-k are guessed IN, the bottom-k OUT, and the count of correct
guesses gives an ε lower bound at 95% confidence, written to ``RUN_DIR/canary-audit.json``
beside the site's formal ε (its ledger), which ``confide audit`` shows. A lower bound above
the formal ε is a red flag: the implementation or the accounting is broken.

The bound has power only when the released adapter can memorise canaries: a few DP-off
rounds of a small LoRA on the attention projections barely do (a bound near 0 then says
little). ``python -m simulations.audit_canaries`` is the power check (DP off, enough epochs
and an adapter on every projection and ``lm_head``: bound >= 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["add_canary_args", "canary_overrides", "score_planted"]


def add_canary_args(p: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` flags of the planted canary audit to ``p``."""
    from simulations.flags import int_at_least

    g = p.add_argument_group("empirical privacy audit (canaries planted at one site)")
    g.add_argument("--canaries", type=int_at_least("--canaries", 0), default=0, metavar="M",
                   help="plant M random canary sequences (each kept by a recorded fair coin) "
                        "in one site's training data and audit the released adapter (default 0)")
    g.add_argument("--canary-site", default=None,
                   help="the site that plants them (default: the first virtual site)")
    g.add_argument("--canary-length", type=int_at_least("--canary-length", 0), default=None,
                   help="tokens per canary (default 16)")
    g.add_argument("--canary-seed", type=int, default=None, help="seed of canaries and coins")


def canary_overrides(args: argparse.Namespace, first_site: str,
                     site_names: list[str]) -> dict[str, Any]:
    """Run-config keys for the flags (empty without ``--canaries``)."""
    if not args.canaries:
        return {}
    site = args.canary_site or first_site
    if site not in site_names:
        raise ValueError(f"--canary-site {site!r} is not one of the run's sites "
                         f"({', '.join(site_names)})")
    out: dict[str, Any] = {"canaries": args.canaries, "canary-site": site}
    if args.canary_length is not None:
        out["canary-length"] = args.canary_length
    if args.canary_seed is not None:
        out["canary-seed"] = args.canary_seed
    return out


def score_planted(run_dir: Path, cfg: Any) -> dict[str, Any]:
    """Score the planted canaries on the released adapter; the result mapping (see module)."""
    import json

    import torch

    from client.canaries import canary_plan
    from client.data import TokenizedExample
    from client.model import load_site_model, set_adapter_state
    from privacy.audit.canary import audit_scores, membership_scores
    from privacy.audit.sites import POLICY_FILENAME
    from privacy.ledger import PrivacyLedger
    from protocol.adapter import load_adapter_dir, resolve_target_modules
    from protocol.run_folder import RunFolder
    from simulations.audit_canaries import _losses

    t0 = time.perf_counter()
    device = torch.device("cpu")
    sm = load_site_model(cfg.model, device=device, r=cfg.lora_r, alpha=cfg.lora_alpha,
                         dropout=cfg.lora_dropout, target_modules=cfg.target_modules)
    plan = canary_plan(cfg, sm.tokenizer)
    canaries = [TokenizedExample(s, s) for s in plan.sequences]
    pad_id = int(sm.tokenizer.pad_token_id)
    losses = []
    folder = RunFolder(run_dir)
    for path in (folder.round_adapter(0), folder.final_adapter):
        state, _ = load_adapter_dir(path)
        set_adapter_state(sm, state, aggregation="fedavg")  # every tensor, A and B
        losses.append(_losses(sm.model, canaries, pad_id, device))
    scores = membership_scores(*losses)

    site_dir = folder.site_dir(cfg.canary_site)
    formal = accountant = None
    delta = 1e-5
    policy_path = site_dir / POLICY_FILENAME
    if policy_path.is_file():
        delta = float(json.loads(policy_path.read_text())["delta"])
    trained = [e for e in PrivacyLedger(site_dir).entries if e.status == "trained"] \
        if cfg.dp else []
    if trained:
        formal, accountant, delta = trained[-1].epsilon_after, trained[-1].accountant, \
            trained[-1].delta
    result = audit_scores(scores, plan.included, delta=delta, formal_epsilon=formal,
                          site_id=cfg.canary_site, accountant=accountant)
    inc = [s for s, c in zip(scores, plan.included, strict=True) if c]
    out = [s for s, c in zip(scores, plan.included, strict=True) if not c]
    return {
        **result.to_mapping(),
        "training": {"planted_in": "federated run", "rounds": cfg.num_server_rounds,
                     "local_steps": cfg.local_steps, "batch_size": cfg.batch_size,
                     "learning_rate": cfg.learning_rate, "lora_r": cfg.lora_r,
                     "target_modules": resolve_target_modules(cfg.target_modules, cfg.model),
                     "canary_length": cfg.canary_length,
                     "seed": cfg.canary_seed, "dp": cfg.dp, "secagg": cfg.secagg,
                     "model": cfg.model},
        "mean_score_in": sum(inc) / max(1, len(inc)),
        "mean_score_out": sum(out) / max(1, len(out)),
        "seconds": time.perf_counter() - t0,
    }
