"""Benchmark: cost of DP-SGD (Opacus ``hooks`` / ``ghost``) over a non-private LoRA step.

For each model (the embedded checkpoint, and a larger Llama config: hidden 512, 4 layers;
or, with ``--model NAME``, a named real model such as ``smollm2-135m`` or a local checkpoint
directory) and each mode (``none``, ``hooks``, ``ghost``, ``csprng``) it runs LoRA r=8 on
``q_proj, v_proj`` (a named or local model: its architecture's default targets) with a
batch of 16 sequences of 128 tokens and reports steps/s and peak
memory, then a table with ratios against ``none``. Every (model, mode) runs in a fresh Python
process, started by this one, so one mode's memory (and the allocator's cache) cannot leak
into the next.

Peak memory (``peak_mem_mb``) is the *working* memory of training, above the loaded model:

* on CUDA: ``torch.cuda.max_memory_allocated()`` during the steps minus the memory allocated
  before the first step (tensors only);
* on CPU: the peak resident set size (RSS, sampled every 2 ms by a thread) during the steps
  minus the RSS before the first step (includes the allocator's overhead, whole process).

The DP steps use a fixed batch of 16 (the Poisson sampler is bypassed so every mode does
the same work); σ = 1, C = 1. ``hooks`` and ``ghost`` draw their noise from a seeded torch
generator; ``csprng`` is ``hooks`` with the noise and the Poisson coins from the OS CSPRNG
(``os.urandom``, the default at every deployed site): it also draws a step's coins (and
discards them, so the batch stays the same), and its ratio to ``hooks`` ("x hooks") is the
CSPRNG's cost per step. ``--modes`` picks a subset. steps/s is 1 / the median step time
(after warm-up steps).
On CPU the table also shows the median process CPU time per step (all threads): on a shared
machine it is much less disturbed by other load than wall time, so its ratio ("cpu x") is
the steadier estimate of DP's cost.
``--repeats R`` runs the whole sequence R times, interleaved, and keeps each (model, mode)'s
fastest run, so a burst of other load on a shared machine does not land on one mode only.

Usage::

    python -m simulations.bench_dp [--steps N] [--repeats R] [--threads T] [--json PATH]
                                   [--device auto|cpu|cuda] [--quick] [--model NAME]
                                   [--precision auto|fp32|bf16] [--gradient-checkpointing]

``--precision`` and ``--gradient-checkpointing`` apply a site's compute settings
(:mod:`client.compute`: bf16 autocast with fp32 LoRA layers; reentrant checkpointing) to
every model; ``auto`` is bf16 on a CUDA GPU with bfloat16 and fp32 elsewhere.

CPU workers run with ``--threads 1`` by default: on a shared machine multi-threaded torch
spins and waits on busy cores, which swamps the difference being measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "run_one"]

logger = logging.getLogger(__name__)

MODES = ("none", "hooks", "ghost", "csprng")
LARGER = "llama-h512-l4"
ROOT = Path(__file__).resolve().parent.parent


class _RssPeak:
    """Samples this process's RSS in a thread; ``peak`` is the largest seen since start."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> _RssPeak:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _build(model_name: str, compute: Any, vocab: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from client.compute import apply_precision, enable_checkpointing

    torch.manual_seed(0)
    targets = ["q_proj", "v_proj"]
    if model_name == "embedded":
        from protocol.model_ref import embedded_model_dir

        base = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()),
                                                    dtype=torch.float32)
    elif model_name == LARGER:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1376,
                          num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                          max_position_embeddings=512, bos_token_id=0, eos_token_id=0)
        base = LlamaForCausalLM(cfg)
    else:  # a named real model or a local checkpoint directory
        from protocol.adapter import resolve_target_modules
        from protocol.model_ref import resolve_model

        path = resolve_model(model_name)
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        targets = resolve_target_modules(["auto"], path)
    base.config.use_cache = False
    if compute.gradient_checkpointing:
        enable_checkpointing(base)
    base.to(compute.device)  # before wrapping with PEFT (opacus#820)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=targets))
    apply_precision(model, compute)
    model.train()
    return model


def run_one(model_name: str, mode: str, *, steps: int, batch: int, seq: int, device: str,
            warmup: int = 2, precision: str = "fp32",
            gradient_checkpointing: bool = False) -> dict[str, Any]:
    """Time ``steps`` training steps of one (model, mode) in this process."""
    import torch

    from client.compute import resolve_compute
    from privacy.dp_sgd import make_private, sequence_losses

    compute = resolve_compute(device=device, precision=precision,
                              gradient_checkpointing=gradient_checkpointing)
    dev = compute.device
    vocab = 8192
    if model_name == "embedded":
        from transformers import AutoConfig

        from protocol.model_ref import embedded_model_dir

        vocab = AutoConfig.from_pretrained(str(embedded_model_dir())).vocab_size
    model = _build(model_name, compute, vocab)
    gen = torch.Generator().manual_seed(0)
    n = batch * 4
    ids = torch.randint(0, model.get_input_embeddings().weight.shape[0], (n, seq), generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    indices = list(range(batch))

    if mode == "none":
        x = ids[:batch].to(dev)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            out = model(input_ids=x, attention_mask=torch.ones_like(x))
            sequence_losses(out.logits, x).mean().backward()
            optimizer.step()
    elif mode == "csprng":
        private = make_private(model, optimizer, (ids,), sample_rate=batch / n,
                               noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="hooks",
                               secure_mode=True)

        def step() -> None:
            private.sampler.draw()  # the step's coins from os.urandom; the batch stays fixed
            private.step(indices)
    else:
        private = make_private(model, optimizer, (ids,), sample_rate=batch / n,
                               noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
                               generator=torch.Generator().manual_seed(1))

        def step() -> None:
            private.step(indices)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times: list[float] = []
    cpu_times: list[float] = []
    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
        for _ in range(warmup):
            step()
        sync()
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - base_mem
    else:
        with _RssPeak() as rss:
            base_mem = rss.peak
            for _ in range(warmup):
                step()
            for _ in range(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
        peak = rss.peak - base_mem
    return {"model": model_name, "mode": mode, "steps_per_s": 1.0 / statistics.median(times),
            "peak_mem_mb": peak / 2**20,
            "cpu_s_per_step": statistics.median(cpu_times) if cpu_times else None,
            "device": dev.type, "batch": batch, "seq": seq,
            "steps": steps, "precision": "fp32" if compute.autocast is None else "bf16",
            "gradient_checkpointing": gradient_checkpointing}


def _embedded_available() -> bool:
    try:
        from protocol.model_ref import embedded_model_dir

        embedded_model_dir()
    except Exception:  # noqa: BLE001 - any failure means: not installed
        return False
    return True


def _table(rows: list[dict[str, Any]]) -> str:
    base = {r["model"]: r for r in rows if r["mode"] == "none"}
    hooks = {r["model"]: r for r in rows if r["mode"] == "hooks"}
    lines = [f"{'model':<16} {'mode':<6} {'steps/s':>8} {'cost x':>7} {'cpu s':>7} "
             f"{'cpu x':>6} {'peak MB':>9} {'mem x':>6} {'x hooks':>8}", "-" * 81]
    nan = float("nan")
    for r in rows:
        ref = base.get(r["model"])
        cost = ref["steps_per_s"] / r["steps_per_s"] if ref else nan
        cpu = r.get("cpu_s_per_step")
        cpu_ref = ref.get("cpu_s_per_step") if ref else None
        cpu_x = cpu / cpu_ref if cpu and cpu_ref else nan
        mem = r["peak_mem_mb"] / ref["peak_mem_mb"] if ref and ref["peak_mem_mb"] > 0 else nan
        h = hooks.get(r["model"])
        h_cpu = h.get("cpu_s_per_step") if h else None
        vs_hooks = (cpu / h_cpu if cpu and h_cpu else
                    h["steps_per_s"] / r["steps_per_s"] if h else nan)
        lines.append(f"{r['model']:<16} {r['mode']:<6} {r['steps_per_s']:>8.3f} {cost:>7.2f} "
                     f"{cpu if cpu is not None else nan:>7.2f} {cpu_x:>6.2f} "
                     f"{r['peak_mem_mb']:>9.1f} {mem:>6.2f} {vs_hooks:>8.2f}")
    return "\n".join(lines)


def _run_worker(model: str, mode: str, args: argparse.Namespace,
                env: dict[str, str]) -> dict[str, Any] | None:
    """Run one (model, mode) in a fresh interpreter; its row, or None on failure."""
    cmd = [sys.executable, "-m", "simulations.bench_dp", "--worker", model, mode,
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
           "--device", args.device, "--threads", str(args.threads),
           "--precision", args.precision] + (
               ["--quick"] if args.quick else []) + (
               ["--gradient-checkpointing"] if args.gradient_checkpointing else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_ROW ")]
    if proc.returncode != 0 or not found:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"bench_dp: {model}/{mode} failed (exit {proc.returncode})", file=sys.stderr)
        return None
    row: dict[str, Any] = json.loads(found[-1][len("BENCH_ROW "):])
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one (model, mode) of it)."""
    parser = argparse.ArgumentParser(prog="bench_dp", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 steps, batch 4, seq 32")
    parser.add_argument("--models", default=f"embedded,{LARGER}",
                        help=f"comma-separated: embedded, {LARGER}, a named model "
                             "(smollm2-135m) or a checkpoint directory")
    parser.add_argument("--model", default=None,
                        help="one model only (same names as --models), e.g. smollm2-135m")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 autocast on a CUDA GPU with bfloat16, else fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="reentrant gradient checkpointing (client.compute)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per worker (0: torch's default); one thread "
                             "keeps CPU timings steady on a shared machine")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every (model, mode) this many times, interleaved, and keep "
                             "the fastest (filters out other load on the machine)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.seq = 2, 4, 32
    if args.steps < 1 or args.batch < 1 or args.seq < 2 or args.repeats < 1 or (
            args.threads < 0):
        parser.error("--steps, --batch and --repeats must be >= 1 and --seq >= 2")

    if args.worker:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        row = run_one(args.worker[0], args.worker[1], steps=args.steps, batch=args.batch,
                      seq=args.seq, device=args.device, warmup=1 if args.quick else 2,
                      precision=args.precision,
                      gradient_checkpointing=args.gradient_checkpointing)
        print("BENCH_ROW " + json.dumps(row), flush=True)
        return 0

    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes must name some of {', '.join(MODES)}, got {args.modes!r}")
    models = [args.model] if args.model else [m for m in args.models.split(",") if m]
    for m in models:
        if m in ("embedded", LARGER):
            continue
        from protocol.model_ref import ModelError, resolve_model

        try:
            resolve_model(m)
        except ModelError as exc:
            parser.error(f"model {m!r}: {exc} (or choose embedded, {LARGER})")
    if "embedded" in models and not _embedded_available():
        print("embedded model (client/embedded) is not installed: skipped", file=sys.stderr)
        models.remove("embedded")
    best: dict[tuple[str, str], dict[str, Any]] = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for _ in range(args.repeats):
        for model in models:
            for mode in modes:
                row = _run_worker(model, mode, args, env)
                if row is None:
                    return 1
                key = (model, mode)
                if key in best:
                    old = best[key]
                    mem = max(old["peak_mem_mb"], row["peak_mem_mb"])
                    cpus = [c for c in (old.get("cpu_s_per_step"), row.get("cpu_s_per_step"))
                            if c is not None]
                    if row["steps_per_s"] > old["steps_per_s"]:
                        best[key] = row
                    best[key]["peak_mem_mb"] = mem
                    best[key]["cpu_s_per_step"] = min(cpus) if cpus else None
                else:
                    best[key] = row
                print(f"  {model:<16} {mode:<6} {row['steps_per_s']:.3f} steps/s, "
                      f"{row['peak_mem_mb']:.1f} MB", flush=True)
    rows = [best[(m, mode)] for m in models for mode in modes]
    if not rows:
        print("bench_dp: nothing to run", file=sys.stderr)
        return 1
    dev = rows[0]["device"]
    print(f"\nDP-SGD cost on {dev} ({rows[0].get('precision', 'fp32')}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}): "
          f"LoRA r=8, batch {args.batch}, seq {args.seq},"
          f" median of {args.steps} steps (best of {args.repeats}), "
          f"{args.threads or 'default'} CPU thread(s); peak MB = working memory "
          f"above the loaded model "
          f"({'CUDA max allocated' if dev == 'cuda' else 'CPU peak RSS'})")
    print(_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            [{k: r[k] for k in ("model", "mode", "steps_per_s", "peak_mem_mb")} for r in rows],
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
