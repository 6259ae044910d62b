"""The bodies of a site's share-keys, masked-input and unmask stages (see :mod:`.site`).

:class:`SiteStages` is the half of :class:`~privacy.secagg.site.SiteSession` that works on
the secrets; the session's public methods check the stage, call these, and wipe on failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from privacy.secagg import keys, shamir
from privacy.secagg.config import SecAggConfig
from privacy.secagg.consistency import check_signed_set, expected_lists
from privacy.secagg.errors import SecAggError
from privacy.secagg.guard import RoundGuard
from privacy.secagg.keys import RoundBinding
from privacy.secagg.masks import apply_masks
from privacy.secagg.payloads import get_ids, split_fixed
from privacy.secagg.sharebox import open_shares, seal_shares
from privacy.secagg.site_state import SiteSecrets
from privacy.secagg.stages import Stage

__all__ = ["SiteStages"]

logger = logging.getLogger("privacy.secagg.site")


class SiteStages:
    """Stage bodies over the session's state (attributes set by ``SiteSession``)."""

    _config: SecAggConfig
    _binding: RoundBinding
    _node_id: int
    _registry: dict[int, bytes]
    _neighbours: frozenset[int]
    _x: dict[int, int]
    _stage: Stage
    _secrets: SiteSecrets
    _guard: RoundGuard | None

    def _header(self, stage: Stage) -> dict[str, Any]:
        return {
            "run-id": self._config.run_id,
            "round": self._config.round,
            "stage": stage.value,
            "node-id": self._node_id,
        }

    def _share_keys(self, request: Mapping[str, Any]) -> dict[str, Any]:
        sec = self._secrets
        assert sec.enc_sk is not None and sec.mask_sk is not None and sec.seed is not None
        ids = get_ids(request, "node-ids", max_len=len(self._config.cohort))
        count = len(ids)
        fields = {
            k: split_fixed(request, k, count)
            for k in ("enc-pks", "mask-pks", "seed-commits", "signatures")
        }
        for node in ids:
            if node not in self._neighbours:
                raise SecAggError(f"share-keys request names node {node}, not a neighbour")
        if count + 1 < self._config.threshold:
            raise SecAggError(
                f"only {count} neighbours advertised keys; threshold is {self._config.threshold}"
            )
        for i, node in enumerate(ids):  # signatures are checked before anything is used
            if node not in self._registry:
                raise SecAggError(f"node {node} has no identity key in the registry")
            keys.verify_advertisement(
                self._registry[node],
                fields["signatures"][i],
                self._binding,
                node_id=node,
                enc_pk=fields["enc-pks"][i],
                mask_pk=fields["mask-pks"][i],
                seed_commit=fields["seed-commits"][i],
            )
        sec.peers = {n: (fields["enc-pks"][i], fields["mask-pks"][i]) for i, n in enumerate(ids)}
        holders = sorted([*ids, self._node_id])
        xs = [self._x[h] for h in holders]
        t = self._config.threshold
        seed_shares = shamir.split_secret(bytes(sec.seed), threshold=t, xs=xs)
        key_shares = shamir.split_secret(keys.x25519_private_bytes(sec.mask_sk), threshold=t, xs=xs)
        recipients, ciphertexts, commits = [], [], []
        for holder, seed_share, key_share in zip(holders, seed_shares, key_shares, strict=True):
            for kind, share in ((b"seed", seed_share), (b"key", key_share)):
                commits.append(
                    keys.share_commitment(
                        share, self._binding, owner=self._node_id, holder=holder, kind=kind
                    )
                )
            if holder == self._node_id:
                sec.own_seed_share = seed_share  # own key share is never kept nor revealed
                continue
            recipients.append(holder)
            ciphertexts.append(
                seal_shares(
                    sec.enc_sk,
                    sec.peers[holder][0],
                    self._binding,
                    sender=self._node_id,
                    recipient=holder,
                    seed_share=seed_share,
                    key_share=key_share,
                )
            )
        self._stage = Stage.SHARE_KEYS
        return {
            **self._header(Stage.SHARE_KEYS),
            "recipients": recipients,
            "ciphertexts": b"".join(ciphertexts),
            "share-commits": b"".join(commits),  # one pair per holder, ascending, self too
        }

    def _masked_input(self, request: Mapping[str, Any], vector: np.ndarray) -> dict[str, Any]:
        sec = self._secrets
        assert sec.enc_sk is not None and sec.mask_sk is not None and sec.seed is not None
        senders = get_ids(request, "senders", max_len=len(self._config.cohort))
        ciphertexts = split_fixed(request, "ciphertexts", len(senders))
        for node in senders:
            if node not in sec.peers:
                raise SecAggError(f"masked-input request names node {node}, not a neighbour")
        if len(senders) + 1 < self._config.threshold:
            raise SecAggError(
                f"only {len(senders)} neighbours shared keys; threshold is {self._config.threshold}"
            )
        held = {
            node: open_shares(
                sec.enc_sk,
                sec.peers[node][0],
                self._binding,
                ciphertext,
                sender=node,
                recipient=self._node_id,
                own_x=self._x[self._node_id],
            )
            for node, ciphertext in zip(senders, ciphertexts, strict=True)
        }
        plus = [keys.self_mask_key(sec.seed, self._binding, node_id=self._node_id)]
        minus: list[bytes] = []
        for node in senders:
            shared = keys.agree(sec.mask_sk, sec.peers[node][1])
            key = keys.pair_mask_key(shared, self._binding, a=self._node_id, b=node)
            (plus if self._node_id < node else minus).append(key)
        masked = apply_masks(
            vector,
            add=plus,
            subtract=minus,
            modulus_bits=self._config.modulus_bits,
            out=np.empty_like(vector),
        )
        if self._guard is not None:  # written before the masked vector leaves
            cfg = self._config
            self._guard.claim_masked_input(cfg.run_id, cfg.round, cfg.attempt)
        sec.held = held
        sec.drop_key_material()
        self._stage = Stage.MASKED_INPUT
        logger.debug("node %d: masked input with %d neighbours", self._node_id, len(senders))
        return {**self._header(Stage.MASKED_INPUT), "masked-vector": masked}

    def _unmask(self, request: Mapping[str, Any], min_contributors: int) -> dict[str, Any]:
        n = len(self._config.cohort)
        alive = get_ids(request, "alive", max_len=n)
        dropped = get_ids(request, "dropped", max_len=n)
        both = set(alive) & set(dropped)
        if both:
            raise SecAggError(f"unmask request names node {min(both)} both alive and dropped")
        if self._node_id not in alive:
            raise SecAggError("unmask request does not list this site as alive")
        for node in (*alive, *dropped):
            if node != self._node_id and node not in self._secrets.held:
                raise SecAggError(f"unmask request names node {node}, whose shares are not held")
        if len(alive) < self._config.threshold:
            raise SecAggError(
                f"unmask request names {len(alive)} live holders; threshold is "
                f"{self._config.threshold}"
            )
        signed = self._secrets.contributors
        assert signed is not None
        check_signed_set(request, config=self._config, signed=signed, registry=self._registry)
        implied = expected_lists(signed, node_id=self._node_id, held=sorted(self._secrets.held))
        if (alive, dropped) != implied:
            raise SecAggError("unmask lists differ from what the signed contributor set implies")
        if type(min_contributors) is not int or len(signed) < min_contributors:
            raise SecAggError(
                f"the signed contributor set holds {len(signed)} sites, fewer than the "
                f"{min_contributors} this site requires"
            )
        if self._guard is not None:
            cfg = self._config
            self._guard.claim_unmask(cfg.run_id, cfg.round, cfg.attempt)
        own, held = self._secrets.own_seed_share, self._secrets.held
        assert own is not None
        seed_shares = [own if v == self._node_id else held[v][0] for v in alive]
        key_shares = [held[v][1] for v in dropped]
        return {
            **self._header(Stage.UNMASK),
            "seed-share-ids": alive,
            "seed-shares": b"".join(seed_shares),
            "key-share-ids": dropped,
            "key-shares": b"".join(key_shares),
        }
