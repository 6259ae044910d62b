"""The site's side of site-level DP: check the round's noise parameters, then encode.

A site does not take the coordinator's word for how much noise protects it. From its own
copy of the run configuration it recomputes the noise multiplier z (the configured one, or
the same deterministic calibration the server runs) and refuses a round whose parameters
would put less than ``(z C)^2`` of noise into a sum of the calibration cohort, claim a
cohort larger than the secure-aggregation cohort it was shown, use a larger clip, or switch
the run to central noise it did not agree to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from privacy.ddg import DDGParams, calibrate_site_noise, encode_ddg, secure_rng
from privacy.secagg import SecAggError
from protocol.codec import Manifest
from protocol.config import RunConfig
from protocol.instructions import SiteLevelDPPlan

__all__ = ["check_round_params", "check_unmask", "encode_site_level_dp", "remember_round"]

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
                   cfg: RunConfig, secagg_config: Any, context: Any = None) -> np.ndarray:
    """Check the round's parameters and return the site's noised encoding mod 2^k."""
    try:
        params = DDGParams.from_config(plan.params)
    except (ValueError, TypeError) as exc:
        raise SecAggError(f"bad site-level DP parameters: {exc}") from None
    mode = plan.mode
    check_round_params(params, mode, cfg, cohort_size=len(secagg_config.cohort),
                       modulus_bits=secagg_config.modulus_bits,
                       vector_length=secagg_config.vector_length)
    if context is not None:
        remember_round(context, params, mode, cfg, secagg_config.round)
    return encode_ddg(delta, manifest, params, secure_rng(), noise=(mode == "distributed"))


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
