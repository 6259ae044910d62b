"""Fault injection for simulation scenarios: crash a site at a named point of a round."""

from __future__ import annotations

import logging

from protocol.config import RunConfig
from protocol.wire import fault_point

__all__ = ["SimulatedCrash", "inject_fault"]

logger = logging.getLogger(__name__)


class SimulatedCrash(RuntimeError):
    """A fault injected by the ``faults`` scenario setting (simulation only)."""


def inject_fault(cfg: RunConfig, site: str, point: str, round_num: int | None) -> None:
    """Crash here if the scenario says so: ``faults = "site@point[@round],..."``.

    Points (:data:`protocol.wire.FAULT_POINTS`): the secure-aggregation stages
    ``advertise-keys`` (or ``advertise``), ``share-keys`` (or ``share``), ``masked-input``,
    ``unmask``, and the plain ``train`` message. Used by the simulation scenarios and tests to
    drop a site at a given point of a round.
    """
    for item in filter(None, (x.strip() for x in cfg.faults.split(","))):
        parts = item.split("@")
        if len(parts) not in (2, 3):
            raise ValueError(f"`faults` entry {item!r} must be site@stage[@round]")
        if parts[0] == site and fault_point(parts[1]) == point and (
                len(parts) == 2 or round_num is None or int(parts[2]) == round_num):
            logger.warning("site %s: injected crash at %s (round %s)", site, point, round_num)
            raise SimulatedCrash(f"site {site} crashed at {point} (injected fault)")
