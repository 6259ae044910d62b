"""Federated vs centralised fine-tuning of the same adapter, side by side.

Runs the demo federation (``confide simulate`` machinery: Flower simulation engine, the real
ServerApp / ClientApp), then trains the same adapter (same LoRA config, same shared-seed
initialisation and trainable tensors, same optimiser, batch size and learning rate) on the
pooled training data of all sites with the same total number of optimiser steps
(sites x rounds x local steps), and evaluates both — and the untouched base model — on
every site's own held-out split. The reported loss is the example-weighted mean over sites
of the held-out loss in nats per token, as in ``metrics.jsonl``.

    python -m simulations.compare_central [--rounds 3] [--local-steps 10] [--json PATH]
        [--model smollm2-135m] [--batch-size B] [--max-seq-len L] [--learning-rate LR]
        [--max-eval-examples N]

``--model`` takes what ``confide simulate --model`` takes (``embedded``, a named model such
as ``smollm2-135m``, a checkpoint directory); the other flags default to the run config's.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from client.model import load_site_model, resolve_device, set_adapter_state
from client.site import load_site_data, site_spec
from client.train import evaluate, train_steps
from protocol.adapter import initial_adapter_state
from protocol.config import RunConfig
from protocol.model_ref import resolve_data_dir, resolve_model
from protocol.run_folder import RunFolder
from simulations.runner import report_unreleased, run_simulation

__all__ = ["main"]


def _site_weighted(sm: Any, sites: list[Any], cfg: RunConfig) -> tuple[float, dict[str, float]]:
    per: dict[str, float] = {}
    total, weight = 0.0, 0
    for data in sites:
        res = evaluate(sm.model, data.held_out, batch_size=max(cfg.batch_size, 16),
                       pad_id=int(sm.tokenizer.pad_token_id), device=sm.device)
        per[data.spec.name] = res.loss
        total += res.loss * res.num_examples
        weight += res.num_examples
    return total / weight, per


def main(argv: list[str] | None = None) -> int:
    """Run the federation and the centralised baseline, print the held-out losses; exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=RunConfig().local_steps)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--aggregation", default="frozen-a", choices=("frozen-a", "fedavg"))
    defaults = RunConfig()
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    ap.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    ap.add_argument("--max-eval-examples", type=int, default=defaults.max_eval_examples,
                    help="held-out examples per site (0: all)")
    ap.add_argument("--json", dest="json_path", default=None, help="write figures as JSON")
    ap.add_argument("--out", default=None, help="keep the federated RUN_DIR here")
    args = ap.parse_args(argv)

    base_cfg = RunConfig.from_mapping({
        "num-server-rounds": args.rounds, "local-steps": args.local_steps,
        "model": resolve_model(args.model), "data-dir": resolve_data_dir(args.data),
        "aggregation": args.aggregation, "min-sites": args.sites,
        "batch-size": args.batch_size, "max-seq-len": args.max_seq_len,
        "learning-rate": args.learning_rate, "max-eval-examples": args.max_eval_examples,
        "allow-no-privacy": True,  # a utility comparison without DP or masking, on purpose
    })
    tmp = tempfile.TemporaryDirectory(prefix="confide-compare-")
    out = Path(args.out) if args.out else Path(tmp.name) / "run"
    cfg = base_cfg.replace(out_dir=str(out.resolve()))

    # 1. federated, through Flower
    t0 = time.perf_counter()
    code = run_simulation(cfg, num_sites=args.sites, quiet=True)
    report_unreleased(out, label="federated run: ")
    rows = RunFolder(out).read_metrics()
    if code != 0 or not rows or rows[-1].round != args.rounds:
        print(f"federated run failed (exit {code}); see {out}", file=sys.stderr)
        return 1
    t_fed = time.perf_counter() - t0
    fed_loss = rows[-1].held_out()[0]  # or RowError: why not
    fed_sites = {k: v.eval_loss for k, v in rows[-1].sites.items()}

    # 2. base and centralised, in-process with the same client code
    torch.manual_seed(cfg.seed)
    sm = load_site_model(cfg.model, device=resolve_device(cfg.device), r=cfg.lora_r,
                         alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         target_modules=cfg.target_modules)
    sites = [load_site_data(site_spec({"partition-id": i, "num-partitions": args.sites}, cfg), cfg,
                            sm.tokenizer) for i in range(args.sites)]
    init = initial_adapter_state(sm.shapes, seed=cfg.lora_seed)
    set_adapter_state(sm, init, aggregation=cfg.aggregation)
    base_loss, base_sites = _site_weighted(sm, sites, cfg)

    pooled = [ex for s in sites for ex in s.train]
    random.Random(cfg.seed).shuffle(pooled)
    total_steps = args.sites * args.rounds * args.local_steps
    t1 = time.perf_counter()
    train_steps(sm.model, pooled, steps=total_steps, batch_size=cfg.batch_size,
                learning_rate=cfg.learning_rate, pad_id=int(sm.tokenizer.pad_token_id),
                device=sm.device, seed=cfg.seed)
    t_central = time.perf_counter() - t1
    central_loss, central_sites = _site_weighted(sm, sites, cfg)

    vocab = int(sm.model.get_base_model().config.vocab_size)
    ratio = fed_loss / central_loss
    print(f"model {cfg.model} (vocab {vocab}), {args.sites} sites, {args.rounds} rounds x "
          f"{args.local_steps} local steps; central: {total_steps} steps on pooled data")
    print(f"{'':<12}{'loss (nats)':>12}{'perplexity':>12}")
    for name, loss in (("base", base_loss), ("federated", fed_loss), ("central", central_loss)):
        print(f"{name:<12}{loss:>12.4f}{math.exp(loss):>12.2f}")
    print(f"federated / central loss: {ratio:.3f}  (federated {t_fed:.0f} s incl. Flower start-up,"
          f" central {t_central:.0f} s)")
    print(f"{'site':<12}{'base':>10}{'federated':>11}{'central':>10}")
    for name in sorted(base_sites):
        print(f"{name:<12}{base_sites[name]:>10.4f}{fed_sites.get(name, float('nan')):>11.4f}"
              f"{central_sites[name]:>10.4f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "vocab_size": vocab, "base_loss": base_loss, "federated_loss": fed_loss,
            "central_loss": central_loss, "federated_over_central": ratio,
            "sites": {n: {"base": base_sites[n], "federated": fed_sites.get(n),
                          "central": central_sites[n]} for n in base_sites},
            "rounds": args.rounds, "local_steps": args.local_steps, "central_steps": total_steps,
        }, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
