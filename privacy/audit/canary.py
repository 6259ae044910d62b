"""One-run empirical privacy audit with canaries (Steinke, Nasr & Jagielski, NeurIPS 2023).

*Privacy Auditing with One (1) Training Run* (arXiv 2305.08846). ``m`` canaries are drawn;
each is put in the training data or left out by an independent fair coin ``S_i`` that is
recorded. After training, a membership score per canary (here: its loss drop against the
model before training) ranks them; the auditor guesses the top ``k_in`` IN, the bottom
``k_out`` OUT and abstains on the rest: ``r = k_in + k_out`` guesses, ``v`` of them correct.

If training is (ε, δ)-DP, then (the paper's Theorem 3.1 and Appendix D)

    P[v correct] <= P[Bin(r, p_ε) >= v] + 2 m δ · max_{i=1..v} P[v-i <= Bin(r, p_ε) < v] / i

with ``p_ε = e^ε / (1 + e^ε)`` (the accuracy of ε-DP randomised response). The empirical lower
bound at confidence ``1 - β`` is the largest ε whose bound is still below β: any smaller ε is
rejected. :func:`p_value` is that right-hand side and :func:`epsilon_lower_bound` the bisection
of Appendix D, written from the paper (binomial terms in log space, no scipy needed).

Choosing ``k`` after looking at the outcome invalidates the confidence, so
:func:`audit_scores` tries a fixed grid of ``k`` (``k_in = k_out = k``) and divides β by the
number of choices (Bonferroni): the reported bound holds at the stated confidence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "CanaryAuditResult",
    "CanaryPlan",
    "audit_scores",
    "count_correct",
    "default_k_grid",
    "epsilon_lower_bound",
    "membership_scores",
    "p_value",
]

logger = logging.getLogger(__name__)

_EPS_MAX = 1e3


# ---- the bound ------------------------------------------------------------------------


def _check_mrv(m: int, r: int, v: int) -> None:
    for name, x in (("m", m), ("r", r), ("v", v)):
        if type(x) is not int:
            raise ValueError(f"`{name}` must be an int, got {x!r}")
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")


def _binom_pmf(r: int, epsilon: float) -> np.ndarray:
    """``P[Binomial(r, e^ε/(1+e^ε)) = k]`` for k = 0..r, computed in log space."""
    log_q = -math.log1p(math.exp(-epsilon))              # log(e^ε / (1 + e^ε))
    log_1mq = -epsilon - math.log1p(math.exp(-epsilon))  # log(1 / (1 + e^ε))
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, r + 1, dtype=np.float64)))])
    k = np.arange(r + 1)
    log_pmf = log_fact[r] - log_fact[k] - log_fact[r - k] + k * log_q + (r - k) * log_1mq
    return np.exp(log_pmf)  # type: ignore[no-any-return]


def p_value(m: int, r: int, v: int, *, epsilon: float, delta: float) -> float:
    """Largest probability of ``>= v`` correct guesses out of ``r`` if training is (ε, δ)-DP.

    Parameters
    ----------
    m : int
        Number of canaries (each included with probability 1/2).
    r : int
        Number of guesses (not abstentions), ``r <= m``.
    v : int
        Number of correct guesses, ``v <= r``.
    epsilon : float
        ε of the null hypothesis, >= 0.
    delta : float
        δ of the null hypothesis, in [0, 1].

    Returns
    -------
    float
        ``min(1, P[Bin(r, p_ε) >= v] + 2 m δ max_i P[v-i <= Bin(r, p_ε) < v] / i)``.
    """
    _check_mrv(m, r, v)
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"`epsilon` must be >= 0 and finite, got {epsilon!r}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"`delta` must be in [0, 1], got {delta!r}")
    pmf = _binom_pmf(r, epsilon)
    tail = float(np.sum(pmf[v:]))
    if delta == 0.0 or v == 0:
        return min(1.0, tail)
    below = np.cumsum(pmf[v - 1::-1])  # i-th entry (from 1): P[v-i <= Bin < v]
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + alpha * delta * 2.0 * m)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float,
                        confidence: float = 0.95, tol: float = 1e-6) -> float:
    """Empirical ε lower bound from ``v`` correct out of ``r`` guesses on ``m`` canaries.

    The largest ε (to ``tol``, rounded down) with ``p_value(m, r, v, ε, δ) < 1 - confidence``:
    with probability at least ``confidence`` over the coins and training, an (ε', δ)-DP
    training run never yields a bound above ε'. 0 when even ε = 0 is not rejected.
    """
    _check_mrv(m, r, v)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}")
    beta = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return p_value(m, r, v, epsilon=eps, delta=delta) < beta

    if v == 0 or not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejected(hi):
        lo, hi = hi, 2.0 * hi
        if hi > _EPS_MAX:
            return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ---- canaries and guesses -------------------------------------------------------------


@dataclass(frozen=True)
class CanaryPlan:
    """The canaries and the recorded coins: ``included[i]`` says canary ``i`` was trained on."""

    seed: int
    sequences: tuple[tuple[int, ...], ...]
    included: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.sequences) != len(self.included) or not self.sequences:
            raise ValueError("`sequences` and `included` must be non-empty and of equal length")

    @classmethod
    def draw(cls, m: int, *, length: int, vocab_size: int, seed: int,
             exclude: Sequence[int] = (), disjoint: bool = False) -> CanaryPlan:
        """Draw ``m`` random canaries and a fair coin for each.

        Token sequences of ``length`` ids, uniform over the vocabulary minus ``exclude``,
        from a generator seeded with ``seed`` (recorded in the plan). With ``disjoint`` the
        usable ids are shuffled and split into ``m`` equal blocks and each canary is drawn
        from its own block only, like a record holding an identifier no other record has:
        a model that learned those tokens reveals that the canary was trained on, which
        makes the audit strong without costly memorisation of token order.
        """
        if type(m) is not int or m < 1:
            raise ValueError(f"`m` must be an int >= 1, got {m!r}")
        if type(length) is not int or length < 2:
            raise ValueError(f"`length` must be an int >= 2, got {length!r}")
        allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(exclude), dtype=np.int64))
        if allowed.size < 2:
            raise ValueError(f"`vocab_size` {vocab_size} leaves fewer than 2 usable tokens")
        rng = np.random.default_rng(seed)
        if disjoint:
            block = allowed.size // m
            if block < 2:
                raise ValueError(f"disjoint canaries need >= 2 token ids each: {allowed.size} "
                                 f"usable ids for m={m}")
            blocks = rng.permutation(allowed)[: block * m].reshape(m, block)
            picks = rng.integers(0, block, size=(m, length))
            seqs = np.take_along_axis(blocks, picks, axis=1)
        else:
            seqs = allowed[rng.integers(0, allowed.size, size=(m, length))]
        coins = rng.integers(0, 2, size=m).astype(bool)
        return cls(seed, tuple(tuple(int(t) for t in s) for s in seqs),
                   tuple(bool(c) for c in coins))

    @property
    def m(self) -> int:
        """Number of canaries."""
        return len(self.sequences)

    def indices(self, *, included: bool) -> list[int]:
        """Return the indices of the canaries that were (or were not) trained on."""
        return [i for i, c in enumerate(self.included) if c == included]


def membership_scores(loss_before: Sequence[float], loss_after: Sequence[float], *,
                      control_before: Sequence[float] | None = None,
                      control_after: Sequence[float] | None = None) -> np.ndarray:
    """Loss drop per canary (``before - after``): higher means more likely trained on.

    With a control (the loss of each canary's tokens in a fixed shuffled order, before and
    after training), the control's drop is subtracted: what training did to *these tokens
    in any order* (e.g. flattening the model's token prior) cancels, and what is left is
    the memorised order. Any score computed from the models and the canaries alone, not
    from the coins, keeps the bound valid.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (loss_before, loss_after)]
    if (control_before is None) != (control_after is None):
        raise ValueError("give both `control_before` and `control_after`, or neither")
    if control_before is not None and control_after is not None:
        arrays += [np.asarray(x, dtype=np.float64) for x in (control_before, control_after)]
    if arrays[0].ndim != 1 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"loss arrays must be 1-d of equal length, got "
                         f"{[a.shape for a in arrays]}")
    drop = arrays[0] - arrays[1]
    return drop if len(arrays) == 2 else drop - (arrays[2] - arrays[3])


def count_correct(scores: Sequence[float] | np.ndarray, included: Sequence[bool], *,
                  k_in: int, k_out: int) -> tuple[int, int]:
    """Guess the ``k_in`` top-scored canaries IN and the ``k_out`` lowest OUT.

    Ties are broken by index (independent of the coins). Returns ``(r, v)``: guesses made
    and how many were right.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    m = s.size
    if inc.shape != s.shape:
        raise ValueError("`scores` and `included` must have the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("membership scores must be finite")
    if k_in < 0 or k_out < 0 or k_in + k_out > m:
        raise ValueError(f"need k_in, k_out >= 0 and k_in + k_out <= m={m}, got {k_in}, {k_out}")
    order = np.argsort(-s, kind="stable")
    top, bottom = order[:k_in], order[m - k_out:] if k_out else order[:0]
    v = int(np.sum(inc[top]) + np.sum(~inc[bottom]))
    return k_in + k_out, v


def default_k_grid(m: int) -> tuple[int, ...]:
    """Guesses per side tried by :func:`audit_scores`: 2%, 5%, 10%, 20% of ``m`` (>= 1)."""
    return tuple(sorted({max(1, int(f * m)) for f in (0.02, 0.05, 0.1, 0.2)
                         if 2 * max(1, int(f * m)) <= m}))


@dataclass(frozen=True)
class CanaryAuditResult:
    """An empirical audit's outcome next to the formal ε it checks.

    ``formal_epsilon`` None means no DP (ε = ∞). ``confidence`` is the overall confidence
    (after the Bonferroni split over ``candidates`` choices of k).
    """

    site_id: str
    canaries: int
    included: int
    k_in: int
    k_out: int
    guesses: int
    correct: int
    candidates: int
    confidence: float
    delta: float
    epsilon_lower_bound: float
    formal_epsilon: float | None
    accountant: str | None
    dp: bool
    method: str = "steinke-nasr-jagielski-2023"

    @property
    def exceeds_formal(self) -> bool:
        """The empirical lower bound is above the formal ε: something is broken."""
        return self.formal_epsilon is not None and self.epsilon_lower_bound > self.formal_epsilon

    def to_mapping(self) -> dict[str, Any]:
        """Return the result as JSON-ready data (with ``exceeds_formal``)."""
        return {**asdict(self), "exceeds_formal": self.exceeds_formal}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CanaryAuditResult:
        """Inverse of :meth:`to_mapping`; keys it does not know are ignored."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a canary audit result must be a mapping, got {type(data).__name__}")
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def audit_scores(scores: Sequence[float] | np.ndarray, included: Sequence[bool], *,
                 delta: float,
                 formal_epsilon: float | None, site_id: str = "site",
                 accountant: str | None = None, confidence: float = 0.95,
                 k_grid: Sequence[int] | None = None) -> CanaryAuditResult:
    """Compute the empirical ε lower bound from membership scores, best over a fixed grid of k.

    Parameters
    ----------
    scores : sequence of float
        One membership score per canary (higher = guessed IN).
    included : sequence of bool
        The recorded coins.
    delta : float
        δ of the formal guarantee (the bound is δ-aware).
    formal_epsilon : float or None
        The run's formal ε (None: no DP).
    confidence : float
        Overall confidence; each of the ``len(k_grid)`` candidates is tested at
        ``1 - (1 - confidence) / len(k_grid)``.
    k_grid : sequence of int, optional
        Guesses per side to try (``k_in = k_out = k``); :func:`default_k_grid` by default.
    """
    m = len(scores)
    grid = tuple(k_grid) if k_grid is not None else default_k_grid(m)
    if not grid:
        raise ValueError(f"no usable k for {m} canaries")
    each = 1.0 - (1.0 - confidence) / len(grid)
    best: tuple[float, int, int, int] | None = None
    for k in grid:
        r, v = count_correct(scores, included, k_in=k, k_out=k)
        bound = epsilon_lower_bound(m, r, v, delta=delta, confidence=each)
        logger.debug("canary audit k=%d: %d/%d correct, eps lower bound %.4f", k, v, r, bound)
        if best is None or bound > best[0]:
            best = (bound, k, r, v)
    assert best is not None
    bound, k, r, v = best
    result = CanaryAuditResult(
        site_id=site_id, canaries=m, included=int(np.sum(np.asarray(included, dtype=bool))),
        k_in=k, k_out=k, guesses=r, correct=v, candidates=len(grid), confidence=confidence,
        delta=delta, epsilon_lower_bound=bound, formal_epsilon=formal_epsilon,
        accountant=accountant, dp=formal_epsilon is not None,
    )
    if result.exceeds_formal:
        logger.error("canary audit: empirical eps >= %.4g exceeds the formal eps %.4g",
                     bound, formal_epsilon)
    return result
