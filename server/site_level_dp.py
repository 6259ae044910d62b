"""The coordinator's side of site-level DP: plan each round's noise, admit, decode, account.

Used by :class:`server.secure.SecureAggregator` when ``site-level-dp`` is on. Per round:

1. :meth:`SiteLevelDP.plan` fixes the grid, the ring and each site's noise for the round's
   cohort, or refuses the round when even a full cohort would take the run past its
   site-level budget (the round then trains nothing and releases nothing).
2. After the masked inputs are in and *before* anything is unmasked,
   :meth:`SiteLevelDP.admit` counts the contributors ``n`` whose noised vectors are in the sum.
   ``n`` below the calibration cohort ``t`` is refused (``site-level-dp-underflow = "refuse"``)
   or accounted with the smaller noise it really has (``"account"``); either way the round
   is refused when its ε, computed from the actual ``n``, would exceed the budget. A
   refused round is aborted before the unmask stage, so no one learns its sum.
3. :meth:`SiteLevelDP.decode` turns the unmasked sum into the unweighted mean; in ``central``
   mode (a trusted server, for comparison) the sites add no noise and the server adds
   ``N(0, (z C)^2)`` to the sum here.

Each released round is recorded in ``participation.jsonl`` under ``site_level_dp`` (contributors,
σ, sensitivities, noise variance in the aggregate, ε of the round and after it); a resumed
run composes from those records.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from privacy.ddg import (
    DDGParams,
    SiteLevelDPRound,
    calibrate_site_noise,
    decode_ddg,
    plan_site_level_round,
    secure_rng,
    site_level_epsilon,
)
from protocol.codec import Manifest
from protocol.run_rows import ParticipationRow

__all__ = [
    "UNDERFLOW_POLICIES",
    "Admission",
    "PlanRefusal",
    "SiteLevelDP",
    "history_from_participation",
]

logger = logging.getLogger(__name__)

UNDERFLOW_POLICIES: tuple[str, ...] = ("refuse", "account")


def history_from_participation(rows: Iterable[ParticipationRow]) -> list[SiteLevelDPRound]:
    """Released site-level-DP rounds recorded in ``participation.jsonl`` rows, in order."""
    out = []
    for row in rows:
        rec = row.site_level_dp
        if isinstance(rec, Mapping) and rec.get("released") is True:
            out.append(SiteLevelDPRound.from_mapping(rec))
    return out


@dataclass(frozen=True)
class PlanRefusal:
    """Why :meth:`SiteLevelDP.plan` refuses a round (nothing is trained or released).

    ``budget_exhausted``: even a full cohort's next round would exceed the site-level budget,
    so every further round would be refused too (the run stops).
    """

    reason: str
    budget_exhausted: bool = False


@dataclass(frozen=True)
class Admission:
    """The outcome of :meth:`SiteLevelDP.admit`: a reason to refuse, or the round's record."""

    ok: bool
    reason: str
    record: dict[str, Any]


class SiteLevelDP:
    """Site-level DP settings of a run and its composed history.

    Parameters
    ----------
    mode : {"distributed", "central"}
    epsilon, delta : float
        The run-level site-level budget ε(δ).
    clip : float
        L2 bound C on each site's delta.
    noise_multiplier : float
        z (aggregate noise standard deviation z C); negative: calibrated so that
        ``planned_rounds`` rounds of the calibration cohort fit ``epsilon``.
    cohort : int
        Calibration cohort t; 0: the round's cohort (the sites asked to contribute).
    modulus_bits : int
        k of the ring Z/2^k in distributed mode.
    underflow : {"refuse", "account"}
        What to do when fewer than t sites contribute.
    planned_rounds : int
    history : list of SiteLevelDPRound
        Rounds already released (a resumed run).
    """

    def __init__(self, *, mode: str, epsilon: float, delta: float, clip: float,
                 noise_multiplier: float, cohort: int, modulus_bits: int, underflow: str,
                 planned_rounds: int, history: list[SiteLevelDPRound] | None = None) -> None:
        if underflow not in UNDERFLOW_POLICIES:
            raise ValueError(f"`site-level-dp-underflow` must be one of {UNDERFLOW_POLICIES}, "
                             f"got {underflow!r}")
        self.mode = mode
        self.epsilon = epsilon
        self.delta = delta
        self.clip = clip
        self.requested_z = noise_multiplier
        self.cohort_setting = cohort
        self.bits = modulus_bits
        self.underflow = underflow
        self.planned_rounds = planned_rounds
        self.history: list[SiteLevelDPRound] = list(history or [])
        self._z: dict[tuple[int, int, int], float] = {}

    @classmethod
    def from_config(cls, cfg: Any, history: list[SiteLevelDPRound] | None = None) -> SiteLevelDP:
        """From a :class:`protocol.config.RunConfig` with ``site_level_dp`` on."""
        return cls(mode=cfg.site_level_dp_mode, epsilon=cfg.site_level_dp_epsilon,
                   delta=cfg.site_level_dp_delta,
                   clip=cfg.site_level_dp_clip, noise_multiplier=cfg.site_level_dp_noise_multiplier,
                   cohort=cfg.site_level_dp_cohort, modulus_bits=cfg.site_level_dp_bits,
                   underflow=cfg.site_level_dp_underflow, planned_rounds=cfg.num_server_rounds,
                   history=history)

    # ---- planning ----------------------------------------------------------------------
    def spent(self) -> float:
        """Site-level ε of the rounds released so far."""
        return site_level_epsilon(self.history, delta=self.delta)

    def noise_multiplier(self, cohort: int, max_contributors: int, dim: int) -> float:
        """Z for this run: the configured one, or calibrated once per (t, n, d)."""
        if self.requested_z >= 0:
            return self.requested_z
        key = (cohort, max_contributors, dim)
        if key not in self._z:
            self._z[key] = calibrate_site_noise(
                target_epsilon=self.epsilon, delta=self.delta, rounds=self.planned_rounds,
                mode=self.mode, clip=self.clip, dim=dim, modulus_bits=self.bits,
                cohort=cohort, max_contributors=max_contributors)
            logger.info("site-level DP: noise multiplier z=%.4f calibrated for %d rounds of "
                        "%d sites at site eps=%g, delta=%g (%s)", self._z[key],
                        self.planned_rounds, cohort, self.epsilon, self.delta, self.mode)
        return self._z[key]

    def plan(self, *, cohort_size: int, dim: int) -> DDGParams | PlanRefusal:
        """Return the round's parameters, or why the round must not run."""
        if cohort_size < 1:
            return PlanRefusal("site-level DP: no site to aggregate")
        t = self.cohort_setting or cohort_size
        if t > cohort_size and self.underflow == "refuse":
            return PlanRefusal(f"site-level DP: the round has {cohort_size} sites, fewer than "
                               f"the calibration cohort {t}")
        n_max = max(t, cohort_size)
        try:
            z = self.noise_multiplier(t, n_max, dim)
            params = plan_site_level_round(clip=self.clip, dim=dim, modulus_bits=self.bits,
                                           noise_multiplier=0.0 if self.mode == "central" else z,
                                           cohort=t, max_contributors=n_max,
                                           rotation_seed=os.urandom(32).hex())
        except ValueError as exc:  # no z fits the budget, or the ring is too small
            return PlanRefusal(f"site-level DP: cannot plan the round: {exc}")
        nxt = site_level_epsilon([*self.history, self._record_of(params, t, z)], delta=self.delta)
        if nxt > self.epsilon:
            return PlanRefusal(f"site-level budget: the next round would reach site eps "
                               f"{nxt:.4g} > budget {self.epsilon:g} (spent {self.spent():.4g})",
                               budget_exhausted=True)
        return params

    def _record_of(self, params: DDGParams, n: int, z: float) -> SiteLevelDPRound:
        if self.mode == "central":  # rounded vectors reach Δ₂ γ > C: that is the sensitivity
            return SiteLevelDPRound("central", n, z * self.clip, params.released_l2_bound, 0.0,
                                    params.dim)
        return params.round_record(n)

    # ---- admission and release ---------------------------------------------------------
    def admit(self, params: DDGParams, contributors: int) -> Admission:
        """Decide, before unmasking, whether a sum of ``contributors`` sites may be released."""
        t = params.cohort
        z = self.noise_multiplier(t, params.max_contributors, params.dim)
        rec: dict[str, Any] = {"mode": self.mode, "cohort": t, "contributors": contributors,
                               "clip": self.clip, "noise_multiplier": z, "delta": self.delta,
                               "budget_epsilon": self.epsilon,
                               "epsilon_before": self.spent(), "released": False}
        if contributors < 1:
            return Admission(False, "site-level DP: no contributor", rec)
        if contributors < t and self.underflow == "refuse":
            return Admission(False, f"site-level DP: {contributors} contributors, fewer than "
                                    f"the calibration cohort {t}: the sum would be "
                                    "under-noised; not unmasked", rec)
        acct = self._record_of(params, contributors, z)
        eps_round = site_level_epsilon([acct], delta=self.delta)
        eps_after = site_level_epsilon([*self.history, acct], delta=self.delta)
        rec.update(acct.to_mapping())
        # the grid is recorded in both modes: central accounts the rounding bound Δ₂ γ too
        rec.update({"gamma": params.gamma, "modulus_bits": params.modulus_bits,
                    "padded_dim": params.padded, "beta": params.beta})
        if self.mode == "central":
            variance = (z * self.clip) ** 2
        else:
            variance = params.aggregate_noise_variance(contributors)
            rec["local_sigma_grid"] = params.local_sigma
        rec.update({"noise_variance": variance,
                    "noise_std_of_mean": math.sqrt(variance) / contributors,
                    "epsilon_round": eps_round, "epsilon_after": eps_after})
        if eps_after > self.epsilon:
            return Admission(False, f"site-level budget: releasing {contributors} contributors "
                                    f"would reach site eps {eps_after:.4g} > budget "
                                    f"{self.epsilon:g}; not unmasked", rec)
        return Admission(True, "", rec)

    def release(self, admission: Admission) -> dict[str, Any]:
        """Commit an admitted round to the history; the record for participation.jsonl."""
        rec = dict(admission.record, released=True)
        self.history.append(SiteLevelDPRound.from_mapping(rec))
        logger.info("site-level DP: released a sum of %d sites (%s, noise var %.3g per "
                    "coordinate), site eps %.4f of %g", rec["contributors"], self.mode,
                    rec["noise_variance"], rec["epsilon_after"], self.epsilon)
        return rec

    def decode_mean(self, sum_vec: np.ndarray, manifest: Manifest, params: DDGParams,
                    contributors: int) -> dict[str, np.ndarray]:
        """Return the unweighted mean of the contributors' (noised) clipped deltas, float32."""
        summed = decode_ddg(sum_vec, manifest, params, contributors=contributors)
        if self.mode == "central":
            z = self.noise_multiplier(params.cohort, params.max_contributors, params.dim)
            rng = secure_rng()
            summed = {k: v + rng.normal(0.0, z * self.clip, v.shape) for k, v in summed.items()}
        return {k: (v / contributors).astype(np.float32) for k, v in summed.items()}

    def summary(self) -> str:
        """One line for the start-up log."""
        z = "calibrated" if self.requested_z < 0 else f"z={self.requested_z:g}"
        t = self.cohort_setting or "round cohort"
        return (f"site-level DP on ({self.mode}): budget eps={self.epsilon:g} at "
                f"delta={self.delta:g} over the run, clip C={self.clip:g}, noise {z}, "
                f"calibration cohort {t}, ring 2^{self.bits}, below cohort: {self.underflow}; "
                f"already spent {self.spent():.4g}")
