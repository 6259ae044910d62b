"""Server-side recovery of the masks to remove: survivors' self masks, dropped sites' pairs.

Every reconstructed secret is checked before use: a self-mask seed against the commitment
its owner signed in its advertisement, a mask key against the public key it advertised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from privacy.secagg import keys, shamir
from privacy.secagg.errors import SecAggError
from privacy.secagg.graph import NeighbourGraph
from privacy.secagg.keys import RoundBinding

__all__ = ["Advert", "recover_mask_keys", "unrecoverable"]

#: ``(enc_pk, mask_pk, seed_commit, signature)`` of a verified advertisement.
Advert = tuple[bytes, bytes, bytes, bytes]


def _combine(shares: Sequence[bytes], threshold: int, what: str, node: int) -> bytes:
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} {what} shares of node {node}, need {threshold}")
    return shamir.combine_shares(shares, threshold=threshold)


def unrecoverable(
    graph: NeighbourGraph,
    *,
    threshold: int,
    shared: frozenset[int],
    contributors: frozenset[int],
) -> str | None:
    """Say why the contributors' sum cannot be unmasked, or None if it can.

    It can when at least ``threshold`` sites contributed, every contributor has at least
    ``threshold`` live holders of its seed shares (itself included), and every site that
    shared keys but did not contribute, and has a contributing neighbour, has at least
    ``threshold`` contributing neighbours holding its key shares.
    """
    t = threshold
    if len(contributors) < t:
        return f"{len(contributors)} sites sent a masked input, threshold is {t}"
    for node in sorted(contributors):
        live = sum(1 for v in graph.holders(node) if v in contributors)
        if live < t:
            return f"node {node} has {live} live share holders, threshold is {t}"
    for node in sorted(shared - contributors):
        live = sum(1 for v in graph.neighbours(node) if v in contributors)
        if 0 < live < t:
            return f"dropped node {node} has {live} live share holders, need {t}"
    return None


def recover_mask_keys(
    *,
    binding: RoundBinding,
    graph: NeighbourGraph,
    threshold: int,
    contributors: frozenset[int],
    dropped: frozenset[int],
    adverts: Mapping[int, Advert],
    seed_shares: Mapping[int, Sequence[bytes]],
    key_shares: Mapping[int, Sequence[bytes]],
) -> tuple[list[bytes], list[bytes]]:
    """Return the mask keys to add and to subtract to unmask the contributors' sum.

    Parameters
    ----------
    contributors : frozenset of int
        Sites whose masked input is in the sum (U3): their self masks are subtracted.
    dropped : frozenset of int
        Sites that shared keys but sent no masked input (U2 minus U3): their pairwise
        masks with contributors did not cancel and are undone.
    seed_shares, key_shares : mapping of int to sequence of bytes
        Shares of each owner's self-mask seed and mask key, as revealed in the unmask stage.

    Raises
    ------
    SecAggError
        If a secret has fewer than ``threshold`` shares or does not match what its owner
        committed to or advertised.
    """
    add: list[bytes] = []
    subtract: list[bytes] = []
    for node in sorted(contributors):
        seed = _combine(seed_shares.get(node, ()), threshold, "seed", node)
        commit = keys.seed_commitment(seed, binding, node_id=node)
        if not keys.ct_equal(commit, adverts[node][2]):
            raise SecAggError(f"seed shares of node {node} do not match its commitment")
        subtract.append(keys.self_mask_key(seed, binding, node_id=node))
    for node in sorted(dropped):
        live = [v for v in graph.neighbours(node) if v in contributors]
        if not live:
            continue
        raw = _combine(key_shares.get(node, ()), threshold, "key", node)
        secret = keys.x25519_private_from_bytes(raw)
        if not keys.ct_equal(keys.x25519_public_from_private(secret), adverts[node][1]):
            raise SecAggError(f"key shares of node {node} do not match its advertised key")
        for peer in live:
            shared = keys.agree(secret, adverts[peer][1])
            key = keys.pair_mask_key(shared, binding, a=node, b=peer)
            # the live peer added +mask if it is the smaller id, else -mask: undo that
            (subtract if peer < node else add).append(key)
    return add, subtract
