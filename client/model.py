"""Base model and LoRA adapter at a site: resolve, load once, apply the global adapter."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from client.compute import (
    CHECKPOINT_KWARGS,
    Compute,
    apply_precision,
    enable_checkpointing,
    resolve_device,
)
from protocol.adapter import AdapterError, check_state, is_lora_a, lora_config
from protocol.model_ref import EMBEDDED, ModelError, embedded_model_dir, resolve_model

__all__ = [
    "EMBEDDED",
    "Compute",
    "ModelError",
    "SiteModel",
    "embedded_model_dir",
    "get_adapter_state",
    "load_site_model",
    "resolve_device",
    "resolve_model",
    "set_adapter_state",
]

logger = logging.getLogger(__name__)


@dataclass
class SiteModel:
    """A base model with the run's LoRA adapter injected, plus its tokenizer."""

    model: Any
    tokenizer: Any
    device: torch.device
    shapes: dict[str, tuple[int, ...]]
    model_ref: str
    #: how it was loaded and runs (precision, checkpointing, quantisation)
    compute: Compute | None = None


def _base_model(model_ref: str, compute: Compute) -> Any:
    """Load the base model as ``compute`` says: fp32, or 4-bit NF4 on CUDA; checkpointing."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if compute.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        bnb_config: Any = BitsAndBytesConfig  # untyped upstream
        kwargs["quantization_config"] = bnb_config(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute.autocast or torch.float32)
        index = compute.device.index
        kwargs["device_map"] = {"": torch.cuda.current_device() if index is None else index}
    base: Any = AutoModelForCausalLM.from_pretrained(model_ref, **kwargs)
    base.config.use_cache = False
    if compute.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        prepare: Any = prepare_model_for_kbit_training  # untyped upstream
        base = prepare(base, use_gradient_checkpointing=compute.gradient_checkpointing,
                       gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    elif compute.gradient_checkpointing:
        enable_checkpointing(base)
    return base


@lru_cache(maxsize=2)
def _load_cached(
    model_ref: str, compute: Compute, r: int, alpha: int, dropout: float,
    targets: tuple[str, ...],
) -> SiteModel:
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 1 << 30  # sites truncate to `max-seq-len` themselves
    base = _base_model(model_ref, compute)
    cfg = lora_config(
        r=r, alpha=alpha, dropout=dropout, target_modules=list(targets), base_model=model_ref
    )
    model = get_peft_model(base, cfg)
    if compute.quantization == "none":  # a 4-bit model is placed by `device_map`
        model = model.to(compute.device)
    apply_precision(model, compute)
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    logger.info("loaded %s with LoRA r=%d (%d adapter tensors): %s", model_ref, r, len(shapes),
                compute.describe())
    return SiteModel(model, tokenizer, compute.device, shapes, model_ref, compute)


def load_site_model(
    model_ref: str, *, device: torch.device | None = None, compute: Compute | None = None,
    r: int, alpha: int, dropout: float, target_modules: list[str],
) -> SiteModel:
    """Load (once per process) the base model with the LoRA adapter injected.

    Give ``device`` (fp32, no checkpointing) or a resolved ``compute``
    (:func:`client.compute.site_compute`), not both.
    """
    if (device is None) == (compute is None):
        raise TypeError("load_site_model takes exactly one of `device` and `compute`")
    if compute is None:
        assert device is not None
        compute = Compute(torch.device(device))
    try:
        return _load_cached(model_ref, compute, r, alpha, float(dropout), tuple(target_modules))
    except ModelError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {model_ref!r}: {exc}") from exc


def set_adapter_state(
    site: SiteModel, state: Mapping[str, np.ndarray], *, aggregation: str
) -> None:
    """Load the global adapter into the model and set which tensors train.

    The result of ``set_peft_model_state_dict`` is checked: a missing or unexpected
    adapter key is an error. In ``frozen-a`` mode the A matrices are frozen.
    """
    from peft import set_peft_model_state_dict

    check_state(state, site.shapes, what="global adapter")
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    result = set_peft_model_state_dict(site.model, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        raise AdapterError(
            f"adapter did not load cleanly: unexpected={unexpected[:5]} missing={missing[:5]}"
        )
    for name, param in site.model.named_parameters():
        if "lora_" not in name:
            param.requires_grad_(False)
        elif aggregation == "frozen-a" and is_lora_a(name):
            param.requires_grad_(False)
        else:
            param.requires_grad_(True)


def get_adapter_state(site: SiteModel) -> dict[str, np.ndarray]:
    """Return the adapter tensors as float32 numpy arrays (``get_peft_model_state_dict`` names)."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().to("cpu", torch.float32).numpy().copy()
        for k, v in get_peft_model_state_dict(site.model).items()
    }
