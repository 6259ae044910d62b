"""One round at 10, 100 and 1,000 virtual sites: time, the coordinator's stages, memory.

Runs ``confide simulate``'s machinery (the Flower simulation engine, the real ServerApp and
ClientApp, secure aggregation and example-level DP on) for one training round at each
``--sites`` count with small local work (1 local step of batch 8 over sequences of at most
128 tokens, at most 4 held-out examples per site), and reports per count:

- the time of the training round (``round_time_s`` of round 1 in ``metrics.jsonl``) and of
  the whole run (round 0's evaluation, start-up of Flower and Ray included);
- the coordinator's wall time per stage of round 1 and the part of it spent waiting for the
  sites' replies (``stage_time_s`` / ``stage_wait_s``, :mod:`server.stage_clock`): a stage's
  time minus its wait is the coordinator's own work;
- the peak resident memory (RSS, sampled every ``--sample-s`` s with psutil) of the largest
  process of the run and of all its processes together (every process that carries the
  run's token, :data:`protocol.procs.RUN_TOKEN_ENV`; shared pages count once per process,
  so the sum is an upper bound), and the CPU seconds they used.

With more virtual sites than data folders each site takes a disjoint shard of a folder: at
1,000 sites over the bundled demo (3 x 3,000 examples) that is about 9 examples a site, so
the held-out fraction is 0.2 (at 0.1, or with 32-token sequences, some shards keep no usable
held-out or training example and those sites fail the round with a data error).

    python -m simulations.bench_scale [--sites 10,100,1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

__all__ = ["MemorySampler", "main"]


class MemorySampler:
    """Peak RSS of the largest process, and of all together, among the run's tagged processes."""

    def __init__(self, token: str, *, every: float = 0.5) -> None:
        self.token = token
        self.every = every
        self.peak_largest = 0
        self.peak_total = 0
        self.peak_processes = 0
        self.largest_name = ""
        #: pid -> (process name, CPU seconds user + system) at its latest sample
        self.cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-scale-memory",
                                        daemon=True)

    def sample(self) -> None:
        """Take one sample now."""
        from protocol.procs import tagged_pids

        total, count = 0, 0
        for pid in tagged_pids(self.token):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                rss = int(proc.memory_info().rss)
                times = proc.cpu_times()
                self.cpu[pid] = (proc.name(), float(times.user + times.system))
                total += rss
                count += 1
                if rss > self.peak_largest:
                    self.peak_largest = rss
                    self.largest_name = proc.name()
        self.peak_total = max(self.peak_total, total)
        self.peak_processes = max(self.peak_processes, count)

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds of the run's processes, summed by process name."""
        out: dict[str, float] = {}
        for name, sec in self.cpu.values():
            out[name] = out.get(name, 0.0) + sec
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _run(sites: int, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from protocol.procs import RUN_TOKEN_ENV
    from protocol.run_folder import RunFolder
    from simulations.cli import build_parser
    from simulations.runner import run_simulation
    from simulations.simulate import enrol_sites, run_config

    argv = ["simulate", "--sites", str(sites), "--rounds", "1", "--out", str(out),
            "--model", args.model, "--data", args.data,
            "--local-steps", str(args.local_steps), "--batch-size", str(args.batch_size),
            "--max-seq-len", str(args.max_seq_len),
            "--max-eval-examples", str(args.max_eval_examples), "--seed", str(args.seed)]
    cfg = run_config(build_parser().parse_args(argv))
    # every site in the round, and time enough for the slowest stage at this size
    cfg = cfg.replace(min_sites=sites, round_timeout=float(args.stage_timeout),
                      eval_fraction=args.eval_fraction)
    t0 = time.perf_counter()
    enrol_sites(cfg, sites)
    enrol_s = time.perf_counter() - t0
    token = uuid.uuid4().hex
    os.environ[RUN_TOKEN_ENV] = token
    try:
        with MemorySampler(token, every=args.sample_s) as mem:
            t0 = time.perf_counter()
            code = run_simulation(cfg, num_sites=sites, quiet=True, progress=False)
            wall = time.perf_counter() - t0
    finally:
        os.environ.pop(RUN_TOKEN_ENV, None)
    rows = RunFolder(out).read_metrics()
    if code != 0 or not rows or rows[-1].round != 1:
        raise RuntimeError(f"{sites} sites: the run failed (exit {code}); see {out}")
    row = rows[-1]
    parts = RunFolder(out).read_participation()
    return {
        "sites": sites, "contributed": len(row.contributed or ()),
        "eval_contributed": len(row.eval_contributed or ()),
        "round_s": float(row.round_time_s or 0.0), "round0_s": float(rows[0].round_time_s or 0.0),
        "wall_s": wall, "enrol_s": enrol_s,
        "stage_time_s": dict(row.stage_time_s or {}), "stage_wait_s": dict(row.stage_wait_s or {}),
        "degree": parts[-1].degree if parts else None,
        "threshold": parts[-1].threshold if parts else None,
        "bytes_received": row.bytes_received,
        "peak_rss_largest_bytes": mem.peak_largest, "largest_process": mem.largest_name,
        "peak_rss_total_bytes": mem.peak_total, "peak_processes": mem.peak_processes,
        "cpu_s": sum(mem.cpu_by_name().values()), "cpu_s_by_process": mem.cpu_by_name(),
    }


#: the stages of a round in the order they run (``server.rounds``, ``server.secure``)
_ORDER = ("sample", "hello", "secagg: keys", "secagg: shares", "train (masked)",
          "secagg: consistency", "secagg: charge", "secagg: unmask", "secagg: release", "train",
          "checkpoint", "eval: hello", "eval: keys", "eval: shares", "evaluate (masked)",
          "eval: consistency", "eval: unmask", "evaluate")


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'sites':>6}{'round s':>9}{'s/site':>8}{'wall s':>8}{'CPU s':>8}{'in sum':>8}"
             f"{'max RSS GB':>11}{'all RSS GB':>11}{'procs':>6}"]
    for r in rows:
        lines.append(f"{r['sites']:>6}{r['round_s']:>9.1f}{r['round_s'] / r['sites']:>8.3f}"
                     f"{r['wall_s']:>8.0f}{r['cpu_s']:>8.0f}{r['contributed']:>8}"
                     f"{_gb(r['peak_rss_largest_bytes']):>11}{_gb(r['peak_rss_total_bytes']):>11}"
                     f"{r['peak_processes']:>6}")
    lines += ["", "CPU s of the whole run by process: " + "; ".join(
        f"{r['sites']} sites: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                           list(r["cpu_s_by_process"].items())[:4])
        for r in rows)]
    stages = [s for s in _ORDER if any(s in r["stage_time_s"] for r in rows)]
    for r in rows:
        stages += [s for s in r["stage_time_s"] if s not in stages]
    lines += ["", "round 1, coordinator per stage: wall s / of it waiting for sites / own s"]
    lines.append(f"{'stage':<22}" + "".join(f"{str(r['sites']) + ' sites':>24}" for r in rows))
    for s in stages:
        cells = []
        for r in rows:
            t = r["stage_time_s"].get(s)
            w = r["stage_wait_s"].get(s, 0.0)
            cells.append("-" if t is None else f"{t:.2f} / {w:.2f} / {t - w:.2f}")
        lines.append(f"{s:<22}" + "".join(f"{c:>24}" for c in cells))
    return lines


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sites must be a list like 10,100, got {text!r}")
    if not counts or min(counts) < 3:
        raise argparse.ArgumentTypeError(f"--sites: each count must be >= 3, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    """Run one round at each site count; print the table (and write ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=_counts, default=[10, 100, 1000],
                    help="comma-separated site counts (default 10,100,1000)")
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--eval-fraction", type=float, default=0.2,
                    help="each site's held-out share (0.2: every shard of 1,000 keeps one)")
    ap.add_argument("--max-eval-examples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--stage-timeout", type=float, default=3600.0,
                    help="seconds the coordinator waits for one stage's replies")
    ap.add_argument("--sample-s", type=float, default=0.5, help="memory sampling interval")
    ap.add_argument("--json", dest="json_path", default=None,
                    help='write {"settings", "rows": [{"sites", "round_s", ...}]}')
    ap.add_argument("--out", default=None, help="keep the RUN_DIRs under this directory")
    args = ap.parse_args(argv)
    if min(args.local_steps, args.batch_size, args.max_seq_len, args.max_eval_examples) < 1:
        ap.error("--local-steps, --batch-size, --max-seq-len, --max-eval-examples must be >= 1")
    tmp = tempfile.TemporaryDirectory(prefix="confide-bench-scale-")
    root = Path(args.out).resolve() if args.out else Path(tmp.name)
    rows = []
    for n in args.sites:
        row = _run(n, root / f"sites-{n}", args)
        rows.append(row)
        print(f"  {n} sites: round {row['round_s']:.1f} s, wall {row['wall_s']:.0f} s, "
              f"largest process {_gb(row['peak_rss_largest_bytes'])} GB, all "
              f"{_gb(row['peak_rss_total_bytes'])} GB", flush=True)
    settings = {k: getattr(args, k) for k in ("sites", "local_steps", "batch_size", "max_seq_len",
                                              "max_eval_examples", "eval_fraction", "model")}
    settings.update(secagg=True, dp=True, rounds=1, cpus=os.cpu_count())
    print(f"\none training round, secure aggregation and DP on, {args.local_steps} local step(s) "
          f"of batch {args.batch_size} x {args.max_seq_len} tokens, at most "
          f"{args.max_eval_examples} held-out examples per site, {os.cpu_count()} CPUs")
    print("\n".join(_table(rows)))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"settings": settings, "rows": rows},
                                                   indent=2) + "\n", encoding="utf-8")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
