"""Who may be in a round, as a site sees it: one identity per node, and bounded work.

A coordinator could name several nodes as one enrolled identity that it controls (a Sybil
cohort) and receive all of a victim's shares, or send a cohort so large that a site runs
out of memory. A site therefore refuses a registry in which two nodes share a name or a
key, and a cohort or degree above the caps of its own :class:`SiteLimits`, before any
work that grows with the cohort.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from privacy.secagg.errors import SecAggError

__all__ = ["SiteLimits", "check_distinct_identities", "cohort_registry"]


@dataclass(frozen=True)
class SiteLimits:
    """A site's own caps on the rounds it takes part in (never taken from the coordinator).

    Parameters
    ----------
    max_cohort : int
        Most sites a round may sample (default 10,000).
    max_degree : int
        Most neighbours this site masks with and holds shares of (default 64); the complete
        graph has degree ``cohort - 1``, so this also caps complete-graph cohorts.
    min_threshold : int
        Fewest shares (and contributors) a round's threshold may ask for (default 2).
    """

    max_cohort: int = 10_000
    max_degree: int = 64
    min_threshold: int = 2

    def __post_init__(self) -> None:
        for name, low in (("max_cohort", 3), ("max_degree", 2), ("min_threshold", 2)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")

    def request_problem(self, request: Mapping[str, Any]) -> str | None:
        """Check an advertise-keys request's cohort and degree against the caps, or None.

        O(1): it looks only at the length of the cohort list and at two ints, so it runs
        before the config is parsed or the graph built.
        """
        cohort, degree, threshold = (request.get(k) for k in ("cohort", "degree", "threshold"))
        # malformed values are left to the config parser, which names them
        if isinstance(cohort, (list, tuple)) and len(cohort) > self.max_cohort:
            return f"cohort of {len(cohort)} sites exceeds this site's cap of {self.max_cohort}"
        if type(degree) is int and degree > self.max_degree:
            return f"degree {degree} exceeds this site's cap of {self.max_degree}"
        if type(threshold) is int and threshold < self.min_threshold:
            return f"threshold {threshold} is below this site's minimum {self.min_threshold}"
        return None


def check_distinct_identities(registry: Mapping[int, bytes], nodes: Iterable[int]) -> None:
    """Refuse unless every node in ``nodes`` has its own identity key in ``registry``.

    Raises
    ------
    SecAggError
        If a node has no key, or two nodes share one.
    """
    seen: dict[bytes, int] = {}
    for node in nodes:
        key = registry.get(node)
        if not isinstance(key, bytes):
            raise SecAggError(f"node {node} has no identity key in the registry")
        if key in seen:
            raise SecAggError(f"nodes {seen[key]} and {node} share one identity key")
        seen[key] = node


def cohort_registry(names: Mapping[int, str], enrolment: Mapping[str, bytes]) -> dict[int, bytes]:
    """Map each node to the identity key of the enrolled name the coordinator gives it.

    Raises
    ------
    SecAggError
        If a name is not enrolled, two nodes are given one name, or two names share a key.
    """
    by_name: dict[str, int] = {}
    registry: dict[int, bytes] = {}
    for node, name in names.items():
        if type(node) is not int or not isinstance(name, str):
            raise SecAggError("cohort names must map node ids to names")
        if name not in enrolment:
            raise SecAggError(f"the server names node {node} as {name!r}, which is not enrolled")
        if name in by_name:
            raise SecAggError(f"the server names nodes {by_name[name]} and {node} both {name!r}")
        by_name[name] = node
        registry[node] = enrolment[name]
    check_distinct_identities(registry, registry)
    return registry
