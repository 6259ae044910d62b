"""Site-level DP of the aggregate: distributed discrete Gaussian noise inside secure aggregation."""

from privacy.ddg.accounting import (
    MODES,
    SiteLevelDPRound,
    rdp_of_round,
    rounded_l2_bound,
    site_level_epsilon,
)
from privacy.ddg.codec import WrapError, central_noisy_sum, decode_ddg, encode_ddg
from privacy.ddg.params import DDGParams, calibrate_site_noise, plan_round
from privacy.ddg.rotation import RandomizedHadamard, padded_dim
from privacy.ddg.sampler import (
    sample_discrete_gaussian,
    sample_discrete_gaussian_exact,
    secure_rng,
)

__all__ = [
    "MODES",
    "DDGParams",
    "RandomizedHadamard",
    "SiteLevelDPRound",
    "WrapError",
    "calibrate_site_noise",
    "central_noisy_sum",
    "decode_ddg",
    "encode_ddg",
    "padded_dim",
    "plan_round",
    "rdp_of_round",
    "rounded_l2_bound",
    "sample_discrete_gaussian",
    "sample_discrete_gaussian_exact",
    "secure_rng",
    "site_level_epsilon",
]
