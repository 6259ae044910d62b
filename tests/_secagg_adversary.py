"""A malicious coordinator that drives honest, unmodified SiteSessions (no tests here).

It sends each site its own crafted request at every stage, keeps every reply, and then
reconstructs whatever the revealed shares allow. :meth:`Coordinator.smallest_leak` is an
information oracle: the size of the smallest set of uploads whose sum the coordinator can
strip of every mask (1 means it holds an individual input in the clear). The protocol's
promise is that this is never below the threshold t.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.secagg import SecAggConfig, SecAggError, SiteSession, keys, shamir
from privacy.secagg.masks import expand_mask
from privacy.secagg.payloads import CIPHERTEXT_LEN
from protocol.codec import ring_dtype

Plan = tuple[list[int], list[int]]  # (alive, dropped) in one site's unmask request


def _site_has_consistency() -> bool:
    return hasattr(SiteSession, "consistency_check")


@dataclass
class Coordinator:
    """Holds the honest sites of one attempt and everything they sent."""

    config: SecAggConfig
    identities: Mapping[int, Ed25519PrivateKey]  # of the honest sites it drives
    registry: Mapping[int, bytes]  # what the sites are told (may be crafted)
    site_kwargs: Callable[[int], dict[str, Any]] = lambda node: {}
    sites: dict[int, SiteSession] = field(default_factory=dict)
    adverts: dict[int, dict[str, Any]] = field(default_factory=dict)
    boxes: dict[int, dict[int, bytes]] = field(default_factory=dict)  # recipient -> sender -> ct
    senders: dict[int, list[int]] = field(default_factory=dict)  # what each site masked with
    uploads: dict[int, np.ndarray] = field(default_factory=dict)
    signatures: dict[tuple[int, ...], dict[int, bytes]] = field(default_factory=dict)
    seed_shares: dict[int, list[bytes]] = field(default_factory=dict)
    key_shares: dict[int, list[bytes]] = field(default_factory=dict)
    refusals: list[tuple[int, str, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ plumbing

    def _header(self, stage: str) -> dict[str, Any]:
        return {
            "run-id": self.config.run_id,
            "round": self.config.round,
            "stage": stage,
            "config-digest": self.config.digest(),
        }

    def _call(self, node: int, stage: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return fn()
        except (SecAggError, ValueError) as exc:
            self.refusals.append((node, stage, str(exc)))
            return {}

    def x(self, node: int) -> int:
        return self.config.cohort.index(node) + 1

    # ------------------------------------------------------------------ stages

    def advertise(self, nodes: Sequence[int] | None = None) -> None:
        payload = {**self.config.to_payload(), "stage": "advertise-keys"}
        for node in nodes if nodes is not None else self.identities:

            def go(node: int = node) -> dict[str, Any]:
                site = SiteSession.from_request(
                    payload,
                    node_id=node,
                    identity_key=self.identities[node],
                    registry=self.registry,
                    **self.site_kwargs(node),
                )
                self.sites[node] = site
                return site.advertise_keys(payload)

            reply = self._call(node, "advertise-keys", go)
            if reply:
                self.adverts[node] = reply

    def share_keys(self) -> None:
        graph = self.config.graph()
        for node, site in list(self.sites.items()):
            ids = [v for v in graph.neighbours(node) if v in self.adverts]
            request = {
                **self._header("share-keys"),
                "node-ids": ids,
                **{
                    f"{k}s": b"".join(self.adverts[v][k] for v in ids)
                    for k in ("enc-pk", "mask-pk", "seed-commit")
                },
                "signatures": b"".join(self.adverts[v]["signature"] for v in ids),
            }
            reply = self._call(node, "share-keys", lambda s=site, r=request: s.share_keys(r))
            if reply:
                cts = reply["ciphertexts"]
                for i, recipient in enumerate(reply["recipients"]):
                    ct = cts[i * CIPHERTEXT_LEN : (i + 1) * CIPHERTEXT_LEN]
                    self.boxes.setdefault(recipient, {})[node] = ct

    def masked_input(
        self, inputs: Mapping[int, np.ndarray], routing: Mapping[int, Sequence[int]] = {}
    ) -> None:
        """Send each site the shares of ``routing[site]`` (default: every share it got)."""
        for node, site in list(self.sites.items()):
            box = self.boxes.get(node, {})
            chosen = [v for v in routing.get(node, sorted(box)) if v in box]
            request = {
                **self._header("masked-input"),
                "senders": chosen,
                "ciphertexts": b"".join(box[v] for v in chosen),
            }
            reply = self._call(
                node,
                "masked-input",
                lambda s=site, r=request, n=node: s.masked_input(r, vector=inputs[n]),
            )
            if reply:
                self.senders[node] = chosen
                self.uploads[node] = reply["masked-vector"]

    def consistency(self, sets: Mapping[int, Sequence[int]]) -> None:
        """Ask each site to sign its own announced contributor set (if the protocol has it)."""
        if not _site_has_consistency():
            return
        for node, claimed in sets.items():
            request = {**self._header("consistency-check"), "contributors": list(claimed)}
            site = self.sites[node]
            reply = self._call(
                node, "consistency-check", lambda s=site, r=request: s.consistency_check(r)
            )
            if reply:
                self.signatures.setdefault(tuple(claimed), {})[node] = reply["signature"]

    def unmask(
        self, plans: Mapping[int, Plan], sets: Mapping[int, Sequence[int]] | None = None
    ) -> None:
        """Send each site its own alive / dropped lists (and its set with every signature
        the coordinator gathered on it); keep every share revealed.
        """
        for node, (alive, dropped) in plans.items():
            if node not in self.sites:
                continue
            request = {**self._header("unmask"), "alive": alive, "dropped": dropped}
            if _site_has_consistency():
                claimed = tuple((sets or {}).get(node, ()))
                sigs = self.signatures.get(claimed, {})
                request |= {
                    "contributors": list(claimed),
                    "signers": sorted(sigs),
                    "signatures": b"".join(sigs[v] for v in sorted(sigs)),
                }
            site = self.sites[node]
            reply = self._call(node, "unmask", lambda s=site, r=request: s.unmask(r))
            if not reply:
                continue
            w = shamir.SHARE_LEN
            for i, owner in enumerate(reply["seed-share-ids"]):
                self.seed_shares.setdefault(owner, []).append(
                    reply["seed-shares"][i * w : (i + 1) * w]
                )
            for i, owner in enumerate(reply["key-share-ids"]):
                self.key_shares.setdefault(owner, []).append(
                    reply["key-shares"][i * w : (i + 1) * w]
                )

    # ------------------------------------------------------------------ what it learnt

    def seed_of(self, owner: int) -> bytes | None:
        shares = self.seed_shares.get(owner, [])
        if len(shares) < self.config.threshold or owner not in self.adverts:
            return None
        seed = shamir.combine_shares(shares, threshold=self.config.threshold)
        commit = keys.seed_commitment(seed, self.config.binding, node_id=owner)
        return seed if commit == self.adverts[owner]["seed-commit"] else None

    def mask_key_of(self, owner: int) -> bytes | None:
        shares = self.key_shares.get(owner, [])
        if len(shares) < self.config.threshold or owner not in self.adverts:
            return None
        raw = shamir.combine_shares(shares, threshold=self.config.threshold)
        secret = keys.x25519_private_from_bytes(raw)
        ok = keys.x25519_public_from_private(secret) == self.adverts[owner]["mask-pk"]
        return raw if ok else None

    def pair_mask_known(self, a: int, b: int) -> bool:
        return self.mask_key_of(a) is not None or self.mask_key_of(b) is not None

    def smallest_leak(self) -> int | None:
        """Size of the smallest set of uploads whose sum is free of unknown masks, or None.

        A set qualifies when every member's self-mask seed is known and each of a member's
        pairwise masks is known or cancels inside the set (the partner is in the set and
        masked with the member too). The smallest such set containing ``v`` is the closure
        of ``v`` under "unknown pairwise mask".
        """
        best: int | None = None
        for start in self.uploads:
            members, todo, ok = {start}, [start], True
            while todo and ok:
                v = todo.pop()
                if self.seed_of(v) is None:
                    ok = False
                    break
                for p in self.senders[v]:
                    if self.pair_mask_known(v, p):
                        continue
                    if p not in self.uploads or v not in self.senders.get(p, []):
                        ok = False  # this mask never cancels
                        break
                    if p not in members:
                        members.add(p)
                        todo.append(p)
            if ok and (best is None or len(members) < best):
                best = len(members)
        return best

    def recover_input(self, node: int) -> np.ndarray | None:
        """``node``'s plaintext input, if every mask on its upload is known."""
        if node not in self.uploads:
            return None
        seed = self.seed_of(node)
        if seed is None or not all(self.pair_mask_known(node, p) for p in self.senders[node]):
            return None
        cfg, binding = self.config, self.config.binding
        length, bits = cfg.vector_length, cfg.modulus_bits
        total = self.uploads[node].astype(np.uint64)
        total -= expand_mask(
            keys.self_mask_key(seed, binding, node_id=node), length=length, modulus_bits=bits
        ).astype(np.uint64)
        for p in self.senders[node]:
            raw = self.mask_key_of(p)
            if raw is not None:
                shared = keys.agree(
                    keys.x25519_private_from_bytes(raw), self.adverts[node]["mask-pk"]
                )
            else:
                raw = self.mask_key_of(node)
                assert raw is not None
                shared = keys.agree(keys.x25519_private_from_bytes(raw), self.adverts[p]["mask-pk"])
            mask = expand_mask(
                keys.pair_mask_key(shared, binding, a=node, b=p), length=length, modulus_bits=bits
            ).astype(np.uint64)
            total = total - mask if node < p else total + mask  # undo what the site did
        if bits < 64:
            total &= np.uint64((1 << bits) - 1)
        return total.astype(ring_dtype(bits))


def split_view(config: SecAggConfig, target: int, partners: Sequence[int]) -> dict[int, Plan]:
    """The issue's split view: ``target`` alive to every holder of its shares, each of its
    masking ``partners`` dropped to every other holder of the partner's shares.

    No holder is told one owner is both alive and dropped; every list names only owners
    the holder holds shares of and at least ``threshold`` live holders.
    """
    graph = config.graph()
    plans: dict[int, Plan] = {}
    for node in config.cohort:
        if node == target:
            plans[node] = (sorted([target, *partners]), [])
            continue
        held = [v for v in graph.neighbours(node)]
        dropped = [v for v in held if v in partners]
        alive = sorted((set(held) - set(partners)) | {node})
        plans[node] = (alive, dropped)
    return plans
