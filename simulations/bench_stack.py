"""What each layer of the privacy stack costs per round, against a plain FedAvg round.

Runs the same federation (``confide simulate`` machinery: the Flower simulation engine, the
real ServerApp / ClientApp) six ways in one command and reports the mean time of a
training round (rounds 1..R, from ``metrics.jsonl``; round 0 is the starting evaluation)
and its ratio to the plain round:

``plain``        no DP, no secure aggregation (the coordinator sees every update);
``dp``           example-level DP-SGD at every site, updates in the clear;
``secagg``       secure aggregation, no DP;
``dp+secagg``    both (``confide simulate``'s default);
``dp+secagg+site-level``  both, plus site-level DP noise added by the sites inside secure
                 aggregation (``--site-level-dp on``);
``dp+secagg@3s-poll``  both, with the coordinator pulling replies every 3 s, as Flower's
                 ``Grid.send_and_receive`` does (``poll-interval`` 3): the round time before
                 the coordinator's own poll loop (0.1 s).

``--repeats N`` runs the six in turn N times and keeps each one's median, which steadies
the figures on a shared machine.

    python -m simulations.bench_stack [--sites 3] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["OVERRIDES", "VARIANTS", "main"]

#: variant -> the ``confide simulate`` flags that make it
VARIANTS: dict[str, tuple[str, ...]] = {
    "plain": ("--dp", "off", "--secagg", "off"),
    "dp": ("--secagg", "off"),
    "secagg": ("--dp", "off"),
    "dp+secagg": (),
    "dp+secagg+site-level": ("--site-level-dp", "on"),
    "dp+secagg@3s-poll": (),
}
#: variant -> RunConfig fields set on top of its flags
OVERRIDES: dict[str, dict[str, Any]] = {"dp+secagg@3s-poll": {"poll_interval": 3.0}}


def _run(variant: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from protocol.run_folder import RunFolder
    from simulations.cli import build_parser
    from simulations.runner import report_unreleased, run_simulation
    from simulations.simulate import enrol_sites, run_config

    argv = ["simulate", "--sites", str(args.sites), "--rounds", str(args.rounds),
            "--out", str(out), "--model", args.model, "--data", args.data,
            "--local-steps", str(args.local_steps), "--batch-size", str(args.batch_size),
            "--seed", str(args.seed), *VARIANTS[variant]]
    if args.max_eval_examples is not None:
        argv += ["--max-eval-examples", str(args.max_eval_examples)]
    cfg = run_config(build_parser().parse_args(argv))
    cfg = cfg.replace(min_sites=args.sites, **OVERRIDES.get(variant, {}))
    if cfg.secagg:
        enrol_sites(cfg, args.sites)
    t0 = time.perf_counter()
    code = run_simulation(cfg, num_sites=args.sites, quiet=True, progress=False)
    report_unreleased(out, label=f"variant {variant}: ")
    wall = time.perf_counter() - t0
    rows = RunFolder(out).read_metrics()
    if code != 0 or not rows or rows[-1].round != args.rounds:
        raise RuntimeError(f"variant {variant}: the run failed (exit {code}); see {out}")
    times = [float(r.round_time_s or 0.0) for r in rows if r.round >= 1]
    return {"variant": variant, "round_s": statistics.fmean(times), "round_times_s": times,
            "wall_s": wall, "final_eval_loss": rows[-1].held_out()[0]}


def _table(rows: list[dict[str, Any]]) -> list[str]:
    plain = next((r["round_s"] for r in rows if r["variant"] == "plain"), None)
    lines = [f"{'variant':<22}{'s / round':>10}{'x plain':>9}{'wall s':>8}{'final loss':>11}"]
    for r in rows:
        ratio = "-" if not plain else f"{r['round_s'] / plain:.2f}"
        lines.append(f"{r['variant']:<22}{r['round_s']:>10.2f}{ratio:>9}{r['wall_s']:>8.0f}"
                     f"{r['final_eval_loss']:>11.4f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the variants and print their per-round time ratios to the plain round."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-eval-examples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each variant (median kept)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--json", dest="json_path", default=None,
                    help='write {"settings", "rows": [{"variant", "round_s", "ratio", ...}]}')
    ap.add_argument("--out", default=None, help="keep the RUN_DIRs under this directory")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants must name {', '.join(VARIANTS)}, got {bad}")
    if min(args.sites, args.rounds, args.local_steps, args.batch_size, args.repeats) < 1:
        ap.error("--sites, --rounds, --local-steps, --batch-size and --repeats must be >= 1")
    tmp = tempfile.TemporaryDirectory(prefix="confide-bench-stack-")
    root = Path(args.out).resolve() if args.out else Path(tmp.name)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants:  # interleaved: a load spike hits every variant alike
            row = _run(v, root / f"{v}-{rep}", args)
            runs[v].append(row)
            print(f"  {v} (run {rep + 1}/{args.repeats}): {row['round_s']:.2f} s per round",
                  flush=True)
    rows = []
    for v in variants:
        rs = runs[v]
        rows.append({"variant": v, "round_s": statistics.median(r["round_s"] for r in rs),
                     "wall_s": statistics.median(r["wall_s"] for r in rs),
                     "final_eval_loss": rs[0]["final_eval_loss"],
                     "round_s_runs": [r["round_s"] for r in rs]})
    plain = next((r["round_s"] for r in rows if r["variant"] == "plain"), None)
    for r in rows:
        r["ratio"] = r["round_s"] / plain if plain else None
    settings = {k: getattr(args, k) for k in ("sites", "rounds", "local_steps", "batch_size",
                                              "max_eval_examples", "model", "repeats")}
    print(f"\n{args.sites} sites, {args.rounds} rounds x {args.local_steps} local steps of "
          f"batch {args.batch_size}, median of {args.repeats}; time of a training round "
          "(rounds 1..R) and its ratio to the plain round")
    print("\n".join(_table(rows)))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"settings": settings, "rows": rows},
                                                   indent=2) + "\n", encoding="utf-8")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
