"""Neighbour graphs are regular, symmetric, seed-determined; thresholds are range-checked."""

from __future__ import annotations

import pytest

from privacy.secagg import NeighbourGraph, default_degree, default_threshold, validate_threshold

SEED = bytes(range(32))


@pytest.mark.parametrize("n,k", [(3, 2), (10, 9), (17, 10), (50, 12), (101, 14), (500, 18)])
def test_graph_is_k_regular_and_symmetric(n: int, k: int) -> None:
    nodes = tuple(range(1000, 1000 + 7 * n, 7))
    graph = NeighbourGraph(nodes, k, SEED)
    for v in nodes:
        nb = graph.neighbours(v)
        assert len(nb) == k and v not in nb and list(nb) == sorted(set(nb))
        assert all(graph.are_neighbours(u, v) for u in nb)
        assert graph.holders(v) == tuple(sorted((*nb, v)))


def test_graph_is_a_function_of_the_seed_and_cohort() -> None:
    nodes = tuple(range(60))
    a = NeighbourGraph(nodes, 8, SEED)
    b = NeighbourGraph.for_cohort(list(reversed(nodes)), degree=8, seed=SEED)
    c = NeighbourGraph(nodes, 8, b"\x01" * 32)
    adj = {v: a.neighbours(v) for v in nodes}
    assert adj == {v: b.neighbours(v) for v in nodes}
    assert adj != {v: c.neighbours(v) for v in nodes}


def test_small_cohorts_use_the_complete_graph() -> None:
    assert default_degree(3) == 2 and default_degree(16) == 15
    assert default_degree(100) == 14 and default_degree(500) == 18
    graph = NeighbourGraph(tuple(range(10)), default_degree(10), SEED)
    assert graph.is_complete and graph.neighbours(0) == tuple(range(1, 10))


def test_default_threshold_is_a_valid_majority() -> None:
    for n in range(3, 600, 7):
        k = default_degree(n)
        validate_threshold(threshold=default_threshold(k), cohort_size=n, degree=k)


def test_unknown_node_is_named() -> None:
    with pytest.raises(ValueError, match="node 7"):
        NeighbourGraph(tuple(range(5)), 4, SEED).neighbours(7)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threshold": 3, "cohort_size": 2, "degree": 1}, "cohort_size"),
        ({"threshold": 3, "cohort_size": 10, "degree": 10}, "degree"),
        ({"threshold": 3, "cohort_size": 10, "degree": 5}, "even"),
        ({"threshold": 1, "cohort_size": 10, "degree": 4}, "threshold"),
        ({"threshold": 6, "cohort_size": 10, "degree": 4}, "degree \\+ 1"),
        ({"threshold": 2, "cohort_size": 10, "degree": 4}, "> \\(degree \\+ 1\\) / 2"),
        ({"threshold": True, "cohort_size": 10, "degree": 4}, "threshold"),
    ],
)
def test_bad_thresholds_are_named(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=match):
        validate_threshold(**kwargs)


@pytest.mark.parametrize(
    "nodes,degree,seed,match",
    [
        ((1, 1, 2), 2, SEED, "distinct"),
        ((1,), 1, SEED, "at least 2"),
        ((1, 2, 3, 4, 5), 3, SEED, "even"),
        ((1, 2, 3), 2, b"short", "seed"),
        ((1, 2, 3), 0, SEED, "degree"),
    ],
)
def test_bad_graphs_are_named(nodes: tuple[int, ...], degree: int, seed: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NeighbourGraph(nodes, degree, seed)


def test_pruning_cascades_until_every_kept_node_can_be_unmasked() -> None:
    from privacy.secagg.graph import prune_to_threshold

    nodes = tuple(range(12))
    graph = NeighbourGraph(nodes, 4, SEED)
    victim = nodes[0]
    alive = set(nodes) - set(graph.neighbours(victim)[:3])
    kept, removed = prune_to_threshold(graph, alive, threshold=3)
    assert victim in removed and victim not in kept
    for node in kept:
        assert sum(v in kept for v in graph.neighbours(node)) + 1 >= 3
    assert prune_to_threshold(graph, nodes, threshold=5) == (frozenset(nodes), ())
