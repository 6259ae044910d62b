"""Argument types of ``confide simulate``'s numeric flags: each error names the flag and value.

argparse reports a refused value as ``confide simulate: error: argument FLAG: MESSAGE`` and
exits with status 2 (:data:`protocol.console.EXIT_BAD_INPUT`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["int_at_least", "number", "positive_float", "positive_int"]


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
