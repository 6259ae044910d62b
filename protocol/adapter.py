"""The LoRA adapter as it crosses the wire and lands on disk.

Only adapter tensors (``peft.get_peft_model_state_dict`` names, float32 numpy arrays) are
exchanged. In ``frozen-a`` mode every ``lora_A`` matrix is derived from a seed all parties
share, so sites train and send only ``lora_B``; averaging B is then exactly averaging the
products B·A (FFA-LoRA).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from protocol.io import replace_dir

__all__ = [
    "AUTO_TARGETS",
    "DEFAULT_TARGET_MODULES",
    "AdapterError",
    "adapter_shapes",
    "check_state",
    "default_target_modules",
    "initial_adapter_state",
    "is_lora_a",
    "load_adapter_dir",
    "lora_config",
    "resolve_target_modules",
    "save_adapter_dir",
    "trainable_keys",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(ValueError):
    """An adapter state does not match the expected names, shapes or dtypes."""


def is_lora_a(name: str) -> bool:
    """Tell whether ``name`` is a LoRA down-projection (``lora_A``) tensor."""
    return ".lora_A." in name or name.endswith(".lora_A")


def trainable_keys(names: Sequence[str], aggregation: str) -> list[str]:
    """Names a site trains and uploads.

    All of them for ``fedavg``; only the B matrices for ``frozen-a``.
    """
    if aggregation == "fedavg":
        return sorted(names)
    if aggregation == "frozen-a":
        return sorted(n for n in names if not is_lora_a(n))
    raise AdapterError(f"`aggregation` must be 'fedavg' or 'frozen-a', got {aggregation!r}")


def _seeded_rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"confide-lora-a|{seed}|{name}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def initial_adapter_state(
    shapes: Mapping[str, tuple[int, ...]], *, seed: int
) -> dict[str, np.ndarray]:
    """Build the starting adapter: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from ``seed``, B = 0.

    The bound is the one PEFT's default (Kaiming-uniform, a=sqrt(5)) uses; each A matrix
    gets its own stream keyed by ``(seed, name)``, so any party can re-derive it from the
    shapes alone, on any device.
    """
    state: dict[str, np.ndarray] = {}
    for name in sorted(shapes):
        shape = tuple(int(d) for d in shapes[name])
        if is_lora_a(name):
            bound = 1.0 / np.sqrt(shape[-1])
            state[name] = _seeded_rng(seed, name).uniform(-bound, bound, size=shape).astype(
                np.float32
            )
        else:
            state[name] = np.zeros(shape, dtype=np.float32)
    return state


def check_state(
    state: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    *,
    what: str = "adapter",
) -> None:
    """Refuse a state whose names, shapes or dtypes differ from ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise AdapterError(
            f"{what} is missing tensors: {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    if unexpected:
        raise AdapterError(
            f"{what} has unexpected tensors: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, arr in state.items():
        if tuple(arr.shape) != tuple(expected[name]):
            raise AdapterError(
                f"{what} tensor {name!r} has shape {tuple(arr.shape)}, "
                f"expected {tuple(expected[name])}"
            )
        if arr.dtype != np.float32:
            raise AdapterError(f"{what} tensor {name!r} has dtype {arr.dtype}, expected float32")
        if not np.all(np.isfinite(arr)):
            raise AdapterError(f"{what} tensor {name!r} contains NaN or infinity")


AUTO_TARGETS = "auto"

# model_type -> the attention projections LoRA adapts by default (query and value, or the
# fused qkv projection where the architecture has one). Owned here rather than taken from
# PEFT's table so that the coordinator and the sites agree whatever PEFT version each runs.
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
         "gemma2", "gemma3_text", "olmo", "olmo2", "granite", "cohere", "stablelm", "starcoder2",
         "smollm3", "phi", "opt", "gptj", "gpt_neo"),
        ("q_proj", "v_proj")),
    **dict.fromkeys(("phi3", "codegen"), ("qkv_proj",)),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), ("c_attn",)),
    **dict.fromkeys(("gpt_neox", "bloom", "falcon"), ("query_key_value",)),
    "mpt": ("Wqkv",),
}
# architectures whose projections are transformers' Conv1D (weights stored transposed)
_CONV1D_MODEL_TYPES = frozenset({"gpt2", "gpt_bigcode"})


def default_target_modules(model_type: str) -> list[str]:
    """LoRA target modules for a ``config.model_type``; an unknown type is an error."""
    try:
        return list(DEFAULT_TARGET_MODULES[model_type])
    except KeyError:
        raise AdapterError(
            f"no default LoRA target modules for model_type {model_type!r}; set "
            "`lora-target-modules` to a comma-separated list of module names"
        ) from None


def _model_type(base_model: str) -> str:
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(base_model).model_type)


def resolve_target_modules(target_modules: Sequence[str], base_model: str) -> list[str]:
    """``["auto"]`` -> the defaults for ``base_model``'s architecture; a list is kept as given.

    The coordinator (adapter manifest) and every site (the model they train) call this
    through :func:`lora_config`, so they resolve ``auto`` the same way.
    """
    return _resolve(target_modules, base_model)[0]


def _resolve(target_modules: Sequence[str], base_model: str) -> tuple[list[str], str | None]:
    """Return ``(targets, model_type)``; the model type is read only for ``auto``."""
    targets = list(target_modules)
    if AUTO_TARGETS not in targets:
        return targets, None
    if targets != [AUTO_TARGETS]:
        raise AdapterError(f"`lora-target-modules` is 'auto' or a list of names, got {targets}")
    model_type = _model_type(base_model)
    return default_target_modules(model_type), model_type


def lora_config(
    *, r: int, alpha: int, dropout: float, target_modules: Sequence[str], base_model: str
) -> Any:
    """Build the ``peft.LoraConfig`` every party derives from the run configuration.

    ``target_modules`` may be ``["auto"]``: the defaults for ``base_model``'s
    ``model_type`` (:data:`DEFAULT_TARGET_MODULES`), which reads its ``config.json``.
    """
    from peft import LoraConfig, TaskType

    targets, model_type = _resolve(target_modules, base_model)
    # PEFT flips this itself for Conv1D with a warning; set it so adapter_config.json is right
    fan_in_fan_out = model_type in _CONV1D_MODEL_TYPES
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        task_type=TaskType.CAUSAL_LM,
        base_model_name_or_path=base_model,
        bias="none",
    )


def adapter_shapes(model_ref: str, config: Any) -> dict[str, tuple[int, ...]]:
    """Adapter tensor names and shapes for a base model, without loading its weights.

    The model is instantiated on the ``meta`` device from its configuration only.
    """
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(model_ref)
    # transformers leaves `from_config` unannotated; it returns a PreTrainedModel
    from_config = cast(Callable[..., Any], AutoModelForCausalLM.from_config)
    with torch.device("meta"):
        base = from_config(model_config)
    peft_model = get_peft_model(base, config)
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}


def save_adapter_dir(
    path: str | os.PathLike[str], state: Mapping[str, np.ndarray], config: Any
) -> None:
    """Write a PEFT adapter directory (loads with ``PeftModel.from_pretrained``) atomically.

    The files go to a temporary sibling directory that replaces ``path`` in one rename.
    """
    import torch
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        config.save_pretrained(str(tmp))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sorted(state.items())}
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_adapter_dir(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read an adapter directory back: ``(state, adapter_config.json contents)``."""
    from safetensors.numpy import load_file

    p = Path(path)
    if not (p / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(f"no {ADAPTER_WEIGHTS} in adapter directory {p}")
    state = {k: v.astype(np.float32) for k, v in load_file(str(p / ADAPTER_WEIGHTS)).items()}
    cfg = json.loads((p / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return state, cfg
