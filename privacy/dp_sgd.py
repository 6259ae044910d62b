"""DP-SGD on the LoRA parameters of a causal LM with Opacus: clipping, noise, Poisson sampling.

:func:`make_private` wires Opacus' per-sample-gradient module, DP optimizer and a Poisson
sampler onto a PEFT model whose trainable parameters are exactly the LoRA ones. It does not
use ``PrivacyEngine.make_private``: the engine derives the sample rate from
``1 / len(loader)`` (a rounded value the accountant then trusts) and keeps an accountant that
resets with each new engine. Here the sample rate is the one given (q = expected batch /
examples), the sampler draws with exactly that q, the optimizer averages over exactly
``q * n``, and the site's ledger (not an engine) does the accounting.

Privacy unit: one sequence. The loss is the mean NLL over a sequence's labelled tokens
(labels ``-100`` are ignored), then the mean over the batch, so Opacus' per-sample
gradients are per-sequence gradients.

Order of calls at a site, per round::

    model.to(device)                      # before building the optimizer (opacus#820)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr)
    private = make_private(model, optimizer, data, sample_rate=plan.sample_rate,
                           noise_multiplier=plan.noise_multiplier,
                           max_grad_norm=plan.max_grad_norm, collate_fn=collate)
    mean_loss = dp_train_steps(private, steps=plan.steps)
    private.close()                       # hooks off; `model` is the plain model again
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privacy.policy import (
    GRAD_SAMPLE_MODES,
    PolicyError,
    check_noise_multiplier,
    check_sample_rate,
)

__all__ = [
    "IGNORE_INDEX",
    "PoissonSampler",
    "PrivateTraining",
    "dp_train_steps",
    "make_private",
    "secure_gaussian",
    "sequence_losses",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
Batch = Mapping[str, torch.Tensor]


def sequence_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence causal-LM loss, shape ``(batch,)``.

    Position ``t`` predicts ``labels[:, t + 1]``; each sequence's loss is the mean NLL over
    its labelled (``!= -100``) targets, 0 for a sequence with none.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).to(nll.dtype)
    return (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def secure_gaussian(std: float, reference: torch.Tensor) -> torch.Tensor:
    """Gaussian noise N(0, std²) shaped like ``reference``, from the OS CSPRNG.

    Box-Muller over 53-bit uniforms from ``os.urandom``, and, as Opacus' secure mode does
    against floating-point attacks (arXiv 2107.10138, Sec. 5.1), the sum of 4 draws / 2.
    """
    if std == 0.0:
        return torch.zeros_like(reference)
    n = reference.numel()
    words = np.frombuffer(os.urandom(8 * 4 * n), dtype=np.uint64)
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
    radius = np.sqrt(-2.0 * np.log(u[: 2 * n]))
    angle = 2.0 * math.pi * u[2 * n:]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    noise = normals.reshape(4, n).sum(axis=0) * (std / 2.0)
    return torch.from_numpy(noise).to(device=reference.device,
                                      dtype=reference.dtype).view_as(reference)


def _secure_add_noise(opt: Any) -> None:
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    for p in opt.params:
        _check_processed_flag(p.summed_grad)
        noise = secure_gaussian(opt.noise_multiplier * opt.max_grad_norm, p.summed_grad)
        p.grad = (p.summed_grad + noise).view_as(p)
        _mark_as_processed(p.summed_grad)


class PoissonSampler:
    """Index batches with each example drawn independently with probability ``sample_rate``.

    Batch sizes vary and may be 0. With ``secure=True`` the coins come from ``os.urandom``;
    otherwise from ``generator`` (a ``torch.Generator``, or torch's global RNG).
    """

    def __init__(self, num_examples: int, *, sample_rate: float, secure: bool = False,
                 generator: torch.Generator | None = None) -> None:
        if type(num_examples) is not int or num_examples < 1:
            raise PolicyError(f"`num_examples` must be an int >= 1, got {num_examples!r}")
        self.num_examples = num_examples
        self.sample_rate = check_sample_rate(sample_rate)
        self.secure = secure
        self.generator = generator

    def draw(self) -> list[int]:
        """One Poisson batch of example indices."""
        if self.secure:
            words = np.frombuffer(os.urandom(8 * self.num_examples), dtype=np.uint64)
            coins = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
            picked: list[int] = np.flatnonzero(coins < self.sample_rate).tolist()
            return picked
        u = torch.rand(self.num_examples, generator=self.generator)
        chosen: list[int] = torch.nonzero(u < self.sample_rate).view(-1).tolist()
        return chosen

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.draw()


def _noise_generator(generator: torch.Generator | None,
                     device: torch.device) -> torch.Generator | None:
    """Return a noise generator on the parameters' device, seeded from ``generator``."""
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _tensor_data(data: Any) -> tuple[int, Callable[[list[int]], Batch]] | None:
    """Tensors (mapping or (input_ids, attention_mask, labels) tuple): n and a batch fn."""
    if isinstance(data, Mapping):
        tensors = dict(data)
    elif isinstance(data, (tuple, list)) and data and all(
            isinstance(t, torch.Tensor) for t in data):
        if len(data) not in (1, 2, 3):
            raise ValueError("tensor data must be (input_ids[, attention_mask[, labels]])")
        tensors = dict(zip(("input_ids", "attention_mask", "labels"), data, strict=False))
    else:
        return None
    if "input_ids" not in tensors:
        raise ValueError("tensor data needs `input_ids`")
    n = int(tensors["input_ids"].shape[0])
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.shape[0] != n:
            raise ValueError(f"tensor data `{key}` must be a tensor with {n} rows")
    if "attention_mask" not in tensors:
        tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
    if "labels" not in tensors:
        tensors["labels"] = tensors["input_ids"].masked_fill(
            tensors["attention_mask"] == 0, IGNORE_INDEX)

    def batch(idx: list[int]) -> Batch:
        index = torch.tensor(idx, dtype=torch.long)
        return {k: t.index_select(0, index.to(t.device)) for k, t in tensors.items()}

    return n, batch


@dataclass
class PrivateTraining:
    """What a DP training loop needs; build it with :func:`make_private`.

    Attributes
    ----------
    module : opacus GradSampleModule
        The model wrapped for per-sample gradients (``hooks``) or norms (``ghost``).
    optimizer : opacus DPOptimizer
        Clips per sequence to ``max_grad_norm``, adds N(0, (σ C)²), divides by ``q n``.
    sampler : PoissonSampler
        Draws the batches (rate ``sample_rate``).
    """

    module: Any
    optimizer: Any
    sampler: PoissonSampler
    make_batch: Callable[[list[int]], Batch]
    grad_sample_mode: str
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    num_examples: int
    device: torch.device
    steps_taken: int = 0
    examples_seen: int = 0
    _closed: bool = field(default=False, repr=False)

    @property
    def expected_batch_size(self) -> float:
        """``q n``, the divisor of the noisy gradient sum."""
        return self.sample_rate * self.num_examples

    @property
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters DP-SGD updates (the LoRA ones)."""
        return list(self.optimizer.params)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> Any:
        """Return the per-sequence-private loss to call ``.backward()`` on.

        ``hooks``: mean over the batch of :func:`sequence_losses`. ``ghost``: Opacus'
        ``DPTensorFastGradientClipping`` over the same per-sequence losses (its
        ``backward`` runs the two passes of ghost clipping).
        """
        per_seq = sequence_losses(logits, labels)
        if self.grad_sample_mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            return DPTensorFastGradientClipping(self.module, self.optimizer, per_seq, "mean")
        return per_seq.mean()

    def step(self, indices: list[int]) -> float | None:
        """One DP-SGD step on the examples ``indices`` (may be empty); returns the loss.

        An empty Poisson batch still takes a step: the update is the noise alone, as the
        mechanism the accountant assumes (skipping it would reveal the batch was empty).
        """
        if self._closed:
            raise RuntimeError("this PrivateTraining was closed")
        self.optimizer.zero_grad(set_to_none=True)
        loss_value: float | None = None
        if indices:
            batch = {k: v.to(self.device, non_blocking=True)
                     for k, v in self.make_batch(indices).items()}
            out = self.module(input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"])
            logits = out.logits if hasattr(out, "logits") else out[0]
            loss = self.loss(logits, batch["labels"])
            with warnings.catch_warnings():
                # The first LoRA layer's input needs no grad (frozen embeddings below it);
                # torch warns that its full backward hook sees only output grads, which is
                # all Opacus uses.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            loss_value = float(loss.detach())
            self.examples_seen += len(indices)
        else:
            for p in self.trainable_parameters:
                if self.grad_sample_mode == "ghost":
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros(  # type: ignore[attr-defined]
                        (0, *p.shape), dtype=p.dtype, device=p.device)
        self.optimizer.step()
        self.steps_taken += 1
        return loss_value

    def close(self) -> nn.Module:
        """Remove Opacus' hooks and attributes; return the plain (trained) model."""
        if not self._closed:
            self.optimizer.zero_grad(set_to_none=True)
            self._closed = True
            return self.module.to_standard_module()  # type: ignore[no-any-return]
        return self.module._module  # type: ignore[no-any-return]


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Any,
    *,
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    secure_mode: bool = False,
    generator: torch.Generator | None = None,
    collate_fn: Callable[[list[Any]], Batch] | None = None,
) -> PrivateTraining:
    """Wire Opacus DP-SGD onto a PEFT LoRA model.

    Parameters
    ----------
    model : nn.Module
        A causal LM (e.g. a PEFT model) already on its device, whose trainable
        (``requires_grad``) parameters are the LoRA ones; only those get per-sample grads.
        It must return ``.logits`` for ``model(input_ids=..., attention_mask=...)``.
    optimizer : torch.optim.Optimizer
        Over exactly the trainable parameters.
    data : mapping / tuple of tensors, or sequence of examples
        Tensors ``input_ids`` [, ``attention_mask`` [, ``labels``]] with one row per
        sequence (labels ``-100`` where no loss is taken), or any sequence of examples
        together with ``collate_fn`` (list of examples -> mapping of those tensors).
    sample_rate : float
        Poisson sampling probability q = expected batch / examples, in (0, 1].
    noise_multiplier : float
        σ; the noise std is σ C on the sum of clipped per-sequence gradients.
    max_grad_norm : float
        C, the per-sequence L2 clipping bound over all trainable parameters.
    grad_sample_mode : {"hooks", "ghost"}
        ``hooks``: per-sample gradients materialised; ``ghost``: ghost clipping.
    secure_mode : bool
        Sampling coins and noise from ``os.urandom`` (see :func:`secure_gaussian`);
        ``generator`` must then be ``None``.
    generator : torch.Generator, optional
        Seeds Poisson sampling and noise (tests, simulations); refused in secure mode.
        On CUDA the noise uses a CUDA generator seeded from it.
    collate_fn : callable, optional
        Needed when ``data`` is a sequence of examples.
    """
    from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.validators import ModuleValidator

    q = check_sample_rate(sample_rate)
    sigma = check_noise_multiplier(noise_multiplier)
    if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)) or not (
            0.0 < max_grad_norm < math.inf):
        raise PolicyError(f"`max_grad_norm` must be > 0 and finite, got {max_grad_norm!r}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise PolicyError(f"`grad_sample_mode` must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
                          f"got {grad_sample_mode!r}")
    if secure_mode and generator is not None:
        raise PolicyError("`generator` must be None in secure mode (noise comes from the OS)")

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    devices = {p.device for p in trainable}
    if len(devices) != 1:
        raise ValueError(f"trainable parameters span devices {sorted(map(str, devices))}; "
                         "move the model to one device before make_private (opacus#820)")
    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    if {id(p) for p in opt_params} != {id(p) for p in trainable}:
        raise ValueError("the optimizer must hold exactly the model's trainable parameters "
                         "(build it after moving the model to its device)")
    if any(hasattr(p, "_forward_counter") for p in trainable):
        raise ValueError("the model is still wrapped by an open PrivateTraining; close() it "
                         "before wrapping it again (hooks would be doubled)")
    ModuleValidator.validate(model, strict=True)

    tensor_data = _tensor_data(data)
    if tensor_data is not None:
        n, make_batch = tensor_data
    else:
        if collate_fn is None:
            raise ValueError("`collate_fn` is required when `data` is a sequence of examples")
        examples: Sequence[Any] = data
        n = len(examples)

        def make_batch(idx: list[int]) -> Batch:
            return collate_fn([examples[i] for i in idx])

    device = next(iter(devices))
    expected_batch = q * n
    common: dict[str, Any] = dict(
        noise_multiplier=sigma, max_grad_norm=float(max_grad_norm),
        expected_batch_size=expected_batch, loss_reduction="mean",
        generator=None if secure_mode else _noise_generator(generator, device),
        secure_mode=secure_mode,
    )
    if grad_sample_mode == "ghost":
        module: Any = GradSampleModuleFastGradientClipping(
            model, batch_first=True, loss_reduction="mean", max_grad_norm=float(max_grad_norm),
            use_ghost_clipping=True)
        dp_opt: Any = DPOptimizerFastGradientClipping(optimizer, **common)
    else:
        module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        dp_opt = DPOptimizer(optimizer, **common)
    if secure_mode:
        dp_opt.add_noise = lambda: _secure_add_noise(dp_opt)
    sampler = PoissonSampler(n, sample_rate=q, secure=secure_mode, generator=generator)
    logger.info(
        "DP-SGD on %d trainable tensors (%d params): q=%.4g (expected batch %.1f of %d), "
        "sigma=%.4g, C=%g, mode=%s, secure=%s", len(trainable),
        sum(p.numel() for p in trainable), q, expected_batch, n, sigma, max_grad_norm,
        grad_sample_mode, secure_mode)
    return PrivateTraining(
        module=module, optimizer=dp_opt, sampler=sampler, make_batch=make_batch,
        grad_sample_mode=grad_sample_mode, sample_rate=q, noise_multiplier=sigma,
        max_grad_norm=float(max_grad_norm), num_examples=n, device=device,
    )


def dp_train_steps(
    private: PrivateTraining,
    *,
    steps: int,
    on_step: Callable[[int, float | None], None] | None = None,
) -> float:
    """Run ``steps`` DP-SGD steps on fresh Poisson batches; return the mean batch loss.

    Empty batches take a noise-only step and add no loss. The mean is over non-empty
    batches (``nan`` if all were empty). The model is left in ``train`` mode.
    """
    if type(steps) is not int or steps < 1:
        raise PolicyError(f"`steps` must be an int >= 1, got {steps!r}")
    private.module.train()
    losses: list[float] = []
    for i in range(steps):
        loss = private.step(private.sampler.draw())
        if loss is not None:
            losses.append(loss)
        if on_step is not None:
            on_step(i, loss)
    empty = steps - len(losses)
    if empty:
        logger.debug("%d of %d Poisson batches were empty", empty, steps)
    return sum(losses) / len(losses) if losses else math.nan
