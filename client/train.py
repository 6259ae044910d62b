"""Local training and evaluation of the LoRA parameters at a site."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from client.data import IGNORE_INDEX, TokenizedExample, collate

__all__ = ["EvalResult", "TrainResult", "dp_train", "evaluate", "sequence_loss", "train_steps"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a round of local training did."""

    steps: int
    mean_loss: float
    examples_seen: int


@dataclass(frozen=True)
class EvalResult:
    """Held-out loss (mean NLL per predicted token, nats) over a site's held-out split."""

    loss: float
    num_tokens: int
    num_examples: int

    @property
    def perplexity(self) -> float:
        """Held-out perplexity, ``exp(loss)`` with the loss capped at 50 nats."""
        return math.exp(min(self.loss, 50.0))


def sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence causal-LM loss, shape ``(batch,)``: the same loss DP-SGD makes private.

    Each sequence is one unit (the privacy unit under DP-SGD); positions labelled ``-100``
    (padding, prompt tokens) carry no loss. See :func:`privacy.dp_sgd.sequence_losses`.
    """
    from privacy.dp_sgd import sequence_losses

    return sequence_losses(logits, labels)


def _batches(
    data: Sequence[TokenizedExample], batch_size: int, generator: torch.Generator
) -> Any:
    while True:
        order = torch.randperm(len(data), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1,
                           batch_size):
            yield [data[i] for i in order[start:start + batch_size]]


def train_steps(
    model: Any,
    data: Sequence[TokenizedExample],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    pad_id: int,
    device: torch.device,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Non-private local training: ``steps`` AdamW steps on shuffled mini-batches."""
    if not data:
        raise ValueError("no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    seen = 0
    it = _batches(data, min(batch_size, len(data)), gen)
    for step in range(steps):
        batch = collate(next(it), pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = sequence_loss(out.logits, batch["labels"]).mean()
        optimizer.zero_grad(set_to_none=True)
        # torch leaves Tensor.backward unannotated; called with no arguments it returns None
        cast(Callable[[], None], loss.backward)()
        optimizer.step()
        losses.append(float(loss.detach()))
        seen += batch["input_ids"].shape[0]
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return TrainResult(steps=steps, mean_loss=sum(losses) / len(losses), examples_seen=seen)


@torch.no_grad()
def evaluate(
    model: Any,
    data: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
) -> EvalResult:
    """Token-weighted mean NLL over ``data``."""
    if not data:
        raise ValueError("no held-out examples")
    model.eval()
    total, tokens = 0.0, 0
    ordered = sorted(data, key=lambda ex: len(ex.input_ids))  # less padding
    for start in range(0, len(ordered), batch_size):
        batch = collate(ordered[start:start + batch_size], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1, :].float()
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        total += float(nll)
        tokens += int((labels != IGNORE_INDEX).sum())
    return EvalResult(loss=total / max(tokens, 1), num_tokens=tokens, num_examples=len(data))


def dp_train(
    site_model: Any,
    data: Any,
    *,
    plan: Any,
    policy: Any,
    learning_rate: float,
    pad_id: int,
    seed: int | None,
) -> float:
    """DP-SGD (Opacus) on the LoRA parameters for ``plan.steps`` Poisson-sampled steps.

    ``plan`` (a :class:`privacy.budget.RoundPlan`) fixes q, σ, C and the steps; ``policy``
    chooses the per-sample-gradient mode. ``seed`` chooses the noise source: ``None`` draws
    the Poisson coins and the Gaussian noise from the OS CSPRNG (secure mode); an int seeds
    a generator for both (a site passes its secret round seed from
    :func:`privacy.noise_source.round_seed`, never anything the coordinator knows).
    Returns the mean batch loss.
    """
    from privacy.dp_sgd import dp_train_steps, make_private

    model = site_model.model
    model.train()  # Opacus validates a model in training mode
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    secure = seed is None
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    private = make_private(
        model, optimizer, data.train, sample_rate=plan.sample_rate,
        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
        grad_sample_mode=policy.grad_sample_mode, secure_mode=secure,
        generator=generator, collate_fn=lambda batch: collate(batch, pad_id),
    )
    try:
        mean_loss = dp_train_steps(private, steps=plan.steps)
    finally:
        private.close()
    model.eval()
    return float(mean_loss)
