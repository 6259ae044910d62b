"""What DP costs in utility: the same federated run with and without site DP-SGD.

Runs the demo federation twice through Flower (same sites, rounds, local steps, seeds;
secure aggregation on in both): once with every site at budget ε (default 8, δ below 1/n,
σ calibrated to the plan) and once without DP. Prints the held-out loss drop (nats,
site-weighted) each achieves from the same starting adapter, and their ratio.

    python -m simulations.dp_utility [--epsilon 8] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from protocol.config import RunConfig
from protocol.model_ref import resolve_data_dir, resolve_model
from simulations.runner import run_simulation

__all__ = ["main"]


def _run(cfg: RunConfig, sites: int) -> list[dict[str, Any]]:
    from simulations.cli import enrol_sites

    enrol_sites(cfg, sites)
    code = run_simulation(cfg, num_sites=sites, quiet=True)
    path = Path(cfg.out_dir) / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    if code != 0 or not rows or rows[-1]["round"] != cfg.num_server_rounds:
        raise SystemExit(f"run in {cfg.out_dir} failed (exit {code})")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=RunConfig().local_steps)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=None)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)

    policy: dict[str, Any] = {"budget-epsilon": args.epsilon}
    if args.delta is not None:
        policy["delta"] = args.delta
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="confide-dp-utility-") as tmp:
        for name, dp in (("no-dp", False), ("dp", True)):
            out = Path(tmp) / name
            cfg = RunConfig.from_mapping({
                "num-server-rounds": args.rounds, "local-steps": args.local_steps,
                "model": resolve_model(args.model), "data-dir": resolve_data_dir(args.data),
                "min-sites": args.sites, "out-dir": str(out), "dp": dp,
                "site-dp-policy": json.dumps(policy) if dp else "",
                "sites-state-dir": str(out / "sites"), "secagg": True,
                "secagg-enrolment": str(out / "enrolment.json"),
            })
            results[name] = _run(cfg, args.sites)
    base = results["no-dp"][0]["eval_loss"]
    drop = {k: base - v[-1]["eval_loss"] for k, v in results.items()}
    eps = max(results["dp"][-1].get("epsilon", {}).values(), default=math.nan)
    ratio = drop["dp"] / drop["no-dp"] if drop["no-dp"] > 0 else math.nan
    print(f"{args.sites} sites x {args.rounds} rounds x {args.local_steps} local steps; "
          f"secure aggregation on; DP budget eps={args.epsilon:g} (spent {eps:.3f})")
    print(f"{'run':<8}{'loss r0':>10}{'loss final':>12}{'drop':>9}{'perplexity':>12}")
    for name, rows in results.items():
        print(f"{name:<8}{rows[0]['eval_loss']:>10.4f}{rows[-1]['eval_loss']:>12.4f}"
              f"{drop[name]:>9.4f}{rows[-1]['eval_perplexity']:>12.2f}")
    print(f"DP keeps {ratio:.1%} of the non-private loss reduction")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "epsilon_budget": args.epsilon, "epsilon_spent": eps, "base_loss": base,
            "no_dp_loss": results["no-dp"][-1]["eval_loss"],
            "dp_loss": results["dp"][-1]["eval_loss"], "ratio_of_loss_drops": ratio,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
