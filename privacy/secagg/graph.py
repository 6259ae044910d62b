"""Neighbourhoods: who masks with whom and who holds whose shares.

Small cohorts use the complete graph. Larger ones use a k-regular Harary (circulant)
graph over a random ordering of the nodes, as in SecAgg+ (Bell et al. 2020): each node
is joined to the k/2 nodes before and after it in the ordering. The ordering sorts nodes
by ``SHA-256(seed || node id)``, so the graph is a deterministic function of a 32-byte seed
that the server fixes (in the round's configuration) before any key is shared.

A node's shares are held by its neighbours and by itself (``degree + 1`` holders); a
threshold t of them reconstructs a secret.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "COMPLETE_GRAPH_MAX",
    "MIN_COHORT",
    "NeighbourGraph",
    "default_degree",
    "default_threshold",
    "prune_to_threshold",
    "validate_threshold",
]

#: Cohorts up to this size use the complete graph by default.
COMPLETE_GRAPH_MAX = 16
_SEED_LEN = 32


def default_degree(n_nodes: int) -> int:
    """Return the default degree for a cohort of ``n_nodes``.

    ``n - 1`` (the complete graph) up to :data:`COMPLETE_GRAPH_MAX` nodes, else the even
    number ``2 * ceil(log2 n)`` (14 for 100 nodes, 18 for 500).
    """
    if type(n_nodes) is not int or n_nodes < 1:
        raise ValueError(f"`n_nodes` must be an int >= 1, got {n_nodes!r}")
    if n_nodes <= COMPLETE_GRAPH_MAX:
        return n_nodes - 1
    return min(n_nodes - 1, 2 * math.ceil(math.log2(n_nodes)))


def default_threshold(degree: int) -> int:
    """Default threshold: the smallest strict majority of the ``degree + 1`` holders."""
    if type(degree) is not int or degree < 1:
        raise ValueError(f"`degree` must be an int >= 1, got {degree!r}")
    return max(2, (degree + 1) // 2 + 1)


#: fewest sites a secure sum can be set up over (a threshold t >= 2 below the cohort)
MIN_COHORT = 3


def validate_threshold(*, threshold: int, cohort_size: int, degree: int) -> None:
    """Check a threshold against the cohort size and the graph degree.

    The shares of a node go to its ``degree`` neighbours and itself. A threshold t must
    satisfy ``2 <= t <= degree + 1`` (reconstructable, and never a single input on its own)
    and ``2 t > degree + 1``: an honest holder reveals for a node either its self-mask share
    or its key share, never both, so no server can gather t of each.

    Raises
    ------
    ValueError
        Naming the field and value that is out of range.
    """
    if type(cohort_size) is not int or cohort_size < MIN_COHORT:
        raise ValueError(f"`cohort_size` must be an int >= {MIN_COHORT}, got {cohort_size!r}")
    if type(degree) is not int or not 2 <= degree <= cohort_size - 1:
        raise ValueError(f"`degree` must be an int in [2, {cohort_size - 1}], got {degree!r}")
    if degree != cohort_size - 1 and degree % 2:
        raise ValueError(
            f"`degree` must be even (or {cohort_size - 1} for the complete graph), got {degree}"
        )
    if type(threshold) is not int or threshold < 2:
        raise ValueError(f"`threshold` must be an int >= 2, got {threshold!r}")
    if threshold > degree + 1:
        raise ValueError(f"`threshold` must be <= degree + 1 = {degree + 1}, got {threshold}")
    if 2 * threshold <= degree + 1:
        raise ValueError(
            f"`threshold` must be > (degree + 1) / 2 = {(degree + 1) / 2}, got {threshold}"
        )


@dataclass(frozen=True)
class NeighbourGraph:
    """Undirected regular graph over a cohort of node ids.

    Parameters
    ----------
    nodes : tuple of int
        The cohort: distinct node ids.
    degree : int
        ``len(nodes) - 1`` for the complete graph, otherwise an even number < n - 1.
    seed : bytes
        32 bytes fixing the random ordering of the Harary graph.
    """

    nodes: tuple[int, ...]
    degree: int
    seed: bytes
    _pos: dict[int, int] = field(init=False, repr=False, compare=False)
    _order: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _cache: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, tuple) or any(type(v) is not int for v in self.nodes):
            raise ValueError(f"`nodes` must be a tuple of ints, got {self.nodes!r}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("`nodes` must be distinct")
        n = len(self.nodes)
        if n < 2:
            raise ValueError(f"`nodes` must hold at least 2 node ids, got {n}")
        if type(self.degree) is not int or not 1 <= self.degree <= n - 1:
            raise ValueError(f"`degree` must be an int in [1, {n - 1}], got {self.degree!r}")
        if self.degree != n - 1 and self.degree % 2:
            raise ValueError(f"`degree` must be even or {n - 1}, got {self.degree}")
        if not isinstance(self.seed, bytes) or len(self.seed) != _SEED_LEN:
            raise ValueError(f"`seed` must be {_SEED_LEN} bytes")
        # O(n log n) time and O(n) memory: neighbourhoods are computed on demand (O(degree)
        # each, O(n) in the complete graph) and cached, never all n^2 of them up front
        if self.is_complete:
            order = tuple(sorted(self.nodes))
        else:
            order = tuple(
                sorted(
                    self.nodes,
                    key=lambda v: hashlib.sha256(self.seed + struct.pack(">Q", v)).digest(),
                )
            )
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_pos", {v: i for i, v in enumerate(order)})
        object.__setattr__(self, "_cache", {})

    def _near(self, node_id: int) -> tuple[int, ...]:
        i = self._pos[node_id]
        if self.is_complete:
            return self._order[:i] + self._order[i + 1 :]
        order, half = self._order, self.degree // 2
        n = len(order)
        near = {order[(i + d) % n] for d in range(1, half + 1)}
        near |= {order[(i - d) % n] for d in range(1, half + 1)}
        return tuple(sorted(near))

    @property
    def is_complete(self) -> bool:
        """Whether every node neighbours every other."""
        return self.degree == len(self.nodes) - 1

    def neighbours(self, node_id: int) -> tuple[int, ...]:
        """Sorted neighbours of ``node_id`` (excluding itself)."""
        if type(node_id) is not int or node_id not in self._pos:
            raise ValueError(f"node {node_id!r} is not in the cohort")
        found = self._cache.get(node_id)
        if found is None:
            found = self._cache[node_id] = self._near(node_id)
        return found

    def holders(self, node_id: int) -> tuple[int, ...]:
        """Sorted holders of ``node_id``'s shares: its neighbours and itself."""
        return tuple(sorted((*self.neighbours(node_id), node_id)))

    def are_neighbours(self, a: int, b: int) -> bool:
        """Whether ``a`` and ``b`` are adjacent."""
        if type(a) is not int or type(b) is not int or a == b:
            return False
        if a not in self._pos or b not in self._pos:
            return False
        if self.is_complete:
            return True
        n = len(self._order)
        gap = (self._pos[a] - self._pos[b]) % n
        return min(gap, n - gap) <= self.degree // 2

    @classmethod
    def for_cohort(cls, nodes: Sequence[int], *, degree: int, seed: bytes) -> NeighbourGraph:
        """Build the graph for a cohort given in any order."""
        return cls(tuple(sorted(nodes)), degree, seed)


def prune_to_threshold(
    graph: NeighbourGraph, alive: Iterable[int], *, threshold: int
) -> tuple[frozenset[int], tuple[int, ...]]:
    """Drop live nodes with fewer than ``threshold - 1`` live neighbours, repeatedly.

    A node whose neighbourhood (with itself) holds fewer than ``threshold`` live sites
    could never have its secrets reconstructed; removing it can starve its neighbours, so
    the rule is applied until nothing changes.

    Returns
    -------
    kept : frozenset of int
        The nodes that stay.
    removed : tuple of int
        The nodes dropped, in the order they were dropped.
    """
    kept = set(alive)
    removed: list[int] = []
    changed = True
    while changed:
        changed = False
        for node in sorted(kept):
            live = sum(1 for v in graph.neighbours(node) if v in kept)
            if live + 1 < threshold:
                kept.discard(node)
                removed.append(node)
                changed = True
    return frozenset(kept), tuple(removed)
