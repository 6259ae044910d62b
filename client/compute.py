"""Where and how a site computes: device, bf16 autocast, gradient checkpointing, 4-bit base.

The site decides (its node config's keys win over the run config's, as for ``device``):

* ``device``: ``auto`` picks CUDA when present, else the CPU.
* ``precision``: ``auto`` is bf16 autocast on a CUDA device that supports bfloat16 and fp32
  otherwise; ``bf16`` asks for it (refused on a CUDA device without bfloat16; on a CPU it
  runs torch's CPU autocast, slower than fp32 on most CPUs); ``fp32`` turns it off. The base
  model runs under autocast; the LoRA layers always run in fp32 (:func:`lora_in_fp32`), so
  Opacus' per-sample gradients, their clipping and the DP noise stay in fp32.
* ``gradient-checkpointing``: recompute each block's activations in the backward pass
  instead of keeping them. Torch's *reentrant* checkpointing only: Opacus' hooks count one
  forward per backward, and non-reentrant checkpointing runs a second, counted forward
  during the backward pass ("Per sample gradient is not initialized"); with reentrant
  checkpointing the first forward runs without grad, and the per-sample gradients are
  bit-identical to a run without it (tests/test_compute.py).
* ``base-quantization``: ``4bit`` loads the frozen base weights as bitsandbytes NF4 (QLoRA);
  CUDA only, refused on a CPU and without bitsandbytes.

Every refusal is a :class:`~protocol.model_ref.ModelError` naming the key and the value.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from protocol.config import BASE_QUANTIZATIONS, DEVICES, PRECISIONS, RunConfig
from protocol.model_ref import ModelError

__all__ = [
    "CHECKPOINT_KWARGS",
    "Compute",
    "apply_precision",
    "autocast_forward",
    "enable_checkpointing",
    "lora_in_fp32",
    "resolve_compute",
    "resolve_device",
    "site_compute",
]


#: torch.utils.checkpoint arguments: reentrant only (Opacus' hooks miscount the second,
#: grad-enabled forward of the non-reentrant variant)
CHECKPOINT_KWARGS: Mapping[str, Any] = {"use_reentrant": True}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise ModelError(f"`device` must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("`device` is 'cuda' but no CUDA device is available")
    return torch.device(device)


@dataclass(frozen=True)
class Compute:
    """A site's resolved compute settings (what :func:`client.model.load_site_model` takes)."""

    device: torch.device
    #: the autocast dtype of the base model's forward pass, ``None`` for fp32
    autocast: torch.dtype | None = None
    gradient_checkpointing: bool = False
    #: ``none`` or ``4bit`` (bitsandbytes NF4 base weights)
    quantization: str = "none"

    def describe(self) -> str:
        """One line for the site's log."""
        precision = "fp32" if self.autocast is None else "bf16 autocast"
        return (f"device {self.device}, {precision}, gradient checkpointing "
                f"{'on' if self.gradient_checkpointing else 'off'}, base weights "
                f"{'4-bit NF4' if self.quantization == '4bit' else 'fp32'}")


def _bf16_on_cuda() -> bool:
    return bool(torch.cuda.is_bf16_supported())


def resolve_compute(*, device: str = "auto", precision: str = "auto",
                    gradient_checkpointing: bool = False,
                    base_quantization: str = "none") -> Compute:
    """Check the settings against this machine and resolve ``auto``; refusals name the key."""
    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise ModelError(f"`precision` must be one of {PRECISIONS}, got {precision!r}")
    if type(gradient_checkpointing) is not bool:
        raise ModelError("`gradient-checkpointing` must be true or false, got "
                         f"{gradient_checkpointing!r}")
    if base_quantization not in BASE_QUANTIZATIONS:
        raise ModelError(f"`base-quantization` must be one of {BASE_QUANTIZATIONS}, got "
                         f"{base_quantization!r}")
    autocast: torch.dtype | None = None
    if precision == "auto":
        autocast = torch.bfloat16 if dev.type == "cuda" and _bf16_on_cuda() else None
    elif precision == "bf16":
        if dev.type == "cuda" and not _bf16_on_cuda():
            raise ModelError(f"`precision` is 'bf16' but the CUDA device "
                             f"{torch.cuda.get_device_name(dev)!r} does not support bfloat16; "
                             "use 'fp32' or 'auto'")
        autocast = torch.bfloat16
    if base_quantization == "4bit":
        if dev.type != "cuda":
            raise ModelError(f"`base-quantization` is '4bit' but the device is {dev.type}: "
                             "4-bit base weights (bitsandbytes NF4, QLoRA) need CUDA; use "
                             "'none' on this machine")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("`base-quantization` is '4bit' but the bitsandbytes package is "
                             "not installed (`pip install bitsandbytes`); or use 'none'")
    return Compute(dev, autocast, gradient_checkpointing, base_quantization)


def site_compute(cfg: RunConfig, node_config: Mapping[str, Any]) -> Compute:
    """Resolve a site's compute settings: its node config's keys over the run config's."""
    def pick(key: str, default: Any) -> Any:
        return node_config[key] if key in node_config else default

    return resolve_compute(
        device=str(pick("device", cfg.device)),
        precision=str(pick("precision", cfg.precision)),
        gradient_checkpointing=pick("gradient-checkpointing", cfg.gradient_checkpointing),
        base_quantization=str(pick("base-quantization", cfg.base_quantization)),
    )


def autocast_forward(model: torch.nn.Module, *, device_type: str, dtype: torch.dtype) -> None:
    """Run ``model``'s forward pass under ``torch.autocast`` (the pattern of accelerate).

    The wrapper is set on the instance, so it also holds under Opacus' ``GradSampleModule``,
    which calls the wrapped module. Callers take ``.float()`` of the logits for the loss.
    """
    forward = model.forward

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = run


def _to_fp32(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)


def lora_in_fp32(model: torch.nn.Module, *, device_type: str) -> int:
    """Keep every LoRA A/B layer of a PEFT model in fp32 under autocast; return how many.

    A forward pre-hook casts the layer's input to fp32 (Opacus' forward hook, registered
    later, then records that input), and the layer runs with autocast off, so its output,
    the gradient flowing back into it and its per-sample gradients are fp32.
    """
    from peft.tuners.lora import LoraLayer

    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for holder in (module.lora_A, module.lora_B):
            for layer in holder.values():
                layer.register_forward_pre_hook(_to_fp32)
                forward = layer.forward

                def run(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
                    with torch.autocast(device_type, enabled=False):
                        return _forward(*args, **kwargs)

                layer.forward = run
                count += 1
    return count


def enable_checkpointing(base: Any) -> None:
    """Turn on reentrant gradient checkpointing of a transformers model (before PEFT wraps it).

    Refused with an error naming ``gradient-checkpointing`` for a model class without it.
    """
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ModelError(f"`gradient-checkpointing` is true but {type(base).__name__} does not "
                         "support it; set it to false")
    kwargs = dict(CHECKPOINT_KWARGS)
    enable = getattr(base, "activation_checkpointing_enable", None)  # the newer name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.enable_input_require_grads()  # a reentrant checkpoint needs an input that needs grad


def apply_precision(model: torch.nn.Module, compute: Compute) -> None:
    """Put a PEFT model under ``compute``'s autocast, its LoRA layers in fp32 (no-op for fp32)."""
    if compute.autocast is None:
        return
    lora_in_fp32(model, device_type=compute.device.type)
    autocast_forward(model, device_type=compute.device.type, dtype=compute.autocast)
