"""Secure aggregation of encoded adapter deltas: Shamir, keys, masks, graphs, site and server."""

from privacy.secagg.cohort import SiteLimits, cohort_registry
from privacy.secagg.config import SecAggConfig, default_degree, default_threshold
from privacy.secagg.errors import SecAggAbort, SecAggError, StageError
from privacy.secagg.graph import MIN_COHORT, NeighbourGraph, validate_threshold
from privacy.secagg.guard import RoundGuard
from privacy.secagg.keys import (
    generate_identity_key,
    identity_private_bytes,
    identity_public_bytes,
    load_identity_private_key,
)
from privacy.secagg.server import SecAggResult, ServerSession
from privacy.secagg.site import SiteSession
from privacy.secagg.stages import Stage, check_transition, is_valid_transition

__all__ = [
    "MIN_COHORT",
    "NeighbourGraph",
    "RoundGuard",
    "SecAggAbort",
    "SecAggConfig",
    "SecAggError",
    "SecAggResult",
    "ServerSession",
    "SiteLimits",
    "SiteSession",
    "Stage",
    "StageError",
    "check_transition",
    "cohort_registry",
    "default_degree",
    "default_threshold",
    "generate_identity_key",
    "identity_private_bytes",
    "identity_public_bytes",
    "is_valid_transition",
    "load_identity_private_key",
    "validate_threshold",
]
