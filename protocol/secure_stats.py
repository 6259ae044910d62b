"""What a site's statistics look like inside a secure sum: its weight, its evaluation.

Under secure aggregation no per-site figure travels in the clear; the coordinator learns sums.

* **Weight.** A training input is the encoded, weighted delta followed by the site's weight
  (its number of examples) as an exact integer in L more ring coordinates, its limbs of b
  bits each (:func:`weight_limbs`: b is chosen so that the cohort's sum of one limb cannot
  wrap; L = 1 whenever the ring holds the cohort's total weight in one coordinate, else the
  weight is split rather than the ring widened). The unmasked sum's last L coordinates give
  the contributors' total weight exactly, by which the server divides the decoded sum
  (:func:`append_weight`, :func:`split_weight`). Site-level DP releases the unweighted mean
  and sends no weight.
* **Evaluation.** A secure evaluation round sums a short stats vector per site
  (:func:`encode_eval_stats`): ``[loss x examples, loss x tokens]`` in fixed point with
  ``EVAL_FRACTION_BITS`` fractional bits (nearest rounding), then ``examples`` and ``tokens``
  exactly, in the ring Z/2^64. The coordinator decodes the totals (:func:`decode_eval_stats`).
  Its secure-aggregation round number is the train round's with :data:`EVAL_ROUND_BIT` set,
  so a site's record of what it sent (``RoundGuard``) keeps the two apart and a site never
  sends two evaluations for one round either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "EVAL_FRACTION_BITS",
    "EVAL_MODULUS_BITS",
    "EVAL_ROUND_BIT",
    "EVAL_STATS_LEN",
    "EVAL_STATS_MAX",
    "MAX_EVAL_COUNT",
    "MAX_EVAL_LOSS",
    "EvalTotals",
    "append_eval_stats",
    "append_weight",
    "decode_eval_stats",
    "encode_eval_stats",
    "eval_round",
    "eval_stats_limbs",
    "int_limbs",
    "is_eval_round",
    "round_label",
    "split_eval_stats",
    "split_weight",
    "weight_limbs",
]

#: set in the secure-aggregation round number of a round's evaluation
EVAL_ROUND_BIT = 1 << 62
EVAL_STATS_LEN = 4
EVAL_MODULUS_BITS = 64
EVAL_FRACTION_BITS = 16
#: a site's mean held-out loss is clamped to [0, MAX_EVAL_LOSS] nats before encoding
MAX_EVAL_LOSS = 256.0
#: most examples or tokens one site may report in one evaluation
MAX_EVAL_COUNT = 1 << 30
#: sites one evaluation sum can hold without wrapping: 2^64 / (MAX_LOSS * MAX_COUNT * 2^F)
MAX_EVAL_SITES = 1 << (EVAL_MODULUS_BITS - 8 - 30 - EVAL_FRACTION_BITS)


def eval_round(round_num: int) -> int:
    """Return the secure-aggregation round number of ``round_num``'s evaluation."""
    if type(round_num) is not int or not 0 <= round_num < EVAL_ROUND_BIT:
        raise ValueError(f"`round_num` must be an int in [0, 2^62), got {round_num!r}")
    return round_num | EVAL_ROUND_BIT


def is_eval_round(secagg_round: int) -> bool:
    """Whether a secure-aggregation round number is an evaluation's."""
    return bool(secagg_round & EVAL_ROUND_BIT)


def round_label(secagg_round: int) -> str:
    """Return a secure-aggregation round number as a person reads it: ``3 (evaluation)``."""
    if is_eval_round(secagg_round):
        return f"{secagg_round & ~EVAL_ROUND_BIT} (evaluation)"
    return str(secagg_round)


def _weight(weight: object, max_weight: float) -> int:
    if type(weight) is not int or not 0 < weight <= max_weight:
        raise ValueError(f"`weight` must be an int in (0, {max_weight:g}], got {weight!r}")
    return weight


def int_limbs(*, modulus_bits: int, n_sites: int, max_value: int) -> tuple[int, int]:
    """``(b, L)``: an integer in ``[0, max_value]`` as L limbs of b bits, ``sum_j limb_j 2^(b j)``.

    One coordinate (``L = 1``, ``b`` = the ring's width minus a sign bit) when the ring
    holds ``n_sites * max_value``; otherwise ``b = k - bitlen(n)`` so that the sum of
    ``n_sites`` limbs (each < 2^b) stays below 2^k, and as many limbs as ``max_value``
    needs. Either way the decoded total is exact.
    """
    if type(modulus_bits) is not int or not 2 <= modulus_bits <= 64:
        raise ValueError(f"`modulus_bits` must be an int in [2, 64], got {modulus_bits!r}")
    if type(n_sites) is not int or n_sites < 1:
        raise ValueError(f"`n_sites` must be an int >= 1, got {n_sites!r}")
    if type(max_value) is not int or max_value < 1:
        raise ValueError(f"`max_value` must be an int >= 1, got {max_value!r}")
    if n_sites * max_value < 1 << (modulus_bits - 1):
        return modulus_bits - 1, 1
    bits = modulus_bits - n_sites.bit_length()
    if bits < 1:
        raise ValueError(f"a 2^{modulus_bits} ring cannot sum the limbs of {n_sites} sites")
    return bits, -(-max_value.bit_length() // bits)


def weight_limbs(*, modulus_bits: int, n_sites: int, max_weight: float) -> tuple[int, int]:
    """``(b, L)``: the weight travels as L limbs of b bits (:func:`int_limbs`)."""
    if not math.isfinite(max_weight) or max_weight < 1:
        raise ValueError(f"`max_weight` must be finite and >= 1, got {max_weight!r}")
    return int_limbs(modulus_bits=modulus_bits, n_sites=n_sites, max_value=int(max_weight))


def _limbs(value: int, bits: int, count: int) -> list[int]:
    return [(value >> (bits * j)) & ((1 << bits) - 1) for j in range(count)]


def _join(limb_sums: np.ndarray, bits: int, modulus_bits: int) -> int:
    ring = 1 << modulus_bits
    return sum((int(x) % ring) << (bits * j) for j, x in enumerate(limb_sums))


def append_weight(vec: np.ndarray, weight: int, *, modulus_bits: int, max_weight: float,
                  n_sites: int = 1) -> np.ndarray:
    """``vec`` with the site's integer weight appended as its limbs (:func:`weight_limbs`)."""
    w = _weight(weight, max_weight)
    bits, count = weight_limbs(modulus_bits=modulus_bits, n_sites=n_sites,
                               max_weight=max_weight)
    return np.concatenate([vec, np.array(_limbs(w, bits, count), dtype=vec.dtype)])


def split_weight(sum_vec: np.ndarray, *, modulus_bits: int, max_weight: float = 1.0,
                 n_sites: int = 1) -> tuple[np.ndarray, int]:
    """Split off the weight limbs: the summed vector, and the total weight (exact)."""
    bits, count = weight_limbs(modulus_bits=modulus_bits, n_sites=n_sites,
                               max_weight=max_weight)
    if sum_vec.ndim != 1 or sum_vec.shape[0] < count:
        raise ValueError(f"a weighted sum needs {count} weight coordinate(s), "
                         f"got shape {sum_vec.shape}")
    return sum_vec[:-count], _join(sum_vec[-count:], bits, modulus_bits)


@dataclass(frozen=True)
class EvalTotals:
    """The decoded totals of one secure evaluation."""

    loss_x_examples: float
    loss_x_tokens: float
    num_examples: int
    num_tokens: int

    @property
    def eval_loss(self) -> float:
        """The example-weighted mean of the sites' held-out losses (as the plain path)."""
        return self.loss_x_examples / self.num_examples

    @staticmethod
    def error_bound(n_sites: int) -> float:
        """Bound |decoded - exact| of ``loss_x_examples`` (or ``loss_x_tokens``).

        Each site rounds its fixed-point product to the nearest grid step.
        """
        return n_sites * 0.5 / float(1 << EVAL_FRACTION_BITS)


def encode_eval_stats(*, loss: float, num_examples: int, num_tokens: int) -> np.ndarray:
    """One site's evaluation as a ring vector of length :data:`EVAL_STATS_LEN` (uint64)."""
    for name, n in (("num_examples", num_examples), ("num_tokens", num_tokens)):
        if type(n) is not int or not 0 <= n <= MAX_EVAL_COUNT:
            raise ValueError(f"`{name}` must be an int in [0, 2^30], got {n!r}")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or math.isnan(loss):
        raise ValueError(f"`loss` must be a number, got {loss!r}")
    loss = min(max(float(loss), 0.0), MAX_EVAL_LOSS)
    step = float(1 << EVAL_FRACTION_BITS)
    return np.array([round(loss * num_examples * step), round(loss * num_tokens * step),
                     num_examples, num_tokens], dtype=np.uint64)


def decode_eval_stats(sum_vec: np.ndarray, *, n_sites: int) -> EvalTotals:
    """Totals from the unmasked sum of ``n_sites`` stats vectors."""
    if sum_vec.shape != (EVAL_STATS_LEN,):
        raise ValueError(f"an evaluation sum has shape ({EVAL_STATS_LEN},), got {sum_vec.shape}")
    if not 0 < n_sites <= MAX_EVAL_SITES:
        raise ValueError(f"an evaluation sum holds 1 to {MAX_EVAL_SITES} sites, got {n_sites}")
    step = float(1 << EVAL_FRACTION_BITS)
    a, b, n, t = (int(x) for x in sum_vec)
    if n <= 0 or n > n_sites * MAX_EVAL_COUNT or t > n_sites * MAX_EVAL_COUNT:
        raise ValueError(f"decoded evaluation totals out of range ({n} examples, {t} tokens "
                         f"from {n_sites} sites)")
    return EvalTotals(a / step, b / step, n, t)


#: the largest value of each coordinate of :func:`encode_eval_stats`
EVAL_STATS_MAX: tuple[int, ...] = (
    int(MAX_EVAL_LOSS) * MAX_EVAL_COUNT << EVAL_FRACTION_BITS,
    int(MAX_EVAL_LOSS) * MAX_EVAL_COUNT << EVAL_FRACTION_BITS,
    MAX_EVAL_COUNT, MAX_EVAL_COUNT)


def eval_stats_limbs(*, modulus_bits: int, n_sites: int) -> int:
    """Ring coordinates an evaluation's stats take at the end of a training input.

    A train message that evaluates the adapter it carries (``evaluate-received``) appends
    each of the :data:`EVAL_STATS_LEN` stats as exact integer limbs (:func:`int_limbs`),
    after the weight: the training ring (at most 32 bits) is too narrow for them.
    """
    return sum(int_limbs(modulus_bits=modulus_bits, n_sites=n_sites, max_value=m)[1]
               for m in EVAL_STATS_MAX)


def append_eval_stats(vec: np.ndarray, stats: np.ndarray, *, modulus_bits: int,
                      n_sites: int) -> np.ndarray:
    """``vec`` with a site's stats (:func:`encode_eval_stats`) appended as their limbs."""
    if stats.shape != (EVAL_STATS_LEN,):
        raise ValueError(f"evaluation stats have shape ({EVAL_STATS_LEN},), got {stats.shape}")
    limbs: list[int] = []
    for value, top in zip((int(x) for x in stats), EVAL_STATS_MAX, strict=True):
        if not 0 <= value <= top:
            raise ValueError(f"an evaluation stat must be in [0, {top}], got {value}")
        bits, count = int_limbs(modulus_bits=modulus_bits, n_sites=n_sites, max_value=top)
        limbs += _limbs(value, bits, count)
    return np.concatenate([vec, np.array(limbs, dtype=vec.dtype)])


def split_eval_stats(sum_vec: np.ndarray, *, modulus_bits: int,
                     n_sites: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the stats limbs off a summed training input: the rest, and the stats' sum.

    The sum is a uint64 vector for :func:`decode_eval_stats`; a total that does not fit
    (only an out-of-range input can make one) raises ``ValueError``.
    """
    count = eval_stats_limbs(modulus_bits=modulus_bits, n_sites=n_sites)
    if sum_vec.ndim != 1 or sum_vec.shape[0] < count:
        raise ValueError(f"a training input with evaluation stats needs {count} stats "
                         f"coordinates, got shape {sum_vec.shape}")
    tail, out, at = sum_vec[-count:], [], 0
    for top in EVAL_STATS_MAX:
        bits, n = int_limbs(modulus_bits=modulus_bits, n_sites=n_sites, max_value=top)
        out.append(_join(tail[at:at + n], bits, modulus_bits))
        at += n
    if any(v >= 1 << EVAL_MODULUS_BITS for v in out):
        raise ValueError(f"decoded evaluation totals out of range: {out}")
    return sum_vec[:-count], np.array(out, dtype=np.uint64)
