"""What DP costs in utility: the same federated run with and without example-level DP-SGD.

Runs the demo federation twice through Flower (the real ServerApp / ClientApp; same sites,
rounds, local steps, batch size, learning rate, optimiser, LoRA adapter and seeds; secure
aggregation on in both): once with every site at budget ε (default 8, δ below 1/n, σ
calibrated to the plan, clipping bound C as ``confide simulate``) and once without DP. Only
DP on/off differs. It prints the held-out loss drop (nats per token, example-weighted over
sites, from the same starting adapter) each run achieves, their ratio, and each site's DP
parameters as its privacy ledger recorded them (q, σ, C, steps, δ, ε spent).

    python -m simulations.dp_utility [--epsilon 8] [--rounds 3] [--local-steps N]
        [--batch-size B] [--learning-rate LR] [--max-grad-norm C] [--json PATH]
        [--model smollm2-135m] [--max-seq-len L] [--max-eval-examples N]

Measured with the defaults (3 sites x 3 rounds x 2 local steps, expected batch 256, AdamW
lr 0.03, C 0.01, LoRA r 8 on q_proj,v_proj, ε 8, δ 1e-5; σ 0.614, q 0.095, 6 steps per
site): held-out loss 5.4350 -> 5.1876 without DP (drop 0.2474), -> 5.2288 with DP (drop
0.2062); DP keeps 83.3% of the non-private reduction. Re-measured with the per-site secret
seed and the aggregated metrics: 5.2297 with DP (83.0%; one run released only 2 of its 3 DP
rounds, 66.7%: README, "What DP costs", also for other settings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from protocol.config import RunConfig
from protocol.model_ref import resolve_data_dir, resolve_model
from protocol.run_folder import RunFolder
from protocol.run_rows import MetricsRow
from simulations.runner import report_unreleased, run_simulation

__all__ = ["main"]

#: ``confide simulate``'s default per-sequence clipping bound.
DEFAULT_MAX_GRAD_NORM = 0.01
#: The issue's criterion: DP keeps at least this share of the non-private loss reduction.
TARGET_RATIO = 0.7


def _run(cfg: RunConfig, sites: int) -> list[MetricsRow]:
    from simulations.simulate import enrol_sites

    enrol_sites(cfg, sites)
    code = run_simulation(cfg, num_sites=sites, quiet=True)
    report_unreleased(cfg.out_dir, label=f"{'DP' if cfg.dp else 'no-DP'} run: ")
    rows = RunFolder(cfg.out_dir).read_metrics()
    if code != 0 or not rows or rows[-1].round != cfg.num_server_rounds:
        raise SystemExit(f"run in {cfg.out_dir} failed (exit {code})")
    for r in rows:  # the curves need every round's evaluation
        r.held_out()
    return rows


def _ledgers(state_root: Path) -> dict[str, dict[str, Any]]:
    """Per site: the DP parameters its ledger recorded (q, σ, C, δ, steps, final ε)."""
    from privacy.ledger import PrivacyLedger

    out: dict[str, dict[str, Any]] = {}
    for site_dir in sorted(p for p in state_root.iterdir() if p.is_dir()):
        trained = [e for e in PrivacyLedger(site_dir).entries if e.status == "trained"]
        if not trained:
            continue
        last = trained[-1]
        out[site_dir.name] = {
            "rounds": len(trained), "steps": sum(e.steps for e in trained),
            "sample_rate": last.sample_rate, "noise_multiplier": last.noise_multiplier,
            "max_grad_norm": last.max_grad_norm, "delta": last.delta,
            "accountant": last.accountant, "epsilon": last.epsilon_after,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the federation with and without DP and print what DP costs; exit status."""
    defaults = RunConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=defaults.num_server_rounds)
    ap.add_argument("--local-steps", type=int, default=defaults.local_steps)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size,
                    help="batch size; under DP the expected Poisson batch (q = B / n)")
    ap.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    ap.add_argument("--lora-r", type=int, default=defaults.lora_r)
    ap.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    ap.add_argument("--lora-target-modules", default=defaults.lora_target_modules)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=None,
                    help="default: each site's min(1e-5, 1/(10 n))")
    ap.add_argument("--max-grad-norm", type=float, default=DEFAULT_MAX_GRAD_NORM)
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--max-eval-examples", type=int, default=defaults.max_eval_examples)
    ap.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--json", dest="json_path", default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)

    policy: dict[str, Any] = {"budget-epsilon": args.epsilon, "max-grad-norm": args.max_grad_norm}
    if args.delta is not None:
        policy["delta"] = args.delta
    results: dict[str, list[MetricsRow]] = {}
    seconds: dict[str, float] = {}
    sites_dp: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="confide-dp-utility-") as tmp:
        for name, dp in (("no-dp", False), ("dp", True)):
            out = Path(tmp) / name
            cfg = RunConfig.from_mapping({
                "num-server-rounds": args.rounds, "local-steps": args.local_steps,
                "batch-size": args.batch_size, "learning-rate": args.learning_rate,
                "lora-r": args.lora_r, "lora-alpha": args.lora_alpha,
                "lora-target-modules": args.lora_target_modules, "seed": args.seed,
                "max-eval-examples": args.max_eval_examples, "max-seq-len": args.max_seq_len,
                "model": resolve_model(args.model), "data-dir": resolve_data_dir(args.data),
                "min-sites": args.sites, "out-dir": str(out), "dp": dp,
                "allow-no-privacy": not dp,  # the non-private baseline, on purpose
                "dp-policy": json.dumps(policy) if dp else "",
                "sites-state-dir": str(RunFolder(out).sites_dir), "secagg": True,
                "secagg-enrolment": str(RunFolder(out).enrolment_path),
            })
            t0 = time.perf_counter()
            results[name] = _run(cfg, args.sites)
            seconds[name] = time.perf_counter() - t0
            if dp:
                sites_dp = _ledgers(RunFolder(out).sites_dir)
    base = results["no-dp"][0].eval_loss
    drop = {k: base - v[-1].eval_loss for k, v in results.items()}
    eps = max((s["epsilon"] for s in sites_dp.values()), default=math.nan)
    ratio = drop["dp"] / drop["no-dp"] if drop["no-dp"] > 0 else math.nan

    print(f"{args.sites} sites x {args.rounds} rounds x {args.local_steps} local steps, batch "
          f"{args.batch_size}, AdamW lr {args.learning_rate:g}, LoRA r={args.lora_r} on "
          f"{args.lora_target_modules}; secure aggregation on in both runs")
    print(f"{'run':<7}{'loss r0':>9}{'final':>9}{'drop':>9}{'ppl r0':>9}{'final':>9}{'time s':>8}")
    for name, rows in results.items():
        print(f"{name:<7}{rows[0].eval_loss:>9.4f}{rows[-1].eval_loss:>9.4f}"
              f"{drop[name]:>9.4f}{rows[0].eval_perplexity:>9.2f}"
              f"{rows[-1].eval_perplexity:>9.2f}{seconds[name]:>8.0f}")
    print(f"DP sites (budget eps {args.epsilon:g}, from each site's privacy ledger):")
    print(f"{'site':<10}{'q':>9}{'sigma':>8}{'C':>7}{'steps':>7}{'delta':>10}{'eps':>8}")
    for site, s in sites_dp.items():
        print(f"{site:<10}{s['sample_rate']:>9.4g}{s['noise_multiplier']:>8.4f}"
              f"{s['max_grad_norm']:>7g}{s['steps']:>7d}{s['delta']:>10.3g}{s['epsilon']:>8.3f}")
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"DP keeps {ratio:.1%} of the non-private loss reduction ({verdict} the "
          f"{TARGET_RATIO:.0%} target)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "config": {"sites": args.sites, "rounds": args.rounds,
                       "local_steps": args.local_steps, "batch_size": args.batch_size,
                       "learning_rate": args.learning_rate, "optimizer": "adamw",
                       "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
                       "lora_target_modules": args.lora_target_modules,
                       "max_grad_norm": args.max_grad_norm, "seed": args.seed,
                       "max_eval_examples": args.max_eval_examples,
                       "max_seq_len": args.max_seq_len, "model": args.model, "secagg": True},
            "epsilon_budget": args.epsilon, "epsilon_spent": eps, "base_loss": base,
            "no_dp_loss": results["no-dp"][-1].eval_loss,
            "dp_loss": results["dp"][-1].eval_loss,
            "no_dp_drop": drop["no-dp"], "dp_drop": drop["dp"],
            "ratio_of_loss_drops": ratio, "target_ratio": TARGET_RATIO,
            "meets_target": bool(ratio >= TARGET_RATIO),
            "curves": {k: [r.eval_loss for r in v] for k, v in results.items()},
            "seconds": seconds, "dp_sites": sites_dp,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
