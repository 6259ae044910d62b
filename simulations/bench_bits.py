"""Held-out loss and upload bytes per ring size: lean secure aggregation against fp32.

Runs ``--rounds`` rounds of federated LoRA over ``--sites`` sites of the embedded default
(or ``--model``), in one process, with the product's own training and codec, once per
setting: plaintext fp32 FedAvg, then secure aggregation at 12/16/20/24/32 ring bits
(``server.secure_round.plan_ring``: clip, weight, stochastic rounding to the finest grid the
ring holds for the cohort, the weight in exact limbs, the sum mod 2^k, decode). Masking is
not run: pairwise and self masks cancel exactly in Z/2^k, so the unmasked sum is the sum of
the encoded inputs and the loss is the same as with masks; the bytes are those of the masked
vector. Every setting uses the same seeds, so the runs differ by quantisation alone.

Bytes per site per round are the upload's tensor payload: fp32 (4 bytes per parameter),
Confide's ring vector as stored on the wire today (``uint32`` for k <= 32, plus the weight's
limbs), the same vector if it were bit-packed at k bits per value (``packed``: not done by
the wire today, stated for comparison) and Flower's SecAgg+ encoding (masked values travel
as int64: 8 bytes per parameter; computed, not run).

    python -m simulations.bench_bits [--sites 3] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from client.model import get_adapter_state, load_site_model, resolve_device, set_adapter_state
from client.site import load_site_data, site_spec
from client.train import evaluate, train_steps
from protocol.adapter import initial_adapter_state, trainable_keys
from protocol.codec import Manifest, decode, encode, ring_dtype
from protocol.config import RunConfig
from protocol.model_ref import resolve_data_dir, resolve_model
from protocol.secure_stats import append_weight, split_weight, weight_limbs
from server.aggregate import apply_delta, weighted_mean
from server.secure_round import plan_ring

__all__ = ["main"]

BITS = (12, 16, 20, 24, 32)
FLOWER_BYTES_PER_VALUE = 8  # SecAgg+ masked values are int64


def _secure_mean(deltas: list[dict[str, np.ndarray]], weights: list[int], *, bits: int,
                 clip: float, max_weight: float, seed: int) -> dict[str, np.ndarray]:
    """Return the secure path's weighted mean: encode, sum mod 2^k, decode, divide."""
    manifest = Manifest.from_arrays(deltas[0])
    n = len(deltas)
    k, scale = plan_ring(n_sites=n, clip=clip, max_weight=max_weight, dim=manifest.dim,
                         bits=bits)
    rng = np.random.default_rng(seed)
    acc: np.ndarray | None = None
    for delta, w in zip(deltas, weights, strict=True):
        vec = encode(delta, manifest, clip_norm=clip, weight=float(w), scale=scale,
                     modulus_bits=k, rng=rng, max_weight=max_weight)
        vec = append_weight(vec, w, modulus_bits=k, max_weight=max_weight, n_sites=n)
        wide = vec.astype(np.uint64)
        acc = wide if acc is None else acc + wide
    assert acc is not None
    acc &= np.uint64((1 << k) - 1) if k < 64 else np.uint64(2**64 - 1)
    vector, total = split_weight(acc.astype(ring_dtype(k)), modulus_bits=k,
                                 max_weight=max_weight, n_sites=n)
    summed = decode(vector, manifest, scale=scale, modulus_bits=k)
    return {name: (v / float(total)).astype(np.float32) for name, v in summed.items()}


def _run(setting: str, bits: int, *, sm: Any, sites: list[Any], cfg: RunConfig, rounds: int,
         clip: float, max_weight: float) -> float:
    state = initial_adapter_state(sm.shapes, seed=cfg.lora_seed)
    keys = trainable_keys(list(state), cfg.aggregation)
    pad_id = int(sm.tokenizer.pad_token_id)
    for rnd in range(rounds):
        deltas, weights = [], []
        for i, data in enumerate(sites):
            set_adapter_state(sm, state, aggregation=cfg.aggregation)
            train_steps(sm.model, data.train, steps=cfg.local_steps, batch_size=cfg.batch_size,
                        learning_rate=cfg.learning_rate, pad_id=pad_id, device=sm.device,
                        seed=cfg.seed + 1000 * rnd + i)
            local = get_adapter_state(sm)
            deltas.append({k: local[k] - state[k] for k in sorted(keys)})
            weights.append(len(data.train))
        if setting == "fp32":
            mean = weighted_mean(deltas, [float(w) for w in weights])
        else:
            mean = _secure_mean(deltas, weights, bits=bits, clip=clip, max_weight=max_weight,
                                seed=cfg.seed + rnd)
        state = apply_delta(state, mean)
    set_adapter_state(sm, state, aggregation=cfg.aggregation)
    losses = [evaluate(sm.model, d.held_out, batch_size=max(cfg.batch_size, 16), pad_id=pad_id,
                       device=sm.device) for d in sites]
    tokens = sum(r.num_tokens for r in losses)
    return sum(r.loss * r.num_tokens for r in losses) / tokens


def main(argv: list[str] | None = None) -> int:
    """Print the table of held-out loss and bytes per setting; exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-eval-examples", type=int, default=16)
    ap.add_argument("--clip", type=float, default=RunConfig().secagg_clip)
    ap.add_argument("--max-weight", type=float, default=0.0,
                    help="secagg-max-weight (0: the largest site's training-set size)")
    ap.add_argument("--bits", default=",".join(map(str, BITS)))
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    cfg = RunConfig.from_mapping({
        "local-steps": args.local_steps, "batch-size": args.batch_size,
        "max-eval-examples": args.max_eval_examples, "model": resolve_model(args.model),
        "data-dir": resolve_data_dir(args.data)})
    sm = load_site_model(cfg.model, device=resolve_device(cfg.device), r=cfg.lora_r,
                         alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         target_modules=cfg.target_modules)
    sites = [load_site_data(site_spec({"partition-id": i, "num-partitions": args.sites}, cfg),
                            cfg, sm.tokenizer) for i in range(args.sites)]
    max_weight = args.max_weight or float(max(len(d.train) for d in sites))
    dim = sum(int(np.prod(sm.shapes[k])) for k in trainable_keys(list(sm.shapes),
                                                                 cfg.aggregation))
    common = {"sm": sm, "sites": sites, "cfg": cfg, "rounds": args.rounds, "clip": args.clip,
              "max_weight": max_weight}
    rows: list[dict[str, Any]] = [{"setting": "plaintext fp32", "bits": 32,
                                   "loss": _run("fp32", 0, **common), "bytes": 4 * dim,
                                   "packed_bytes": 4 * dim}]
    for bits in (int(b) for b in args.bits.split(",")):
        limbs = weight_limbs(modulus_bits=bits, n_sites=args.sites, max_weight=max_weight)[1]
        rows.append({"setting": f"confide secagg {bits} bits", "bits": bits,
                     "loss": _run("secagg", bits, **common),
                     "bytes": (dim + limbs) * ring_dtype(bits).itemsize,
                     "packed_bytes": -(-(dim + limbs) * bits // 8)})
    rows.append({"setting": "flower secagg+ (int64)", "bits": 64, "loss": None,
                 "bytes": FLOWER_BYTES_PER_VALUE * dim,
                 "packed_bytes": FLOWER_BYTES_PER_VALUE * dim})
    ref = next((r["loss"] for r in rows if r["bits"] == 32 and "confide" in r["setting"]), None)
    print(f"{args.sites} sites x {args.rounds} rounds x {cfg.local_steps} steps of batch "
          f"{cfg.batch_size}, {dim} LoRA parameters, clip {args.clip:g}, max weight "
          f"{max_weight:g}, no DP")
    print(f"{'setting':<26}{'held-out loss':>14}{'vs 32 bits':>11}{'bytes/site/round':>18}"
          f"{'packed':>10}")
    for r in rows:
        loss = "n/a (not run)" if r["loss"] is None else f"{r['loss']:.4f}"
        rel = ("" if r["loss"] is None or ref is None else f"{(r['loss'] - ref) / ref:+.2%}")
        print(f"{r['setting']:<26}{loss:>14}{rel:>11}{r['bytes']:>18,}{r['packed_bytes']:>10,}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"sites": args.sites, "rounds": args.rounds, "local_steps": cfg.local_steps,
             "batch_size": cfg.batch_size, "dim": dim, "clip": args.clip,
             "max_weight": max_weight, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
