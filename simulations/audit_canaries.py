"""Empirical privacy audit with M canaries at one site, DP off and DP on (one training run each).

After Steinke, Nasr & Jagielski (NeurIPS 2023), see :mod:`privacy.audit.canary`: M random
token sequences (canaries) are drawn; a recorded fair coin puts each in the site's training
data or leaves it out. The site then trains its LoRA adapter as usual on its own examples
plus the included canaries; each canary's membership score is its loss drop against the
model before training; the top-k are guessed IN and the bottom-k OUT, and the number of
correct guesses gives an ε lower bound at 95% confidence.

* ``--dp off``: plain AdamW (``client.train.train_steps``) for enough epochs to memorise:
  the bound should be clearly >= 1 (the audit has power).
* ``--dp on``: the site's own DP path: its policy and planner (σ calibrated by
  :mod:`privacy.accounting` so the planned steps spend ``--epsilon``, default 2) and Opacus
  DP-SGD (``client.train.dp_train``): the bound must never exceed the formal ε.

The adapter is LoRA r=8 on every projection *and* ``lm_head``. A rank-8 adapter on the
attention / MLP projections alone barely memorises random tokens in the embedded model
(no per-token parameters: the embedding is frozen and tied to the output), so a DP-off run
would show no leak and the audit no power; the ``lm_head`` adapter gives every token its
own 8 numbers, and 10 epochs suffice. The same adapter is used with DP on.

Usage::

    python -m simulations.audit_canaries                  # both runs, M = 1000
    python -m simulations.audit_canaries --quick          # M = 400, fewer epochs (~1 min)
    python -m simulations.audit_canaries --json RUN_DIR/canary-audit.json

The JSON (``{"runs": [...]}``, each a :class:`~privacy.audit.canary.CanaryAuditResult`
mapping plus the training settings) is what ``confide audit`` reads as the empirical section
when it is saved as ``RUN_DIR/canary-audit.json`` (or passed with ``--canary-result``).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from client.data import TokenizedExample, collate, load_examples, site_paths, tokenize_examples
from client.model import get_adapter_state, load_site_model, set_adapter_state
from client.train import dp_train, sequence_loss, train_steps
from privacy.audit.canary import CanaryPlan, audit_scores, membership_scores
from privacy.budget import RoundPlan, plan_round
from privacy.policy import SitePrivacyPolicy, default_delta
from protocol.io import atomic_write_json
from protocol.model_ref import resolve_data_dir, resolve_model

__all__ = ["AuditSettings", "main", "run_canary_audit"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditSettings:
    """One canary-audit training run."""

    dp: bool
    canaries: int = 1000
    length: int = 16
    disjoint: bool = False
    score: str = "drop"
    permutations: int = 4
    target_epsilon: float = 2.0
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-2
    max_grad_norm: float = 1.0
    site_examples: int = 100
    max_seq_len: int = 32
    lora_r: int = 8
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                       "gate_proj", "up_proj", "down_proj", "lm_head")
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("canaries", "length", "epochs", "batch_size", "site_examples",
                     "max_seq_len", "lora_r"):
            value = getattr(self, name)
            if type(value) is not int or value < (2 if name == "length" else 0 if
                                                  name == "site_examples" else 1):
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if not self.target_epsilon > 0:
            raise ValueError(f"`target_epsilon` must be > 0, got {self.target_epsilon!r}")
        if self.score not in ("perm", "drop"):
            raise ValueError(f"`score` must be perm or drop, got {self.score!r}")


@torch.no_grad()
def _losses(model: Any, seqs: Sequence[TokenizedExample], pad_id: int,
            device: torch.device, batch: int = 256) -> list[float]:
    model.eval()
    out: list[float] = []
    for i in range(0, len(seqs), batch):
        b = {k: v.to(device) for k, v in collate(seqs[i:i + batch], pad_id).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        out += sequence_loss(logits, b["labels"]).tolist()
    return out


def _mean_losses(model: Any, sets: Sequence[Sequence[TokenizedExample]], pad_id: int,
                 device: torch.device) -> list[float]:
    if not sets:
        return []
    per = np.asarray([_losses(model, s, pad_id, device) for s in sets])
    return [float(x) for x in per.mean(axis=0)]


def _site_examples(data: str, site: str | None, tokenizer: Any, n: int,
                   max_seq_len: int) -> tuple[str, list[TokenizedExample]]:
    if n == 0:
        return site or "canary-site", []
    paths = site_paths(resolve_data_dir(data))
    path = next((p for p in paths if site in (None, p.stem, p.name)), None)
    if path is None:
        raise SystemExit(f"--site {site!r} not found under {data!r}: "
                         f"{', '.join(p.stem for p in paths)}")
    examples = tokenize_examples(load_examples(path)[:n], tokenizer, max_seq_len=max_seq_len)
    return path.stem, examples


def run_canary_audit(settings: AuditSettings, *, model: str = "embedded",
                     data: str = "embedded", site: str | None = None) -> dict[str, Any]:
    """Train once with the canaries and return the audit result plus its settings/timing."""
    t0 = time.perf_counter()
    device = torch.device("cpu")
    torch.manual_seed(settings.seed)
    sm = load_site_model(resolve_model(model), device=device, r=settings.lora_r,
                         alpha=2 * settings.lora_r, dropout=0.0,
                         target_modules=list(settings.target_modules))
    init = _INITIAL.setdefault(id(sm), get_adapter_state(sm))
    set_adapter_state(sm, init, aggregation="fedavg")  # a fresh adapter for every run
    tok = sm.tokenizer
    pad_id = int(tok.pad_token_id)
    special = sorted({i for i in (tok.bos_token_id, tok.eos_token_id, pad_id) if i is not None})
    plan = CanaryPlan.draw(settings.canaries, length=settings.length, vocab_size=len(tok),
                           seed=settings.seed, exclude=special, disjoint=settings.disjoint)
    canaries = [TokenizedExample(s, s) for s in plan.sequences]
    # controls: each canary's tokens in fixed shuffled orders (drawn without the coins)
    prng = np.random.default_rng([settings.seed, 1])
    orders = [prng.permutation(settings.length) for _ in range(settings.permutations)]
    controls = [[TokenizedExample(p, p) for p in (tuple(s[i] for i in o)
                                                  for s in plan.sequences)] for o in orders]
    site_id, own = _site_examples(data, site, tok, settings.site_examples, settings.max_seq_len)
    train = own + [canaries[i] for i in plan.indices(included=True)]
    random.Random(settings.seed).shuffle(train)
    n = len(train)
    delta = default_delta(n)
    before = _losses(sm.model, canaries, pad_id, device)
    ctl_before = _mean_losses(sm.model, controls, pad_id, device)

    steps = max(1, round(settings.epochs * n / settings.batch_size))
    formal: float | None = None
    sigma = q = None
    if settings.dp:
        # the site's own code path: its policy, its planner (σ calibrated by
        # privacy.accounting for exactly these steps), Opacus DP-SGD via client.train.dp_train
        policy = SitePrivacyPolicy(budget_epsilon=settings.target_epsilon, delta=delta,
                                   max_grad_norm=settings.max_grad_norm)
        rplan = plan_round(policy, history=[], num_examples=n, batch_size=settings.batch_size,
                          local_steps=steps, planned_rounds=1)
        if not isinstance(rplan, RoundPlan):
            raise SystemExit(f"the site declined to train: {rplan}")
        q, sigma, formal = rplan.sample_rate, rplan.noise_multiplier, rplan.epsilon_after
        assert formal <= settings.target_epsilon
        dp_train(sm, SimpleNamespace(train=train), plan=rplan, policy=policy,
                 learning_rate=settings.learning_rate, pad_id=pad_id, seed=settings.seed)
    else:
        train_steps(sm.model, train, steps=steps, batch_size=settings.batch_size,
                    learning_rate=settings.learning_rate, pad_id=pad_id, device=device,
                    seed=settings.seed)
    after = _losses(sm.model, canaries, pad_id, device)
    if settings.score == "perm":
        scores = membership_scores(before, after, control_before=ctl_before,
                                   control_after=_mean_losses(sm.model, controls, pad_id, device))
    else:
        scores = membership_scores(before, after)
    result = audit_scores(scores, plan.included, delta=delta, formal_epsilon=formal,
                          site_id=site_id, accountant="rdp" if settings.dp else None,
                          confidence=settings.confidence)
    inc = [s for s, c in zip(scores, plan.included, strict=True) if c]
    out = [s for s, c in zip(scores, plan.included, strict=True) if not c]
    return {
        **result.to_mapping(),
        "training": {"examples": n, "site_examples": len(own), "steps": steps,
                     "batch_size": settings.batch_size, "epochs": settings.epochs,
                     "learning_rate": settings.learning_rate, "sample_rate": q,
                     "noise_multiplier": sigma, "max_grad_norm": settings.max_grad_norm,
                     "lora_r": settings.lora_r, "target_modules": list(settings.target_modules),
                     "canary_length": settings.length, "disjoint": settings.disjoint,
                     "score": settings.score, "permutations": settings.permutations,
                     "seed": settings.seed, "model": model},
        "mean_score_in": sum(inc) / max(1, len(inc)),
        "mean_score_out": sum(out) / max(1, len(out)),
        "seconds": time.perf_counter() - t0,
    }


_INITIAL: dict[int, Any] = {}


def _table(runs: Sequence[dict[str, Any]]) -> str:
    lines = [(f"{'DP':<4} {'formal eps':>10} {'empirical eps >=':>16} {'correct/guesses':>16} "
              f"{'k':>4} {'score in/out':>15} {'steps':>6} {'sigma':>7} {'time s':>7}")]
    for r in runs:
        formal = "inf" if r["formal_epsilon"] is None else f"{r['formal_epsilon']:.3f}"
        sigma = r["training"]["noise_multiplier"]
        lines.append(
            f"{'on' if r['dp'] else 'off':<4} {formal:>10} {r['epsilon_lower_bound']:>16.3f} "
            f"{str(r['correct']) + '/' + str(r['guesses']):>16} {r['k_in']:>4} "
            f"{r['mean_score_in']:>7.3f}/{r['mean_score_out']:<7.3f} "
            f"{r['training']['steps']:>6} {'-' if sigma is None else f'{sigma:.3f}':>7} "
            f"{r['seconds']:>7.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the audit(s), print the table, optionally write ``--json``; 1 on a red flag."""
    p = argparse.ArgumentParser(prog="python -m simulations.audit_canaries",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dp", choices=("both", "on", "off"), default="both")
    p.add_argument("--canaries", type=int, default=None, help="M (default 1000; 400 --quick)")
    p.add_argument("--length", type=int, default=16, help="tokens per canary")
    p.add_argument("--disjoint", action="store_true",
                   help="draw each canary from its own disjoint block of token ids (default: "
                        "every canary from the whole vocabulary)")
    p.add_argument("--score", choices=("drop", "perm"), default="drop",
                   help="membership score: loss drop minus the drop of shuffled controls "
                        "(perm), or the plain loss drop")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--epsilon", type=float, default=2.0, help="formal eps of the DP run")
    p.add_argument("--epochs-off", type=int, default=None,
                   help="epochs without DP (default 10; 6 --quick)")
    p.add_argument("--epochs-on", type=int, default=None,
                   help="epochs with DP (default 10; 6 --quick)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr-off", type=float, default=1e-2)
    p.add_argument("--lr-on", type=float, default=1e-2)
    p.add_argument("--site-examples", type=int, default=None,
                   help="the site's own training examples mixed in (default 100; 50 --quick)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--target-modules", default=",".join(AuditSettings.target_modules))
    p.add_argument("--model", default="embedded")
    p.add_argument("--data", default="embedded")
    p.add_argument("--site", default=None, help="site folder under --data (default: first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="M=400, fewer epochs and examples")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    m = args.canaries or (400 if args.quick else 1000)
    base = AuditSettings(
        dp=False, canaries=m, length=args.length, disjoint=args.disjoint,
        score=args.score, target_epsilon=args.epsilon,
        batch_size=args.batch_size, lora_r=args.lora_r,
        site_examples=(args.site_examples if args.site_examples is not None
                       else (50 if args.quick else 100)),
        target_modules=tuple(t for t in args.target_modules.split(",") if t), seed=args.seed)
    plans = []
    if args.dp in ("both", "off"):
        plans.append(replace(base, epochs=args.epochs_off or (6 if args.quick else 10),
                             learning_rate=args.lr_off))
    if args.dp in ("both", "on"):
        plans.append(replace(base, dp=True, epochs=args.epochs_on or (6 if args.quick else 10),
                             learning_rate=args.lr_on))
    runs = []
    for s in plans:
        dp = f"on, eps={s.target_epsilon:g}" if s.dp else "off"
        print(f"canary audit: M={s.canaries}, DP {dp}, {s.epochs} epochs ...", flush=True)
        runs.append(run_canary_audit(s, model=args.model, data=args.data, site=args.site))
    print()
    print(_table(runs))
    broken = [r for r in runs if r["exceeds_formal"]]
    for r in broken:
        print(f"\nRED FLAG: empirical eps >= {r['epsilon_lower_bound']:.3f} exceeds the formal "
              f"eps {r['formal_epsilon']:.3f}: the implementation or accounting is broken",
              file=sys.stderr)
    if args.json:
        atomic_write_json(Path(args.json), {"runs": runs})
        print(f"\nwrote {args.json}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
