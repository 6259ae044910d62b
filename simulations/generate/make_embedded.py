"""Build the embedded default model: a byte-level BPE tokenizer and a small Llama pretrained on CPU.

Steps, all seeded:

1. read the general corpus (``simulations/data/general/corpus.txt``) and hold out a slice;
2. train a byte-level BPE tokenizer (HF ``tokenizers``) with ``<|endoftext|>`` as bos/eos/pad;
3. pretrain a ``LlamaForCausalLM`` from config on packed 128-token sequences (AdamW, warmup
   then cosine decay, label smoothing);
4. report held-out perplexity on the general corpus and on every demo site, check that each site
   is at most ``vocab_size / 10``, and run a LoRA sanity check (r=8 on q_proj/v_proj, 30 steps,
   batch 16) showing that a site's held-out loss drops clearly;
5. save an HF checkpoint directory (half-precision safetensors) with a README.

``python -m simulations.generate.make_embedded --out client/embedded`` rebuilds it (about 6
minutes on 2 CPU cores); ``--check-only`` re-runs the evaluation and the LoRA sanity check on a
saved model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from simulations.generate.general_corpus import read_corpus

logger = logging.getLogger(__name__)

EOT = "<|endoftext|>"
ROOT = Path(__file__).resolve().parent.parent  # simulations/
CORPUS = ROOT / "data" / "general" / "corpus.txt"
SITES_DIR = ROOT / "data" / "sites"


@dataclass(frozen=True)
class BuildConfig:
    """Hyperparameters of the embedded model and its pretraining."""

    vocab_size: int = 4096
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 256
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 700
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    label_smoothing: float = 0.15
    grad_clip: float = 1.0
    heldout_fraction: float = 0.02
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_positions", "seq_len", "batch_size", "steps", "threads"):
            v = getattr(self, name)
            if type(v) is not int or v <= 0:
                raise ValueError(f"`{name}` must be a positive int, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"`hidden_size` must be divisible by `num_heads`, got "
                             f"{self.hidden_size} and {self.num_heads}")
        if self.seq_len > self.max_positions:
            raise ValueError(f"`seq_len` must be <= `max_positions`, got {self.seq_len}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.heldout_fraction < 0.5:
            raise ValueError(f"`heldout_fraction` must be in (0, 0.5), got "
                             f"{self.heldout_fraction}")
        if self.lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def example_parts(record: dict[str, str]) -> tuple[str, str]:
    """Split one site record into ``(prompt, scored text)``; ``prompt`` is empty for ``text``.

    As in ``client.data``, a response is scored after its prompt and a space.
    """
    if "text" in record:
        return "", record["text"]
    response = record["response"]
    return record["prompt"], response if response.startswith((" ", "\n")) else " " + response


def split_general(docs: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of corpus documents into (train, held-out)."""
    idx = list(range(len(docs)))
    random.Random(seed).shuffle(idx)
    n_held = max(1, int(len(docs) * fraction))
    return [docs[i] for i in idx[n_held:]], [docs[i] for i in idx[:n_held]]


Pair = tuple[str, str]


def load_site(site_dir: Path, seed: int = 0,
              fraction: float = 0.1) -> tuple[list[Pair], list[Pair]]:
    """Read ``train.jsonl`` of one site and split it (seeded) into (train, held-out) pairs."""
    with (site_dir / "train.jsonl").open(encoding="utf-8") as f:
        texts = [example_parts(json.loads(line)) for line in f if line.strip()]
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    n_held = max(1, int(len(texts) * fraction))
    return [texts[i] for i in idx[n_held:]], [texts[i] for i in idx[:n_held]]


def site_dirs(sites_dir: Path = SITES_DIR) -> list[Path]:
    """Site folders (those holding a ``train.jsonl``), sorted by name."""
    return sorted(p.parent for p in sites_dir.glob("*/train.jsonl"))


# ---------------------------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------------------------


def train_tokenizer(docs: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ``<|endoftext|>`` as its only special token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    if tok.get_vocab_size() != vocab_size:
        logger.warning("tokenizer stopped at %d tokens (asked for %d)", tok.get_vocab_size(),
                       vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
        model_max_length=256, clean_up_tokenization_spaces=False)


def build_model(cfg: BuildConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """Build a fresh ``LlamaForCausalLM`` sized by ``cfg`` (tied embeddings, q/k/v/o_proj names)."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        rms_norm_eps=1e-5, attention_dropout=0.0)
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (no max-length warning: we cut rows)."""
    backend = tokenizer.backend_tokenizer  # type: ignore[attr-defined]
    return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Save the tokenizer so that transformers 4.x and 5.x both load it with AutoTokenizer."""
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n",
                                                 encoding="utf-8")


def pack(tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], seq_len: int) -> torch.Tensor:
    """Concatenate documents separated by ``<|endoftext|>`` and cut them into rows."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = [eot]
    for enc in _encode(tokenizer, docs):
        ids.extend(enc)
        ids.append(eot)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def encode_examples(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair],
                    seq_len: int) -> Batch:
    """Encode like ``client.data``: ``prompt text <eot>``, loss on ``text <eot>`` only.

    Returns right-padded ``(input_ids, labels, attention_mask)``; labels are -100 on the
    prompt and on padding.
    """
    eot = tokenizer.convert_tokens_to_ids(EOT)
    prompts = _encode(tokenizer, [p for p, _ in pairs])
    texts = _encode(tokenizer, [t for _, t in pairs])
    rows = []
    for (prompt, _), p_ids, t_ids in zip(pairs, prompts, texts):
        p_ids = p_ids if prompt else []
        rows.append(((p_ids + t_ids + [eot])[:seq_len],
                     ([-100] * len(p_ids) + t_ids + [eot])[:seq_len]))
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), eot, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lab) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(lab)
        mask[i, : len(r)] = 1
    return ids, labels, mask


def lm_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None,
            mask: torch.Tensor | None = None, label_smoothing: float = 0.0,
            reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy on ``labels`` (default: ``ids``), skipping -100 labels."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = (ids if labels is None else labels)[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                           ignore_index=-100, label_smoothing=label_smoothing,
                           reduction=reduction)


@torch.no_grad()
def mean_nll(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, batch_size: int = 32) -> float:
    """Mean next-token negative log-likelihood (nats per scored token) over all rows."""
    model.eval()
    labels = ids if labels is None else labels
    total, count = 0.0, 0
    for i in range(0, ids.size(0), batch_size):
        sl = slice(i, i + batch_size)
        total += float(lm_loss(model, ids[sl], labels[sl], None if mask is None else mask[sl],
                               reduction="sum"))
        count += int((labels[sl, 1:] != -100).sum())
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------


def pretrain(model: LlamaForCausalLM, rows: torch.Tensor, cfg: BuildConfig,
             probes: dict[str, Batch] | None = None) -> float:
    """Train on packed ``rows`` for ``cfg.steps`` steps; return the wall time in seconds.

    ``probes`` (name to encoded batch) are scored every 100 steps and logged as perplexity;
    they do not affect training.
    """
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(rows.size(0), generator=gen)
    pos = 0
    model.train()
    start = time.perf_counter()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > order.numel():
            order, pos = torch.randperm(rows.size(0), generator=gen), 0
        batch = rows[order[pos : pos + cfg.batch_size]]
        pos += cfg.batch_size
        loss = lm_loss(model, batch, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            logger.info("step %4d/%d  loss %.3f  lr %.2e  %.0fs", step, cfg.steps, loss.item(),
                        sched.get_last_lr()[0], time.perf_counter() - start)
        if probes and (step + 1) % 100 == 0:
            ppl = {k: round(math.exp(mean_nll(model, *v)), 1) for k, v in probes.items()}
            model.train()
            logger.info("step %4d probe perplexity %s", step + 1, ppl)
    model.eval()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Evaluation and the LoRA sanity check
# ---------------------------------------------------------------------------------------------


def evaluate(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
             general_heldout: Sequence[str] | None, seq_len: int = 128,
             sites_dir: Path = SITES_DIR, max_site_examples: int = 300) -> dict[str, float]:
    """Held-out perplexity on the general corpus (packed) and on each site (per example)."""
    out: dict[str, float] = {}
    if general_heldout:
        out["general"] = math.exp(mean_nll(model, pack(tokenizer, general_heldout, seq_len)))
    for d in site_dirs(sites_dir):
        _, held = load_site(d)
        out[d.name] = math.exp(mean_nll(model, *encode_examples(
            tokenizer, held[:max_site_examples], seq_len)))
    return out


def lora_check(model_dir: Path, site_dir: Path, *, steps: int = 30, batch_size: int = 16,
               lr: float = 3e-3, r: int = 8, seq_len: int = 128, seed: int = 0,
               max_eval: int = 300) -> dict[str, float]:
    """Fine-tune LoRA (q_proj, v_proj) on a site's train split; compare held-out loss.

    Parameters
    ----------
    model_dir : Path
        Checkpoint directory of the base model.
    site_dir : Path
        Site folder holding ``train.jsonl``.
    steps, batch_size, lr, r, seq_len, seed, max_eval
        Fine-tuning settings; ``max_eval`` caps the held-out examples scored.

    Returns
    -------
    dict[str, float]
        ``before`` and ``after`` (nats per token), ``drop`` (fraction of nats removed) and
        ``seconds`` (training time).
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    train, held = load_site(site_dir)
    held_batch = encode_examples(tokenizer, held[:max_eval], seq_len)
    before = mean_nll(base, *held_batch)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss = lm_loss(model, *encode_examples(tokenizer, rng.sample(train, batch_size),
                                               seq_len))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    after = mean_nll(model, *held_batch)
    return {"before": before, "after": after, "drop": 1 - after / before, "seconds": seconds}


def run_checks(
    model_dir: Path, general_heldout: Sequence[str] | None, *,
    min_drop: float = 0.15, sites_dir: Path = SITES_DIR,
) -> tuple[bool, dict[str, float], dict[str, dict[str, float]]]:
    """Evaluate a saved model and run the LoRA sanity check on every site; print a summary."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ppl = evaluate(model, tokenizer, general_heldout, sites_dir=sites_dir)
    limit = len(tokenizer) / 10
    ok = True
    print(f"held-out perplexity (vocab {len(tokenizer)}, site limit {limit:.0f}):")
    for name, v in ppl.items():
        bad = name != "general" and v > limit
        ok &= not bad
        print(f"  {name:<8} {v:8.2f}{'  FAIL' if bad else ''}")
    lora: dict[str, dict[str, float]] = {}
    print("LoRA sanity check (r=8, q_proj+v_proj, lr 3e-3, 30 steps, batch 16):")
    for d in site_dirs(sites_dir):
        res = lora_check(model_dir, d)
        lora[d.name] = res
        bad = res["drop"] < min_drop
        ok &= not bad
        print(f"  {d.name:<8} held-out loss {res['before']:.3f} -> {res['after']:.3f} nats "
              f"({100 * res['drop']:.1f}% lower, {res['seconds']:.0f}s)"
              f"{'  FAIL' if bad else ''}")
    print("acceptance:", "PASS" if ok else "FAIL")
    return ok, ppl, lora


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


def _write_readme(out: Path, cfg: BuildConfig, n_params: int, seconds: float,
                  ppl: dict[str, float], lora: dict[str, dict[str, float]]) -> None:
    size = (out / "model.safetensors").stat().st_size
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in ppl.items())
    lrows = "\n".join(f"| {k} | {v['before']:.3f} | {v['after']:.3f} | {100 * v['drop']:.1f}% |"
                      for k, v in lora.items())
    text = f"""# Embedded default model

A tiny causal language model that ships with Confide so that a site can run with no download:
a `LlamaForCausalLM` ({n_params:,} parameters; hidden {cfg.hidden_size}, {cfg.num_layers}
layers, {cfg.num_heads} heads of {cfg.hidden_size // cfg.num_heads}, MLP {cfg.intermediate_size},
{cfg.max_positions} positions, tied embeddings) with a byte-level BPE tokenizer of
{cfg.vocab_size} tokens (`<|endoftext|>` is bos, eos and pad; any text encodes, no unknowns).
Weights are float16 safetensors ({size / 1e6:.1f} MB); load them in float32:

```python
tok = AutoTokenizer.from_pretrained("client/embedded")
model = AutoModelForCausalLM.from_pretrained("client/embedded", dtype=torch.float32)
```

Attention projections are `q_proj`, `k_proj`, `v_proj`, `o_proj` (LoRA targets).

## How it was made

Everything is seeded. The tokenizer and the model were trained only on the general English
corpus `simulations/data/general/corpus.txt` ({100 * cfg.heldout_fraction:g}% of its documents
held out), never on the demo site data. That corpus is built by
`simulations.generate.general_corpus`: text from our own template grammar plus English prose
from the Python standard library's docstrings (PSF license); see \
`simulations/data/general/README.md`. Pretraining:
{cfg.steps} steps of {cfg.batch_size} packed sequences of {cfg.seq_len} tokens, AdamW (lr
{cfg.lr:g}, betas 0.9/0.95, weight decay {cfg.weight_decay:g}), {cfg.warmup_steps} warmup steps then
cosine decay to {cfg.min_lr_ratio:g}x, label smoothing {cfg.label_smoothing:g}, gradient clip
{cfg.grad_clip:g}; {seconds / 60:.1f} minutes on {cfg.threads} CPU threads.

Rebuild (about as long again, on 2 CPU cores):

```
python -m simulations.generate.make_embedded --out client/embedded
```

Re-run only the checks below on the saved model:

```
python -m simulations.generate.make_embedded --out client/embedded --check-only
```

## Held-out perplexity of the base model

General: packed held-out corpus documents. Sites: 300 held-out examples of each site's
`train.jsonl` (seeded 10% split), encoded as `client.data` does (`text <|endoftext|>`, or
`prompt` + space + `response <|endoftext|>` with loss on the response only). \
Acceptance: every site at most vocab / 10 = {cfg.vocab_size / 10:.0f}.

| data | perplexity |
| --- | --- |
{rows}

## LoRA sanity check

LoRA r=8 (alpha 16) on `q_proj`, `v_proj`, AdamW lr 3e-3, 30 steps of batch 16 on a site's
train split; held-out loss in nats per token. Acceptance: at least 15% lower.

| site | before | after | drop |
| --- | --- | --- | --- |
{lrows}
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def build(out: Path, cfg: BuildConfig, corpus: Path = CORPUS, min_drop: float = 0.15) -> bool:
    """Train tokenizer and model, save them to ``out``, run the checks; return acceptance."""
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    docs = read_corpus(corpus)
    train_docs, held_docs = split_general(docs, cfg.heldout_fraction, cfg.seed)
    logger.info("corpus: %d train / %d held-out documents", len(train_docs), len(held_docs))
    tokenizer = train_tokenizer(train_docs, cfg.vocab_size)
    rows = pack(tokenizer, train_docs, cfg.seq_len)
    logger.info("tokenizer: %d tokens; %d training rows of %d tokens (%.1f chars/token)",
                len(tokenizer), rows.size(0), cfg.seq_len,
                sum(map(len, train_docs)) / rows.numel())
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %d parameters", n_params)
    probes = {"general": (g := pack(tokenizer, held_docs[:64], cfg.seq_len), g,
                          torch.ones_like(g))}
    for d in site_dirs():
        probes[d.name] = encode_examples(tokenizer, load_site(d)[1][:48], cfg.seq_len)
    seconds = pretrain(model, rows, cfg, probes)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    ok, ppl, lora = run_checks(out, held_docs, min_drop=min_drop)
    _write_readme(out, cfg, n_params, seconds, ppl, lora)
    logger.info("saved to %s (pretraining %.0fs)", out, seconds)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 1 when the acceptance checks fail."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT.parent / "client" / "embedded")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--steps", type=int, default=BuildConfig.steps)
    p.add_argument("--vocab-size", type=int, default=BuildConfig.vocab_size)
    p.add_argument("--seed", type=int, default=BuildConfig.seed)
    p.add_argument("--min-lora-drop", type=float, default=0.15,
                   help="fraction of held-out nats the LoRA sanity check must remove")
    p.add_argument("--check-only", action="store_true",
                   help="only evaluate the saved model and run the LoRA sanity check")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = BuildConfig(steps=args.steps, vocab_size=args.vocab_size, seed=args.seed)
    if args.check_only:
        torch.set_num_threads(cfg.threads)
        _, held = split_general(read_corpus(args.corpus), cfg.heldout_fraction, cfg.seed)
        ok = run_checks(args.out, held, min_drop=args.min_lora_drop)[0]
    else:
        ok = build(args.out, cfg, args.corpus, min_drop=args.min_lora_drop)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
