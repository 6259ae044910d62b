"""Site-level DP on the demo: what distributed noise costs over trusting the server.

Runs the same federation (``confide simulate`` machinery: Flower simulation engine, the real
ServerApp / ClientApp, secure aggregation on) four times and reports the held-out
perplexity after R rounds (example-weighted over every site's held-out split, as in
``metrics.jsonl``):

(a) ``none``         no DP at all;
(b) ``example``      example-level DP-SGD at every site only;
(c) ``distributed``  (b) + site-level DP: each site adds its share of discrete Gaussian noise
                     inside secure aggregation (``--site-level-dp on``);
(d) ``central``      (b) + the same site-level ε, noise added by a trusted server to the sum
                     (``--site-level-dp central``).

(c) and (d) calibrate their noise to the same site ε (default 8) over the R planned rounds;
the table shows each one's noise multiplier, the noise standard deviation in the released
mean and the site ε actually spent.

    python -m simulations.bench_site_level_dp [--sites 30] [--rounds 3] [--json PATH]

The defaults are the demo's (``make demo``): 30 virtual sites, 3 rounds x 4 local steps of
expected batch 64, site clip 1.0.
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

__all__ = ["VARIANTS", "main"]

VARIANTS: tuple[str, ...] = ("none", "example", "distributed", "central")


def _flags(variant: str) -> list[str]:
    return {"none": ["--dp", "off"], "example": [],
            "distributed": ["--site-level-dp", "on"],
            "central": ["--site-level-dp", "central"]}[variant]


def _run(variant: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from protocol.run_folder import RunFolder
    from simulations.cli import build_parser
    from simulations.runner import report_unreleased, run_simulation
    from simulations.simulate import enrol_sites, run_config

    argv = ["simulate", "--sites", str(args.sites), "--rounds", str(args.rounds),
            "--out", str(out), "--model", args.model, "--data", args.data,
            "--local-steps", str(args.local_steps), "--seed", str(args.seed),
            "--epsilon", str(args.epsilon), "--site-level-epsilon", str(args.site_level_epsilon),
            "--site-level-clip", str(args.site_level_clip), *_flags(variant)]
    for flag in ("batch_size", "learning_rate"):
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    cfg = run_config(build_parser().parse_args(argv))
    cfg = cfg.replace(min_sites=args.sites)
    if cfg.secagg:
        enrol_sites(cfg, args.sites)
    t0 = time.perf_counter()
    code = run_simulation(cfg, num_sites=args.sites, quiet=True)
    report_unreleased(out, label=f"variant {variant}: ")
    elapsed = time.perf_counter() - t0
    folder = RunFolder(out)
    rows = folder.read_metrics()
    if code != 0 or not rows or rows[-1].round != args.rounds:
        raise RuntimeError(f"variant {variant}: the run failed (exit {code}); see {out}")
    part = folder.read_participation()
    site = [p.site_level_dp for p in part if p.site_level_dp is not None]
    released = [s for s in site if s.get("released")]
    last = rows[-1]
    return {
        "variant": variant,
        "site_level_epsilon": released[-1]["epsilon_after"] if released else None,
        "perplexity": last.held_out()[1],
        "eval_loss": last.held_out()[0],
        "initial_perplexity": rows[0].held_out()[1],
        "example_epsilon": max((last.epsilon or {}).values(), default=None),
        "noise_multiplier": released[-1]["noise_multiplier"] if released else None,
        "noise_std_of_mean": released[-1]["noise_std_of_mean"] if released else None,
        "rounds_released": sum(1 for p in part if p.released),
        "dim": released[-1]["dim"] if released and variant == "central" else (
            released[-1].get("padded_dim") if released else None),
        "cohort": released[-1]["cohort"] if released else None,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the four variants and report each one's held-out perplexity; exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64,
                    help="expected local batch (the demo's 30-site setting)")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="local learning rate (default: the run default)")
    ap.add_argument("--epsilon", type=float, default=8.0, help="example-level budget per site")
    ap.add_argument("--site-level-epsilon", type=float, default=8.0)
    ap.add_argument("--site-level-clip", type=float, default=1.0)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--json", dest="json_path", default=None,
                    help='write rows {"variant", "site_level_epsilon", "perplexity", ...} as JSON')
    ap.add_argument("--out", default=None, help="keep the RUN_DIRs under this directory")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or args.sites < 1 or args.rounds < 1:
        ap.error(f"--variants must name {VARIANTS}, got {bad}" if bad else
                 "--sites and --rounds must be >= 1")
    tmp = tempfile.TemporaryDirectory(prefix="confide-bench-site-level-dp-")
    root = Path(args.out).resolve() if args.out else Path(tmp.name)
    rows = []
    for v in variants:
        row = _run(v, root / v, args)
        rows.append(row)
        print(f"  {v}: perplexity {row['perplexity']:.2f} ({row['seconds']:.0f} s)", flush=True)
    print(f"\n{args.sites} sites, {args.rounds} rounds x {args.local_steps} local steps, "
          f"example eps {args.epsilon:g} per site, site eps {args.site_level_epsilon:g} "
          f"(clip {args.site_level_clip:g}); held-out perplexity after round {args.rounds} "
          f"(round 0: {rows[0]['initial_perplexity']:.2f})")
    print(f"{'variant':<12}{'perplexity':>11}{'site eps':>10}{'z':>8}{'noise std/mean':>16}"
          f"{'ex. eps':>9}{'released':>9}")
    for r in rows:
        se = "-" if r["site_level_epsilon"] is None else f"{r['site_level_epsilon']:.3f}"
        z = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        ns = "-" if r["noise_std_of_mean"] is None else f"{r['noise_std_of_mean']:.3g}"
        ee = "-" if r["example_epsilon"] is None else f"{r['example_epsilon']:.2f}"
        print(f"{r['variant']:<12}{r['perplexity']:>11.2f}{se:>10}{z:>8}{ns:>16}{ee:>9}"
              f"{r['rounds_released']:>9}")
    by = {r["variant"]: r for r in rows}
    if "distributed" in by and "central" in by:
        ratio = by["distributed"]["perplexity"] / by["central"]["perplexity"]
        verdict = "within" if abs(ratio - 1.0) <= 0.10 else "NOT within"
        print(f"distributed / central perplexity: {ratio:.4f} ({verdict} 10%)")
    dims = [r for r in rows if r.get("cohort")]
    if dims:
        from privacy.ddg import calibrate_site_noise

        r0 = dims[0]
        kw = dict(target_epsilon=args.site_level_epsilon, delta=1e-5, rounds=args.rounds,
                  clip=args.site_level_clip, dim=int(r0["dim"]), cohort=int(r0["cohort"]))
        zs = [f"central {calibrate_site_noise(mode='central', **kw):.4f}"]  # type: ignore[arg-type]
        zs += [f"k={k} {calibrate_site_noise(mode='distributed', modulus_bits=k, **kw):.4f}"
               for k in (16, 20, 24, 32)]  # type: ignore[arg-type]
        print(f"noise multiplier z for site eps {args.site_level_epsilon:g} "
              f"over {args.rounds} rounds "
              f"of {r0['cohort']} sites (d={r0['dim']}): " + ", ".join(zs))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in r.items()} for r in rows], indent=2) + "\n", encoding="utf-8")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
