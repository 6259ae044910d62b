"""Base model and LoRA adapter at a site: resolve, load once, apply the global adapter."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from protocol.adapter import AdapterError, check_state, is_lora_a, lora_config
from protocol.model_ref import EMBEDDED, ModelError, embedded_model_dir, resolve_model

__all__ = [
    "EMBEDDED",
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

def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("`device` is 'cuda' but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"`device` must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


@dataclass
class SiteModel:
    """A base model with the run's LoRA adapter injected, plus its tokenizer."""

    model: Any
    tokenizer: Any
    device: torch.device
    shapes: dict[str, tuple[int, ...]]
    model_ref: str


@lru_cache(maxsize=2)
def _load_cached(
    model_ref: str, device: str, r: int, alpha: int, dropout: float, targets: tuple[str, ...]
) -> SiteModel:
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = 1 << 30  # sites truncate to `max-seq-len` themselves
    base = AutoModelForCausalLM.from_pretrained(model_ref, dtype=torch.float32)
    base.config.use_cache = False
    cfg = lora_config(
        r=r, alpha=alpha, dropout=dropout, target_modules=list(targets), base_model=model_ref
    )
    model = get_peft_model(base, cfg).to(torch.device(device))
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    logger.info("loaded %s with LoRA r=%d on %s (%d adapter tensors)", model_ref, r, device,
                len(shapes))
    return SiteModel(model, tokenizer, torch.device(device), shapes, model_ref)


def load_site_model(
    model_ref: str, *, device: torch.device, r: int, alpha: int, dropout: float,
    target_modules: list[str],
) -> SiteModel:
    """Load (once per process) the base model with the LoRA adapter injected."""
    try:
        return _load_cached(model_ref, str(device), r, alpha, float(dropout),
                            tuple(target_modules))
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
