"""A malicious coordinator driving the unmodified site code learns no input, nor any sum of
fewer than t inputs: split views at unmask, Sybil names, replayed rounds, shrunk cohorts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privacy.secagg import SecAggAbort, SecAggConfig, SecAggError, keys, shamir
from privacy.secagg.guard import RoundGuard
from privacy.secagg.keys import generate_identity_key, identity_public_bytes
from privacy.secagg.sharebox import open_shares, seal_shares
from tests._secagg_adversary import Coordinator, Plan, split_view
from tests.test_secagg_harness import cohort_of, make_config, random_inputs, ring_sum, run_round


def _site_kwargs(tmp: Path) -> Any:
    """What deployment gives every site: its own persistent round record."""
    return lambda node: {"guard": RoundGuard(tmp / f"site-{node}")}


def _sets_plans(coord: Coordinator, sets: dict[int, list[int]]) -> dict[int, Plan]:
    """Unmask lists that follow each site's own announced set."""
    plans = {}
    for node, claimed in sets.items():
        held = coord.senders.get(node, [])
        alive = sorted({node, *(v for v in held if v in claimed)})
        plans[node] = (alive, sorted(v for v in held if v not in claimed))
    return plans


CASES = [  # (cohort size, degree or None for the default): complete and sparse graphs
    (5, None),
    (7, None),
    (11, None),
    (15, None),
    (20, None),
    (30, None),
]


@pytest.mark.parametrize("variant", ["split-lists", "split-sets"])
@pytest.mark.parametrize("n,degree", CASES, ids=[f"n{n}" for n, _ in CASES])
def test_split_view_at_unmask_recovers_nothing(
    n: int, degree: int | None, variant: str, tmp_path: Path
) -> None:
    nodes = list(range(100, 100 + n))
    config = make_config(nodes, degree=degree)
    cohort = cohort_of(nodes)
    inputs = random_inputs(config, seed=n)
    coord = Coordinator(config, cohort.identities, cohort.registry, _site_kwargs(tmp_path))
    graph, t = config.graph(), config.threshold
    target = nodes[n // 2]
    partners = list(graph.neighbours(target))[: t - 1]  # route the target only t - 1 shares
    coord.advertise()
    coord.share_keys()
    coord.masked_input(inputs, routing={target: partners})
    uploaders = sorted(coord.uploads)
    if variant == "split-lists":
        sets = {v: uploaders for v in uploaders}
        coord.consistency(sets)
        plans = split_view(config, target, partners)
    else:  # two groups, each announced its own set
        group_a = {target, *partners, *(v for v in nodes if not graph.are_neighbours(v, target))}
        set_a = sorted(v for v in uploaders if v in group_a)
        set_b = sorted(v for v in uploaders if v not in partners and v != target)
        sets = {v: set_a if v in group_a else set_b for v in uploaders}
        coord.consistency(sets)
        plans = _sets_plans(coord, sets)
    coord.unmask(plans, sets)

    recovered = coord.recover_input(target)
    assert recovered is None or not np.array_equal(recovered, inputs[target]), (
        f"target's input recovered; refusals: {len(coord.refusals)}"
    )
    leak = coord.smallest_leak()
    assert leak is None or leak >= t, f"sum of {leak} < t = {t} inputs recovered"


def _sybil_round(tmp_path: Path) -> tuple[Coordinator, SecAggConfig, dict[int, np.ndarray], int]:
    """Four nodes all named as one enrolled identity (mallory), plus one honest victim."""
    victim, sybils = 1, [2, 3, 4, 5]
    mallory = generate_identity_key()
    honest = generate_identity_key()
    registry = {victim: identity_public_bytes(honest)}
    registry |= {s: identity_public_bytes(mallory) for s in sybils}
    config = make_config([victim, *sybils])
    inputs = random_inputs(config, seed=5)
    coord = Coordinator(config, {victim: honest}, registry, _site_kwargs(tmp_path))
    binding, t = config.binding, config.threshold
    coord.advertise([victim])
    fake: dict[int, tuple[Any, Any, bytes]] = {}
    for s in sybils:  # the coordinator plays every Sybil with mallory's key
        enc_sk, enc_pk = keys.x25519_keypair()
        mask_sk, mask_pk = keys.x25519_keypair()
        seed = bytes(32)
        commit = keys.seed_commitment(seed, binding, node_id=s)
        sig = keys.sign_advertisement(
            mallory, binding, node_id=s, enc_pk=enc_pk, mask_pk=mask_pk, seed_commit=commit
        )
        coord.adverts[s] = {
            "enc-pk": enc_pk,
            "mask-pk": mask_pk,
            "seed-commit": commit,
            "signature": sig,
        }
        fake[s] = (enc_sk, mask_sk, seed)
    coord.share_keys()
    if victim in coord.boxes or coord.sites.get(victim) is not None:
        xs = [coord.x(v) for v in sorted([victim, *sybils])]
        for s in sybils:  # Sybils deal well-formed shares to the victim
            shares = shamir.split_secret(bytes(32), threshold=t, xs=xs)
            own = shares[sorted([victim, *sybils]).index(victim)]
            ct = (
                seal_shares(
                    fake[s][0],
                    coord.adverts[victim]["enc-pk"] if victim in coord.adverts else bytes(32),
                    binding,
                    sender=s,
                    recipient=victim,
                    seed_share=own,
                    key_share=own,
                )
                if victim in coord.adverts
                else b""
            )
            coord.boxes.setdefault(victim, {})[s] = ct
    coord.masked_input(inputs)
    # decrypt every share pair the victim sent to a Sybil
    for s in sybils:
        ct = coord.boxes.get(s, {}).get(victim)
        if ct is None:
            continue
        seed_share, key_share = open_shares(
            fake[s][0],
            coord.adverts[victim]["enc-pk"],
            binding,
            ct,
            sender=victim,
            recipient=s,
            own_x=coord.x(s),
        )
        coord.seed_shares.setdefault(victim, []).append(seed_share)
        coord.key_shares.setdefault(victim, []).append(key_share)
    return coord, config, inputs, victim


def test_sybil_names_recover_nothing(tmp_path: Path) -> None:
    coord, _, inputs, victim = _sybil_round(tmp_path)
    recovered = coord.recover_input(victim)
    assert recovered is None or not np.array_equal(recovered, inputs[victim])


def _attempt(
    config: SecAggConfig,
    inputs: dict[int, np.ndarray],
    tmp_path: Path,
    drop: dict[str, list[int]] | None = None,
) -> np.ndarray | None:
    """One honest-looking attempt of a round; None when the sites refuse it."""
    try:
        run = run_round(config, inputs=inputs, drop=drop, **_run_kwargs(tmp_path))
    except (SecAggError, SecAggAbort, AssertionError):
        return None
    assert run.result is not None
    return run.result.vector


def _run_kwargs(tmp: Path) -> dict[str, Any]:
    return {"site_kwargs": _site_kwargs(tmp)}


def test_replaying_a_round_without_one_site_recovers_nothing(tmp_path: Path) -> None:
    """Two attempts of one (run, round): {A, B, X} and {A, B}; training is deterministic, so
    the inputs are the same; subtracting the sums would give X's input.
    """
    nodes = [1, 2, 3]
    first = make_config(nodes, graph_seed=bytes(32))
    inputs = random_inputs(first, seed=3)
    sum_1 = _attempt(first, inputs, tmp_path)
    assert sum_1 is not None
    second = make_config(nodes, graph_seed=bytes([1]) * 32, attempt=1)  # same run and round
    sum_2 = _attempt(second, inputs, tmp_path, drop={"masked-input": [3]})
    if sum_2 is not None:
        diff = ring_sum([sum_1, (-sum_2.astype(np.int64)).astype(sum_1.dtype)], 32, 16)
        assert not np.array_equal(diff, inputs[3])


def test_shrinking_the_cohort_of_a_rerun_recovers_nothing(tmp_path: Path) -> None:
    """A re-run of the round over the cohort minus X: sum over {A, B, C, X} minus sum over
    {A, B, C} would give X's input.
    """
    first = make_config([1, 2, 3, 4])
    inputs = random_inputs(first, seed=4)
    sum_1 = _attempt(first, inputs, tmp_path)
    assert sum_1 is not None
    second = make_config([1, 2, 3], graph_seed=bytes([7]) * 32, attempt=1)
    sum_2 = _attempt(second, {v: inputs[v] for v in (1, 2, 3)}, tmp_path)
    if sum_2 is not None:
        diff = ring_sum([sum_1, (-sum_2.astype(np.int64)).astype(sum_1.dtype)], 32, 16)
        assert not np.array_equal(diff, inputs[4])
