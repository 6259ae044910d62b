"""Argument types of ``confide simulate``'s flags: each error names the flag and value.

argparse reports a refused value as ``confide simulate: error: argument FLAG: MESSAGE`` and
exits with status 2 (:data:`protocol.console.EXIT_BAD_INPUT`). The compute flags
(``--device``, ``--precision``, ``--gradient-checkpointing``, ``--base-quantization``) are
added and checked against this machine here too (:func:`add_compute_args`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from protocol.config import BASE_QUANTIZATIONS, DEVICES, PRECISIONS
from protocol.console import UsageError

__all__ = ["add_compute_args", "compute_overrides", "int_at_least", "number", "positive_float",
           "positive_int"]


def int_at_least(flag: str, minimum: int) -> Callable[[str], int]:
    """Build the argument type of an integer ``>= minimum`` (``> 0`` for a minimum of 1)."""
    rule = "> 0" if minimum == 1 else f">= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be {rule}, got {value}")
        return value
    return parse


def positive_int(flag: str) -> Callable[[str], int]:
    """Build the argument type of an integer ``> 0``."""
    return int_at_least(flag, 1)


def number(flag: str, *, minimum: float, strict: bool) -> Callable[[str], float]:
    """Build the argument type of a finite number ``> minimum`` (``strict``) or ``>= minimum``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            rule = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"{flag} must be {rule}, got {text}")
        return value
    return parse


def positive_float(flag: str) -> Callable[[str], float]:
    """Build the argument type of a finite number ``> 0``."""
    return number(flag, minimum=0, strict=True)


def add_compute_args(p: argparse.ArgumentParser) -> None:
    """Add the flags of where and how the virtual sites compute (run config defaults)."""
    g = p.add_argument_group("compute (every virtual site; client.compute)")
    g.add_argument("--device", choices=DEVICES, default=None,
                   help="auto (default): CUDA when present, else the CPU")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto (default): bf16 autocast on a CUDA GPU with bfloat16, else fp32; "
                        "the LoRA layers and DP noise stay fp32")
    g.add_argument("--gradient-checkpointing", choices=("on", "off"), default=None,
                   help="recompute activations in the backward pass (default off)")
    g.add_argument("--base-quantization", choices=BASE_QUANTIZATIONS, default=None,
                   help="4bit: bitsandbytes NF4 base weights (QLoRA), CUDA only "
                        "(default none)")


#: run-config key of each compute flag
_COMPUTE_FLAGS = {"device": "--device", "precision": "--precision",
                  "gradient-checkpointing": "--gradient-checkpointing",
                  "base-quantization": "--base-quantization"}


def compute_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config overrides of the compute flags, checked against this machine.

    The virtual sites run here, so what this machine cannot do (4-bit weights on a CPU,
    bitsandbytes missing, bf16 on a GPU without it) is refused before anything starts,
    with a :class:`~protocol.console.UsageError` naming the flag and the value.
    """
    out: dict[str, Any] = {}
    for key, flag in _COMPUTE_FLAGS.items():
        value = getattr(args, key.replace("-", "_"), None)
        if value is not None:
            out[key] = value == "on" if key == "gradient-checkpointing" else value
    if out.get("precision") == "bf16" or out.get("base-quantization") == "4bit":
        from client.compute import resolve_compute
        from protocol.model_ref import ModelError

        try:
            resolve_compute(device=out.get("device", "auto"),
                            precision=out.get("precision", "auto"),
                            gradient_checkpointing=out.get("gradient-checkpointing", False),
                            base_quantization=out.get("base-quantization", "none"))
        except ModelError as exc:
            text = str(exc)
            key = next((k for k in _COMPUTE_FLAGS if f"`{k}`" in text), "device")
            raise UsageError(f"{_COMPUTE_FLAGS[key]}: {exc}", field=_COMPUTE_FLAGS[key],
                             value=out.get(key, "auto")) from None
    return out
