"""The site's ConsistencyCheck (Bonawitz et al., CCS 2017): one signed contributor set.

Each check each site applies on its own, never trusting the coordinator's lists:

- before signing, the announced set S must be sorted, drawn from the cohort, hold this
  site, hold at least ``signature_threshold`` sites, and agree with the masked-input
  routing this site accepted: every neighbour in S is one whose shares it received (so it
  masked with it), and S holds at least t - 1 of those (t live holders of its own shares);
- an honest site signs one set per attempt (its state machine signs once; its round
  record allows one masked input per round, hence one attempt);
- before revealing, it needs valid signatures over exactly the set it signed from at least
  ``signature_threshold`` distinct members of S, each checked against the registry, and
  the alive / dropped lists must be exactly what S implies for this site.

Why that suffices: ``signature_threshold`` is a strict majority of the cohort, so two
different sets cannot both gather enough signatures from honest sites (a coordinator that
colludes with c sites needs ``c >= 2 * signature_threshold - n``). Every honest unmasker
therefore reveals, for every owner, the same kind of share: seeds of the members of S, mask
keys of the others. Pairwise masks between two members of S stay secret, and each member
masked with at least t - 1 others in S, so the smallest set of inputs whose sum is free of
masks has at least t members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from privacy.secagg import keys
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggError
from privacy.secagg.payloads import get_ids, split_fixed

__all__ = ["check_announced_set", "check_signed_set", "expected_lists"]


def check_announced_set(
    request: Mapping[str, Any], *, config: SecAggConfig, node_id: int, masked_with: Sequence[int]
) -> tuple[int, ...]:
    """Return the announced contributor set if this site may sign it.

    Raises
    ------
    SecAggError
        Naming the check that failed.
    """
    cohort = config.cohort
    announced = get_ids(request, "contributors", max_len=len(cohort))
    if announced != sorted(announced):
        raise SecAggError("the contributor set must be sorted")
    members = set(announced)
    if not members <= set(cohort):
        raise SecAggError("the contributor set names a node outside the cohort")
    if node_id not in members:
        raise SecAggError("the contributor set does not hold this site")
    need = config.signature_threshold
    if len(members) < need:
        raise SecAggError(f"the contributor set holds {len(members)} sites, fewer than {need}")
    graph = config.graph()
    partners = set(masked_with)
    stray = [v for v in graph.neighbours(node_id) if v in members and v not in partners]
    if stray:
        raise SecAggError(
            f"the contributor set holds neighbour {stray[0]}, whose shares this site never got"
        )
    live = 1 + len(partners & members)
    if live < config.threshold:
        raise SecAggError(
            f"the contributor set holds {live} live holders of this site's shares; "
            f"threshold is {config.threshold}"
        )
    return tuple(announced)


def check_signed_set(
    request: Mapping[str, Any],
    *,
    config: SecAggConfig,
    signed: tuple[int, ...],
    registry: Mapping[int, bytes],
) -> None:
    """Check an unmask request's set and signatures against the set this site signed.

    Raises
    ------
    SecAggError
        If the set differs, or fewer than ``signature_threshold`` distinct members of the
        set signed it validly (any invalid signature is refused outright).
    """
    cohort = config.cohort
    announced = get_ids(request, "contributors", max_len=len(cohort))
    if tuple(announced) != signed:
        raise SecAggError("the unmask request is for another contributor set than this site signed")
    signers = get_ids(request, "signers", max_len=len(cohort))
    need = config.signature_threshold
    if len(signers) < need:
        raise SecAggError(f"{len(signers)} consistency signatures, need {need}")
    members = set(signed)
    outside = [v for v in signers if v not in members]
    if outside:
        raise SecAggError(f"consistency signer {outside[0]} is not in the contributor set")
    binding = config.binding  # O(cohort) to compute: once, not once per signature
    for signer, signature in zip(
        signers, split_fixed(request, "signatures", len(signers)), strict=True
    ):
        public = registry.get(signer)
        if public is None:
            raise SecAggError(f"consistency signer {signer} has no identity key in the registry")
        keys.verify_contributors(
            public,
            signature,
            binding,
            signer=signer,
            attempt=config.attempt,
            contributors=signed,
        )


def expected_lists(
    signed: tuple[int, ...], *, node_id: int, held: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Return the alive and dropped lists the signed set implies for this site."""
    members = set(signed)
    alive = sorted({node_id, *(v for v in held if v in members)})
    return alive, sorted(v for v in held if v not in members)
