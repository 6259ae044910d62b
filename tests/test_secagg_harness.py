"""In-process harness driving SiteSession and ServerSession through one round (no tests here).

Dropout points, by stage name:

- ``advertise-keys``: the site never replies to the advertise request;
- ``share-keys``: it advertised, then vanished before sending its shares;
- ``masked-input``: it shared keys, then vanished before sending its masked input;
- ``consistency-check``: it sent its masked input, then vanished before signing;
- ``unmask``: it signed the contributor set, then vanished before revealing shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.secagg import SecAggConfig, SecAggResult, ServerSession, SiteSession
from privacy.secagg.keys import generate_identity_key, identity_public_bytes
from protocol.codec import ring_dtype
from protocol.wire import SECAGG_STAGES, Stage

STAGES = SECAGG_STAGES


@dataclass
class Cohort:
    """Identity keys and registry of a set of sites."""

    nodes: list[int]
    identities: dict[int, Ed25519PrivateKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.identities:
            self.identities = {v: generate_identity_key() for v in self.nodes}

    @property
    def registry(self) -> dict[int, bytes]:
        return {v: identity_public_bytes(k) for v, k in self.identities.items()}


_COHORT_CACHE: dict[tuple[int, ...], Cohort] = {}


def cohort_of(nodes: Sequence[int]) -> Cohort:
    """A (cached) cohort with identity keys for ``nodes``."""
    key = tuple(sorted(nodes))
    if key not in _COHORT_CACHE:
        _COHORT_CACHE[key] = Cohort(list(key))
    return _COHORT_CACHE[key]


def make_config(
    nodes: Sequence[int],
    *,
    modulus_bits: int = 32,
    vector_length: int = 16,
    run_id: int = 11,
    round: int = 2,
    degree: int | None = None,
    threshold: int | None = None,
    graph_seed: bytes = bytes(range(32)),
    attempt: int = 0,
) -> SecAggConfig:
    return SecAggConfig.create(
        run_id=run_id,
        round=round,
        cohort=list(nodes),
        modulus_bits=modulus_bits,
        vector_length=vector_length,
        degree=degree,
        threshold=threshold,
        graph_seed=graph_seed,
        attempt=attempt,
    )


def random_inputs(config: SecAggConfig, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = ring_dtype(config.modulus_bits)
    return {
        v: (
            rng.integers(0, 2**63, config.vector_length, dtype=np.uint64)
            >> (64 - config.modulus_bits)
        ).astype(dtype)
        for v in config.cohort
    }


def ring_sum(vectors: Sequence[np.ndarray], modulus_bits: int, length: int) -> np.ndarray:
    total = np.zeros(length, dtype=np.uint64)
    for vec in vectors:
        total += vec.astype(np.uint64)
    if modulus_bits < 64:
        total &= np.uint64((1 << modulus_bits) - 1)
    return total.astype(ring_dtype(modulus_bits))


@dataclass
class RoundRun:
    """Everything a test may want to inspect after driving a round."""

    config: SecAggConfig
    server: ServerSession
    sites: dict[int, SiteSession]
    inputs: dict[int, np.ndarray]
    uploads: dict[int, np.ndarray] = field(default_factory=dict)
    replies: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    requests: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    result: SecAggResult | None = None


def run_round(
    config: SecAggConfig,
    *,
    inputs: Mapping[int, np.ndarray] | None = None,
    drop: Mapping[str, Sequence[int]] | None = None,
    server: ServerSession | None = None,
    tamper: Callable[[str, int, dict[str, Any]], dict[str, Any]] | None = None,
    stop_after: str | None = None,
    site_kwargs: Callable[[int], dict[str, Any]] | None = None,
) -> RoundRun:
    """Drive one round; ``tamper(stage, node, request)`` may rewrite requests to sites;
    ``site_kwargs(node)`` adds keyword arguments (a guard, limits) to each SiteSession.

    Raises whatever the server or a site raises (e.g. SecAggAbort).
    """
    cohort = cohort_of(config.cohort)
    drop = {k: set(v) for k, v in (drop or {}).items()}
    server = server or ServerSession(config=config, registry=cohort.registry)
    run = RoundRun(config, server, {}, dict(inputs or random_inputs(config)))

    def deliver(stage: str, requests: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        run.requests[stage] = requests
        replies = {}
        for node, request in requests.items():
            if tamper is not None:
                request = tamper(stage, node, request)
            site = run.sites[node]
            if stage == Stage.MASKED_INPUT:
                replies[node] = site.masked_input(request, vector=run.inputs[node])
            else:
                replies[node] = getattr(site, stage.replace("-", "_"))(request)
        run.replies[stage] = replies
        return {n: r for n, r in replies.items() if n not in drop.get(stage, set())}

    requests = server.advertise_requests()
    for node, request in requests.items():
        run.sites[node] = SiteSession.from_request(
            request,
            node_id=node,
            identity_key=cohort.identities[node],
            registry=cohort.registry,
            **(site_kwargs(node) if site_kwargs is not None else {}),
        )
    for node, reply in deliver(Stage.ADVERTISE_KEYS, requests).items():
        assert server.receive_advertisement(node, reply)
    if stop_after == Stage.ADVERTISE_KEYS:
        return run
    for node, reply in deliver(Stage.SHARE_KEYS, server.share_keys_requests()).items():
        assert server.receive_shares(node, reply)
    if stop_after == Stage.SHARE_KEYS:
        return run
    for node, reply in deliver(Stage.MASKED_INPUT, server.masked_input_requests()).items():
        run.uploads[node] = reply["masked-vector"]
        assert server.receive_masked_input(node, reply)
    if stop_after == Stage.MASKED_INPUT:
        return run
    for node, reply in deliver(Stage.CONSISTENCY_CHECK, server.consistency_requests()).items():
        assert server.receive_consistency(node, reply)
    if stop_after == Stage.CONSISTENCY_CHECK:
        return run
    for node, reply in deliver(Stage.UNMASK, server.unmask_requests()).items():
        assert server.receive_unmask(node, reply)
    if stop_after == Stage.UNMASK:
        return run
    run.result = server.finish()
    return run


def expected_outcome(
    config: SecAggConfig, drop: Mapping[str, Sequence[int]]
) -> tuple[bool, frozenset[int]]:
    """Independent oracle: (completes?, contributors) under the protocol's rules."""
    graph = config.graph()
    t = config.threshold

    def prune(alive: set[int]) -> set[int] | None:
        changed = True
        while changed:
            changed = False
            for v in sorted(alive):
                if sum(u in alive for u in graph.neighbours(v)) + 1 < t:
                    alive.discard(v)
                    changed = True
        return alive if len(alive) >= t else None

    u1 = prune(set(config.cohort) - set(drop.get(Stage.ADVERTISE_KEYS, ())))
    if u1 is None:
        return False, frozenset()
    u2 = prune(u1 - set(drop.get(Stage.SHARE_KEYS, ())))
    if u2 is None:
        return False, frozenset()
    u3 = u2 - set(drop.get(Stage.MASKED_INPUT, ()))
    if len(u3) < t:
        return False, frozenset()
    for v in u3:  # every secret to reconstruct needs t live holders (checked before signing)
        if sum(u in u3 for u in graph.holders(v)) < t:
            return False, frozenset()
    for d in u2 - u3:
        live = [u for u in graph.neighbours(d) if u in u3]
        if live and len(live) < t:
            return False, frozenset()
    need = config.signature_threshold  # a strict majority of the cohort must sign U3
    if len(u3) < need:
        return False, frozenset()
    signers = u3 - set(drop.get(Stage.CONSISTENCY_CHECK, ()))
    if len(signers) < need:
        return False, frozenset()
    responders = signers - set(drop.get(Stage.UNMASK, ()))
    for v in u3:
        holders = graph.holders(v)
        if sum(u in u3 for u in holders) < t or sum(u in responders for u in holders) < t:
            return False, frozenset()
    for d in u2 - u3:
        live = [u for u in graph.neighbours(d) if u in u3]
        if live and (len(live) < t or sum(u in responders for u in live) < t):
            return False, frozenset()
    return True, frozenset(u3)


def signed_unmask_requests(run: RoundRun, *, skip: Sequence[int] = ()) -> dict[int, dict[str, Any]]:
    """After the masked inputs: run the consistency check (sites in ``skip`` never sign),
    then return the server's unmask requests.
    """
    server = run.server
    for node, request in server.consistency_requests().items():
        if node not in skip:
            assert server.receive_consistency(node, run.sites[node].consistency_check(request))
    return server.unmask_requests()
