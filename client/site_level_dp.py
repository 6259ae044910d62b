"""The site's side of site-level DP: check the round's noise parameters, then encode.

A site does not take the coordinator's word for how much noise protects it. From its own
copy of the run configuration it recomputes the noise multiplier z (the configured one, or
the same deterministic calibration the server runs) and refuses a round whose parameters
would put less than ``(z C)^2`` of noise into a sum of the calibration cohort, claim a
cohort larger than the secure-aggregation cohort it was shown, use a larger clip, or switch
the run to central noise it did not agree to. It then prices the round itself
(:func:`check_site_level_price`): the site-level ε of the grid, noise, cohort and ring it was
handed, composed with the rounds of the run in its own site-level ledger, with its own
accountant; a round that would take the run past the budget is refused with that ε.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from privacy.ddg import (
    DDGParams,
    SiteLevelDPRound,
    calibrate_site_noise,
    encode_ddg,
    secure_rng,
    site_level_epsilon,
)
from privacy.ddg.site_ledger import SiteLevelLedger
from privacy.secagg import SecAggError
from protocol.codec import Manifest
from protocol.config import RunConfig
from protocol.instructions import SiteLevelDPPlan

__all__ = ["check_round_params", "check_site_level_price", "check_unmask", "encode_site_level_dp",
           "remember_round", "site_level_budget"]

logger = logging.getLogger(__name__)

_RTOL = 1e-6


def check_round_params(params: DDGParams, mode: str, cfg: RunConfig, *,
                       cohort_size: int, modulus_bits: int, vector_length: int) -> None:
    """Raise :class:`SecAggError` unless the server's round parameters honour ``cfg``."""
    if not cfg.site_level_dp:
        raise SecAggError("the server asks for site-level DP, which this run config has off")
    if mode != cfg.site_level_dp_mode:
        raise SecAggError(f"the server asks for {mode!r} site-level DP, the run config says "
                          f"{cfg.site_level_dp_mode!r}")
    if params.modulus_bits != modulus_bits or params.padded != vector_length:
        raise SecAggError("site-level DP parameters do not match the secure-aggregation round")
    if params.clip > cfg.site_level_dp_clip * (1 + _RTOL):
        raise SecAggError(f"the server's clip {params.clip:g} exceeds site-level-dp-clip "
                          f"{cfg.site_level_dp_clip:g}")
    if params.cohort > cohort_size and cfg.site_level_dp_underflow == "refuse":
        raise SecAggError(f"the server claims a cohort of {params.cohort} sites; "
                          f"the round has {cohort_size}")
    if mode == "central":
        return
    z = cfg.site_level_dp_noise_multiplier
    if z < 0:
        z = calibrate_site_noise(
            target_epsilon=cfg.site_level_dp_epsilon, delta=cfg.site_level_dp_delta,
            rounds=cfg.num_server_rounds, mode=mode, clip=params.clip, dim=params.dim,
            modulus_bits=params.modulus_bits, cohort=params.cohort,
            max_contributors=params.max_contributors)
    cohort_std = params.local_sigma * params.gamma * math.sqrt(params.cohort)
    if cohort_std < z * params.clip * (1 - _RTOL):
        raise SecAggError(f"the server's noise (std {cohort_std:.4g} in a sum of "
                          f"{params.cohort}) is below z*C = {z * params.clip:.4g}")


def encode_site_level_dp(delta: Mapping[str, np.ndarray], manifest: Manifest, plan: SiteLevelDPPlan,
                   cfg: RunConfig, secagg_config: Any, context: Any = None, *,
                   run_id: str | None = None) -> np.ndarray:
    """Check the round's parameters and return the site's noised encoding mod 2^k.

    ``run_id`` is the run's id in the round instructions, the one the privacy ledger, its
    signed summary and the audit key runs by; the site-level ledger is charged under it
    (Flower's ``context.run_id`` only when none is given).
    """
    try:
        params = DDGParams.from_config(plan.params)
    except (ValueError, TypeError) as exc:
        raise SecAggError(f"bad site-level DP parameters: {exc}") from None
    mode = plan.mode
    check_round_params(params, mode, cfg, cohort_size=len(secagg_config.cohort),
                       modulus_bits=secagg_config.modulus_bits,
                       vector_length=secagg_config.vector_length)
    if context is not None:
        state_dir = _state_dir(context, cfg)
        if state_dir is not None and mode == "distributed":
            check_site_level_price(params, cfg, state_dir=state_dir,
                                   run_id=str(context.run_id) if run_id is None else run_id,
                                   round_num=secagg_config.round,
                                   node_config=context.node_config)
        remember_round(context, params, mode, cfg, secagg_config.round)
    return encode_ddg(delta, manifest, params, secure_rng(), noise=(mode == "distributed"))


def _state_dir(context: Any, cfg: RunConfig) -> Path | None:
    from client.site import site_spec

    try:
        return site_spec(context.node_config, cfg).state_dir
    except Exception:  # noqa: BLE001 - a site without a spec has no ledger to keep
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def site_level_budget(cfg: RunConfig,
                      node_config: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(ε, δ)`` of the site-level budget a site holds a run to.

    The site's own ``site-level-epsilon`` / ``site-level-delta`` (its node config) when it
    sets them; otherwise the run's ``site-level-dp-epsilon`` / ``site-level-dp-delta``, which
    the site agreed to by taking part in the run. Either budget is per run.
    """
    node = node_config or {}
    eps, delta = _number(node.get("site-level-epsilon")), _number(node.get("site-level-delta"))
    budget = cfg.site_level_dp_epsilon if eps is None else eps
    d = cfg.site_level_dp_delta if delta is None else delta
    if not (math.isfinite(budget) and budget > 0) or not 0.0 < d < 1.0:
        raise SecAggError(f"bad site-level budget: site-level-epsilon={budget!r}, "
                          f"site-level-delta={d!r}")
    return budget, d


def check_site_level_price(params: DDGParams, cfg: RunConfig, *, state_dir: Path,
                           run_id: str, round_num: int,
                           node_config: Mapping[str, Any] | None = None) -> float:
    """Price the round with the site's own accountant; charge it, or refuse it.

    The round's site-level ε is :func:`privacy.ddg.site_level_epsilon` of the distributed discrete
    Gaussian with the grid γ, local σ, calibration cohort t (the contributors the noise is
    calibrated for), ring and padded dimension the coordinator sent, composed with every
    round of this run already charged in the site's own site-level ledger
    (:class:`privacy.ddg.site_ledger.SiteLevelLedger`, in ``state_dir``). Over the budget of
    :func:`site_level_budget` the round is refused (:class:`SecAggError`) with the ε it would
    cost; otherwise it is charged, atomically, before the vector leaves. Returns the ε after
    the round.
    """
    budget, delta = site_level_budget(cfg, node_config)
    ledger = SiteLevelLedger(state_dir)
    history = [SiteLevelDPRound.from_mapping(r["record"]) for r in ledger.charges()
               if r["run_id"] == run_id and r["round"] != round_num]
    record = params.round_record(params.cohort)
    eps_round = site_level_epsilon([record], delta=delta)
    eps_after = site_level_epsilon([*history, record], delta=delta)
    if eps_after > budget:
        raise SecAggError(
            f"site-level price: this round would cost site eps {eps_round:.4g} "
            f"(grid {params.gamma:.3g}, local sigma {params.local_sigma:.3g} grid units, "
            f"cohort {params.cohort}, ring 2^{params.modulus_bits}) and take the run to "
            f"site eps {eps_after:.4g} > budget {budget:g} at delta {delta:g}")
    ledger.charge(run_id=run_id, round_num=round_num, record=record, epsilon_after=eps_after,
                  budget=budget, delta=delta)
    return eps_after


_ROUND_KEY = "site-level-dp-round"


def remember_round(context: Any, params: DDGParams, mode: str, cfg: RunConfig,
                   round_num: int) -> None:
    """Keep what the unmask stage of this round must check (in ``context.state``)."""
    from flwr.app import ConfigRecord

    guard = int(mode == "distributed" and cfg.site_level_dp_underflow == "refuse")
    context.state[_ROUND_KEY] = ConfigRecord({"round": round_num, "cohort": params.cohort,
                                              "guard": guard})


def check_unmask(context: Any, request: Mapping[str, Any], secagg_config: Any,
                 node_id: int | None = None, *,
                 signed_contributors: Sequence[int] | None = None) -> int:
    """Refuse to help unmask a sum that cannot hold as many noised vectors as the cohort t.

    Returns the calibration cohort this site requires in the sum (0: no requirement), for
    ``SiteSession.unmask(min_contributors=...)``.

    Defence in depth against a coordinator that would unmask a round it should have refused.
    With ``signed_contributors`` (the set this site signed at the consistency check: exactly
    the inputs in any sum it helps unmask) the count is exact, in any graph. Without it, the
    unmask request names the live holders of this site's shares (its graph neighbours that
    sent a masked input, and itself); every other neighbour is not in the sum, so at most
    ``N - (neighbours - (alive - 1))`` of the round's ``N`` sites contributed: the exact count
    in the complete graph, an upper bound in a sparse one.
    """
    from privacy.secagg.payloads import get_ids

    if _ROUND_KEY not in context.state:
        return 0
    rec: Any = context.state[_ROUND_KEY]
    if int(rec["round"]) != secagg_config.round or not int(rec["guard"]):
        return 0
    cohort = int(rec["cohort"])
    if signed_contributors is not None:
        if len(signed_contributors) < cohort:
            raise SecAggError(f"the signed contributor set holds {len(signed_contributors)} "
                              f"sites, fewer than the calibration cohort {cohort}: the sum "
                              "would be under-noised")
        return cohort
    n = len(secagg_config.cohort)
    if secagg_config.degree >= n - 1:
        neighbours = n - 1
    elif node_id is None:  # cannot tell its neighbours apart
        return cohort
    else:
        neighbours = len(secagg_config.graph().neighbours(node_id))
    alive = get_ids(request, "alive")
    most = n - (neighbours - (len(alive) - 1))
    if most < cohort:
        raise SecAggError(f"the unmask request names {len(alive)} live holders of this "
                          f"site's shares, so at most {most} contributors are in the sum, "
                          f"fewer than the calibration cohort {cohort}: the sum "
                          "would be under-noised")
    return cohort
