"""A site's privacy policy: the DP promises the site operator sets, never the server."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "PolicyError",
    "SitePrivacyPolicy",
    "check_delta",
    "check_epsilon",
    "check_noise_multiplier",
    "check_sample_rate",
    "default_delta",
]

logger = logging.getLogger(__name__)

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ghost")


class PolicyError(ValueError):
    """A privacy setting is out of range or unknown; the message names field and value.

    ``field`` (the policy field, snake_case) and ``value`` carry them for a caller that
    reports the error under its own name for the field (e.g. a command-line flag).
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


def _number(name: str, value: Any) -> float:
    """``value`` as a finite float; bools, strings and NaN are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"`{name}` must be a number, got {value!r}", field=name, value=value)
    out = float(value)
    if math.isnan(out):
        raise PolicyError(f"`{name}` must be a number, got {value!r}", field=name, value=value)
    return out


def check_epsilon(value: Any, name: str = "budget_epsilon") -> float:
    """Return ``value`` as ε after checking ``0 < ε < inf``."""
    eps = _number(name, value)
    if not 0.0 < eps < math.inf:
        raise PolicyError(f"`{name}` must be > 0 and finite, got {value!r}", field=name,
                          value=value)
    return eps


def check_delta(value: Any, name: str = "delta") -> float:
    """Return ``value`` as δ after checking ``0 < δ < 1``."""
    delta = _number(name, value)
    if not 0.0 < delta < 1.0:
        raise PolicyError(f"`{name}` must be in (0, 1), got {value!r}", field=name, value=value)
    return delta


def check_noise_multiplier(value: Any, name: str = "noise_multiplier") -> float:
    """Return ``value`` as σ after checking ``0 <= σ < inf``."""
    sigma = _number(name, value)
    if not 0.0 <= sigma < math.inf:
        raise PolicyError(f"`{name}` must be >= 0 and finite, got {value!r}", field=name,
                          value=value)
    return sigma


def check_sample_rate(value: Any, name: str = "sample_rate") -> float:
    """Return ``value`` as a Poisson sample rate after checking ``0 < q <= 1``."""
    q = _number(name, value)
    if not 0.0 < q <= 1.0:
        raise PolicyError(f"`{name}` must be in (0, 1], got {value!r}", field=name, value=value)
    return q


def default_delta(num_examples: int) -> float:
    """δ strictly below ``1/n``: ``min(1e-5, 1 / (10 n))``.

    Parameters
    ----------
    num_examples : int
        The number of training examples (privacy units) at the site.
    """
    if type(num_examples) is not int or num_examples <= 0:
        raise PolicyError(f"`num_examples` must be a positive int, got {num_examples!r}",
                          field="num_examples", value=num_examples)
    return min(1e-5, 1.0 / (10.0 * num_examples))


@dataclass(frozen=True)
class SitePrivacyPolicy:
    """The DP promises a site keeps, set by its operator (never by the server).

    Parameters
    ----------
    budget_epsilon : float
        The most ε the site ever spends on its data, over all rounds and runs.
    delta : float or None
        δ of the (ε, δ) guarantee. ``None`` picks :func:`default_delta` for the site's
        number of examples (strictly below ``1/n``).
    max_grad_norm : float
        Per-example (per-sequence) L2 clipping bound C.
    accountant : {"rdp", "prv"}
        How ε is composed: Rényi DP (default) or numerical PRV composition.
    noise_multiplier : float or None
        A fixed σ. ``None`` calibrates σ once per run so the planned rounds x local steps
        fit the remaining budget.
    min_noise_multiplier : float
        Floor: a round that asks for a smaller σ, or for no DP, is declined with
        ``dp-weaker-than-policy``; a calibrated σ is never below it either.
    grad_sample_mode : {"hooks", "ghost"}
        Opacus per-sample gradient mode. ``hooks`` materialises per-example gradients of
        the LoRA parameters (fast for LoRA-sized layers); ``ghost`` clips without
        materialising them (less memory for large batches, two backward passes).
    secure_mode : bool
        Draw the Poisson sampling and the Gaussian noise from the operating system's
        CSPRNG (``os.urandom``) with the floating-point-attack resistant noise of Opacus'
        secure mode (sum of 4 Gaussians / 2). On by default: noise anyone else can
        regenerate protects nothing against them. ``False`` draws them from a generator
        seeded by the site's own secret seed (:mod:`privacy.noise_source`; reproducible,
        for simulations), and every such round is flagged by the audit. At a deployed
        site only the site's node config (``dp-secure-mode = false``) can turn it off;
        nothing the coordinator sends does.
    release_metrics : bool
        Let this site release its per-site figures (train loss, example count, held-out
        loss and token count, timings) in the clear under secure aggregation. Off by
        default: the coordinator then learns them only as sums inside the secure sum, and
        what the site releases in the clear is its signed ledger summary alone (ε, δ, q, σ,
        steps). At a deployed site only its node config (``dp-release-metrics = true``) can
        turn it on. The audit lists, per site, what it released.
    """

    budget_epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    noise_multiplier: float | None = None
    min_noise_multiplier: float = 0.0
    grad_sample_mode: str = "hooks"
    secure_mode: bool = True
    release_metrics: bool = False

    def __post_init__(self) -> None:
        check_epsilon(self.budget_epsilon, "budget_epsilon")
        if self.delta is not None:
            check_delta(self.delta, "delta")
        clip = _number("max_grad_norm", self.max_grad_norm)
        if not 0.0 < clip < math.inf:
            raise PolicyError(f"`max_grad_norm` must be > 0 and finite, got {self.max_grad_norm!r}",
                              field="max_grad_norm", value=self.max_grad_norm)
        if self.accountant not in ACCOUNTANTS:
            raise PolicyError(
                f"`accountant` must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}",
                field="accountant", value=self.accountant,
            )
        if self.noise_multiplier is not None:
            check_noise_multiplier(self.noise_multiplier, "noise_multiplier")
        check_noise_multiplier(self.min_noise_multiplier, "min_noise_multiplier")
        if (
            self.noise_multiplier is not None
            and self.noise_multiplier < self.min_noise_multiplier
        ):
            raise PolicyError(
                f"`noise_multiplier` {self.noise_multiplier!r} is below "
                f"`min_noise_multiplier` {self.min_noise_multiplier!r}",
                field="noise_multiplier", value=self.noise_multiplier,
            )
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise PolicyError(
                f"`grad_sample_mode` must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
                f"got {self.grad_sample_mode!r}",
                field="grad_sample_mode", value=self.grad_sample_mode,
            )
        if type(self.secure_mode) is not bool:
            raise PolicyError(f"`secure_mode` must be true or false, got {self.secure_mode!r}",
                              field="secure_mode", value=self.secure_mode)
        if type(self.release_metrics) is not bool:
            raise PolicyError("`release_metrics` must be true or false, got "
                              f"{self.release_metrics!r}", field="release_metrics",
                              value=self.release_metrics)

    @property
    def calibrates(self) -> bool:
        """Whether σ is calibrated to the plan (no fixed ``noise_multiplier``)."""
        return self.noise_multiplier is None

    def resolve_delta(self, num_examples: int) -> float:
        """δ for a site with ``num_examples`` examples (the set δ, or the default).

        A set δ that is not below ``1/n`` is allowed but logged: it is a weak guarantee.
        """
        if self.delta is None:
            return default_delta(num_examples)
        if type(num_examples) is int and num_examples > 0 and self.delta >= 1.0 / num_examples:
            logger.warning(
                "delta %.3g is not below 1/n = %.3g for %d examples: a weak guarantee",
                self.delta, 1.0 / num_examples, num_examples,
            )
        return self.delta

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SitePrivacyPolicy:
        """Build a policy from a mapping (snake_case or kebab-case keys).

        Unknown keys are refused, as are numbers given as strings or bools.
        """
        if not isinstance(data, Mapping):
            raise PolicyError(f"privacy policy must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise PolicyError(
                    f"unknown privacy policy key {key!r} (known: "
                    f"{', '.join(sorted(k.replace('_', '-') for k in known))})"
                )
            if name in kwargs:
                raise PolicyError(f"privacy policy key {key!r} given twice")
            kwargs[name] = value
        if "budget_epsilon" not in kwargs:
            raise PolicyError("privacy policy needs `budget-epsilon`", field="budget_epsilon")
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Return the policy as kebab-case keys (the inverse of :meth:`from_mapping`)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def summary(self, num_examples: int | None = None) -> str:
        """One line for the start-up DP summary."""
        delta = (
            self.resolve_delta(num_examples) if num_examples is not None else self.delta
        )
        sigma = "calibrated" if self.noise_multiplier is None else f"{self.noise_multiplier:g}"
        return (
            f"budget eps={self.budget_epsilon:g} delta="
            f"{'auto' if delta is None else f'{delta:.3g}'} C={self.max_grad_norm:g} "
            f"sigma={sigma} (floor {self.min_noise_multiplier:g}) "
            f"accountant={self.accountant} mode={self.grad_sample_mode} "
            f"secure={'on' if self.secure_mode else 'off'}"
        )
