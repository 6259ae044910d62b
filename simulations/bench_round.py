"""Where the time of one round goes, on the embedded default (or ``--model``).

Runs the phases of one round with the product's own code, in one process, for ``--sites``
sites: model load (base + LoRA injection, cold), local training (``local-steps`` steps per
site), serialisation (adapter -> Flower ArrayRecord -> bytes -> back, both directions),
aggregation (check + weighted mean + apply), evaluation (held-out loss at every site).
Prints seconds and the share of the round; ``--json PATH`` writes ``{"phase": seconds}``.

    python -m simulations.bench_round [--sites 3] [--local-steps 10] [--json PATH]
    python -m simulations.bench_round --deployment [--model M] [--loops off,worker,on]
        [--repeats 3] [--local-steps 2] [--batch-size 16] [--max-seq-len 64]
        [--max-eval-examples 32] [--no-dp] [--poll-interval S] [--secure-rounds N]
        [--keep DIR] [--json PATH]

``--deployment`` measures each message's fixed overhead in a real deployment, for each site
loop (``simulations.bench_deploy.SITE_LOOPS``): ``off``, Flower's own (a fresh process
loads torch and the model per message, 3 s polling); ``worker``, the resident worker
alone; ``on``, the default of ``confide client`` (worker, the site's executor, its
``poll-interval``); and the model-load time of each train message. Its defaults are the
README's real-model settings (``make demo-real``), and it prints the fixed overhead of one
secure round with secure evaluation as a share of that round, priced from those figures and
measured in ``--secure-rounds`` real rounds of three sites (``work-ahead`` on and off).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from client.model import (
    _load_cached,
    get_adapter_state,
    load_site_model,
    resolve_device,
    set_adapter_state,
)
from client.site import load_site_data, site_spec
from client.train import evaluate, train_steps
from protocol.adapter import check_state, initial_adapter_state, trainable_keys
from protocol.config import RunConfig
from protocol.messages import record_to_state, state_to_record
from protocol.model_ref import resolve_data_dir, resolve_model
from server.aggregate import apply_delta, weighted_mean

__all__ = ["main"]


def _roundtrip(state: dict) -> tuple[dict, int]:  # type: ignore[type-arg]
    from flwr.app import ArrayRecord

    rec = state_to_record(state)
    blob = rec.deflate()
    children = {k: v for k, v in rec.children.items()}
    back = ArrayRecord.inflate(blob, children=children)
    nbytes = sum(int(a.nbytes) for a in state.values())  # tensor payload, both directions
    return record_to_state(back), nbytes


def main(argv: list[str] | None = None) -> int:
    """Time the phases of one round and print each one's seconds and share; exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=None,
                    help=f"default {RunConfig().local_steps} (--deployment: 2)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--deployment", action="store_true",
                    help="measure the per-message cost of a real deployment instead "
                         "(SuperLink + one site on 127.0.0.1; see simulations/bench_deploy.py)")
    ap.add_argument("--repeats", type=int, default=3, help="--deployment: messages per kind")
    ap.add_argument("--loops", default="off,on",
                    help="--deployment: site loops to compare, comma-separated, of "
                         "off, worker, on (default: off,on)")
    ap.add_argument("--batch-size", type=int, default=None, help="--deployment (default 16)")
    ap.add_argument("--max-seq-len", type=int, default=None, help="--deployment (default 64)")
    ap.add_argument("--max-eval-examples", type=int, default=None,
                    help="--deployment (default 32)")
    ap.add_argument("--no-dp", action="store_true", help="--deployment: train without DP")
    ap.add_argument("--poll-interval", type=float, default=None, metavar="S",
                    help="--deployment: poll-interval of the coordinator and of the `on` site "
                         "(default: theirs, 0.1)")
    ap.add_argument("--secure-rounds", type=int, default=4, metavar="N",
                    help="--deployment: then run N real secure rounds with 3 sites, their "
                         "work-ahead on and off (default 4; 0: skip)")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="--deployment: copy each run's folder (logs, site state) to DIR/LOOP")
    args = ap.parse_args(argv)
    if args.deployment:
        from simulations.bench_deploy import REAL_SETTINGS, SITE_LOOPS, run_worker_bench

        loops = tuple(x.strip() for x in args.loops.split(",") if x.strip())
        bad = [x for x in loops if x not in SITE_LOOPS]
        if bad or not loops:
            ap.error(f"--loops must name some of {', '.join(SITE_LOOPS)}, got {args.loops!r}")
        given = {"local-steps": args.local_steps, "batch-size": args.batch_size,
                 "max-seq-len": args.max_seq_len, "max-eval-examples": args.max_eval_examples}
        settings = {**REAL_SETTINGS, **{k: v for k, v in given.items() if v is not None}}
        if args.no_dp:
            settings["dp"] = False
        run_worker_bench(repeats=args.repeats, settings=settings, model=args.model,
                         json_path=args.json_path, loops=loops, keep=args.keep,
                         poll=args.poll_interval, secure_round_count=args.secure_rounds)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    steps = RunConfig().local_steps if args.local_steps is None else args.local_steps
    cfg = RunConfig.from_mapping({"local-steps": steps,
                                  "model": resolve_model(args.model),
                                  "data-dir": resolve_data_dir(args.data)})
    phases: dict[str, float] = {}

    t = time.perf_counter()
    _load_cached.cache_clear()
    sm = load_site_model(cfg.model, device=resolve_device(cfg.device), r=cfg.lora_r,
                         alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         target_modules=cfg.target_modules)
    phases["model_load"] = time.perf_counter() - t

    t = time.perf_counter()
    sites = [load_site_data(site_spec({"partition-id": i, "num-partitions": args.sites}, cfg), cfg,
                            sm.tokenizer) for i in range(args.sites)]
    phases["data_load"] = time.perf_counter() - t

    state = initial_adapter_state(sm.shapes, seed=cfg.lora_seed)
    keys = trainable_keys(list(state), cfg.aggregation)
    deltas, weights = [], []
    phases["local_training"] = phases["serialisation"] = 0.0
    nbytes = 0
    for data in sites:
        t = time.perf_counter()
        received, n_down = _roundtrip(state)
        phases["serialisation"] += time.perf_counter() - t
        set_adapter_state(sm, received, aggregation=cfg.aggregation)
        t = time.perf_counter()
        train_steps(sm.model, data.train, steps=cfg.local_steps, batch_size=cfg.batch_size,
                    learning_rate=cfg.learning_rate, pad_id=int(sm.tokenizer.pad_token_id),
                    device=sm.device, seed=cfg.seed)
        phases["local_training"] += time.perf_counter() - t
        t = time.perf_counter()
        local = get_adapter_state(sm)
        delta, n_up = _roundtrip({k: local[k] - state[k] for k in keys})
        phases["serialisation"] += time.perf_counter() - t
        nbytes += n_down + n_up
        deltas.append(delta)
        weights.append(float(len(data.train)))

    t = time.perf_counter()
    for d in deltas:
        check_state(d, {k: sm.shapes[k] for k in keys})
    state = apply_delta(state, weighted_mean(deltas, weights))
    phases["aggregation"] = time.perf_counter() - t

    t = time.perf_counter()
    set_adapter_state(sm, state, aggregation=cfg.aggregation)
    for data in sites:
        evaluate(sm.model, data.held_out, batch_size=max(cfg.batch_size, 16),
                 pad_id=int(sm.tokenizer.pad_token_id), device=sm.device)
    phases["evaluation"] = time.perf_counter() - t

    total = sum(phases.values())
    print(f"one round: {args.sites} sites x {cfg.local_steps} steps, model {cfg.model}, "
          f"device {sm.device}, torch threads {torch.get_num_threads()}, "
          f"{nbytes / 1e6:.2f} MB of adapter tensors sent and received")
    print(f"{'phase':<16}{'seconds':>10}{'share':>8}")
    for name, sec in phases.items():
        print(f"{name:<16}{sec:>10.3f}{sec / total:>8.1%}")
    print(f"{'total':<16}{total:>10.3f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(phases, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
