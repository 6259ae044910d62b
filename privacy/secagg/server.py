"""The server's side of one secure-aggregation round.

Drive it stage by stage: ``*_requests()`` closes the previous stage and returns one
request payload per site still in the round; ``receive_*()`` takes one site's reply and
returns whether it was accepted (a rejected reply is logged with its reason and leaves
the sum untouched; the site then counts as dropped). :meth:`ServerSession.finish`
reconstructs the secrets it needs and returns the aggregate vector mod 2^k.

Sets, in the notation of Bonawitz et al. (2017): U1 advertised keys, U2 shared keys, U3
sent a masked input, U4 signed U3 at the consistency check. The server keeps only the
running sum of masked inputs, never an individual one. When fewer than ``threshold`` sites
(or shares, or ``signature_threshold`` signatures) remain, it raises
:class:`~privacy.secagg.errors.SecAggAbort` and forgets the sum.

Malicious sites: no reply, however malformed (wrong types, wrong lengths, bad signatures,
low-order keys, wrong shares), raises out of a ``receive_*`` method; it is rejected with a
named reason and that site leaves the round. Every revealed share is checked against the
commitment its owner sent at share time, so a lying holder is dropped and any t valid
shares reconstruct the secret.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from privacy.secagg import keys, shamir
from privacy.secagg.errors import SecAggError
from privacy.secagg.masks import apply_masks
from privacy.secagg.payloads import (
    get_ids,
    ring_vector_problem,
    split_fixed,
)
from privacy.secagg.recovery import recover_mask_keys, unrecoverable
from privacy.secagg.server_base import SecAggResult, ServerBase, _never_raises
from privacy.secagg.stages import Stage, check_transition
from protocol.codec import ring_dtype
from protocol.secure_stats import round_label

__all__ = ["SecAggResult", "ServerSession"]

logger = logging.getLogger(__name__)


class ServerSession(ServerBase):
    """The server's state machine for one round (parameters: see :class:`ServerBase`)."""

    # ------------------------------------------------------------------ stage 1

    def advertise_requests(self) -> dict[int, dict[str, Any]]:
        """Open stage 1: the config, sent to every sampled site."""
        self._advance(Stage.ADVERTISE_KEYS)
        logger.info("%s", self._config.summary())
        payload = {**self._config.to_payload(), "stage": Stage.ADVERTISE_KEYS.value}
        return {node: dict(payload) for node in self._config.cohort}

    @_never_raises(Stage.ADVERTISE_KEYS)
    def receive_advertisement(self, node_id: int, reply: Mapping[str, Any]) -> bool:
        """Accept a site's signed public keys (bad signature, duplicate, unsampled: rejected)."""
        stage = Stage.ADVERTISE_KEYS
        reason = self._accept(node_id, reply, stage, frozenset(self._config.cohort))
        if reason is None and node_id in self._adverts:
            reason = "duplicate advertisement"
        if reason is not None:
            return self._reject(node_id, stage, reason)
        fields = tuple(reply[k] for k in ("enc-pk", "mask-pk", "seed-commit", "signature"))
        try:
            keys.verify_advertisement(
                self._registry[node_id],
                fields[3],
                self._binding,
                node_id=node_id,
                enc_pk=fields[0],
                mask_pk=fields[1],
                seed_commit=fields[2],
            )
        except SecAggError as exc:
            return self._reject(node_id, stage, str(exc))
        self._adverts[node_id] = fields
        return True

    # ------------------------------------------------------------------ stage 2

    def share_keys_requests(self) -> dict[int, dict[str, Any]]:
        """Close stage 1 and open stage 2: each site gets its neighbours' signed adverts.

        Raises
        ------
        SecAggAbort
            If fewer than ``threshold`` sites advertised keys.
        """
        self._advance(Stage.SHARE_KEYS)
        self._u1 = self._prune(set(self._adverts), Stage.ADVERTISE_KEYS)
        requests = {}
        for node in sorted(self._u1):
            ids = [v for v in self._graph.neighbours(node) if v in self._u1]
            self._expected_recipients[node] = ids
            adverts = [self._adverts[v] for v in ids]
            requests[node] = {
                **self._header(Stage.SHARE_KEYS),
                "node-ids": ids,
                "enc-pks": b"".join(a[0] for a in adverts),
                "mask-pks": b"".join(a[1] for a in adverts),
                "seed-commits": b"".join(a[2] for a in adverts),
                "signatures": b"".join(a[3] for a in adverts),
            }
        return requests

    @_never_raises(Stage.SHARE_KEYS)
    def receive_shares(self, node_id: int, reply: Mapping[str, Any]) -> bool:
        """Accept a site's encrypted shares, one ciphertext per neighbour, for routing."""
        stage = Stage.SHARE_KEYS
        reason = self._accept(node_id, reply, stage, self._u1)
        if reason is None and node_id in self._shared:
            reason = "duplicate shares"
        if reason is None:
            try:
                recipients = get_ids(reply, "recipients")
                if recipients != self._expected_recipients[node_id]:
                    raise SecAggError("`recipients` differ from the neighbours it was sent")
                ciphertexts = split_fixed(reply, "ciphertexts", len(recipients))
                holders = sorted([*recipients, node_id])
                commits = split_fixed(reply, "share-commits", len(holders))
            except SecAggError as exc:
                reason = str(exc)
        if reason is not None:
            return self._reject(node_id, stage, reason)
        self._commits[node_id] = {
            h: (c[: keys.KEY_LEN], c[keys.KEY_LEN :]) for h, c in zip(holders, commits, strict=True)
        }
        for recipient, ciphertext in zip(recipients, ciphertexts, strict=True):
            self._inbox.setdefault(recipient, {})[node_id] = ciphertext
        self._shared.add(node_id)
        return True

    # ------------------------------------------------------------------ stage 3

    def masked_input_requests(self) -> dict[int, dict[str, Any]]:
        """Close stage 2 and open stage 3: route each site the shares addressed to it.

        Raises
        ------
        SecAggAbort
            If fewer than ``threshold`` sites shared keys.
        """
        self._advance(Stage.MASKED_INPUT)
        self._u2 = self._prune(set(self._shared), Stage.SHARE_KEYS)
        requests = {}
        for node in sorted(self._u2):
            box = self._inbox.get(node, {})
            senders = [v for v in self._graph.neighbours(node) if v in self._u2 and v in box]
            requests[node] = {
                **self._header(Stage.MASKED_INPUT),
                "senders": senders,
                "ciphertexts": b"".join(box[v] for v in senders),
            }
        self._inbox.clear()
        self._acc = np.zeros(
            self._config.vector_length, dtype=ring_dtype(self._config.modulus_bits)
        )
        return requests

    @_never_raises(Stage.MASKED_INPUT)
    def receive_masked_input(self, node_id: int, reply: Mapping[str, Any]) -> bool:
        """Add a site's masked vector to the running sum (wrong length/dtype: rejected)."""
        stage = Stage.MASKED_INPUT
        reason = self._accept(node_id, reply, stage, self._u2)
        if reason is None and node_id in self._u3:
            reason = "duplicate masked input"
        vector = reply.get("masked-vector") if reason is None else None
        if reason is None:
            problem = ring_vector_problem(
                vector,
                modulus_bits=self._config.modulus_bits,
                length=self._config.vector_length,
            )
            reason = None if problem is None else f"`masked-vector` {problem}"
        if reason is not None:
            return self._reject(node_id, stage, reason)
        assert self._acc is not None and isinstance(vector, np.ndarray)
        # in the ring's own dtype: the sum wraps mod 2^(8 * itemsize), which 2^k divides,
        # so it is exact mod 2^k; finish() reduces it mod 2^k
        np.add(self._acc, vector, out=self._acc)
        self._u3.add(node_id)
        return True

    # ------------------------------------------------------------------ stage 4

    def consistency_requests(self) -> dict[int, dict[str, Any]]:
        """Close stage 3 and open stage 4: announce the contributor set U3 to each member.

        Raises
        ------
        SecAggAbort
            If fewer than ``signature_threshold`` sites sent a masked input, or a secret that
            must be reconstructed has fewer than ``threshold`` live holders.
        """
        self._advance(Stage.CONSISTENCY_CHECK)
        u3 = frozenset(self._u3)
        reason = unrecoverable(
            self._graph, threshold=self._config.threshold, shared=self._u2, contributors=u3
        )
        need = self._config.signature_threshold
        if reason is None and len(u3) < need:
            reason = f"{len(u3)} sites sent a masked input, {need} consistency signatures needed"
        if reason is not None:
            raise self._abort(reason)
        announced = sorted(u3)
        return {
            node: {**self._header(Stage.CONSISTENCY_CHECK), "contributors": list(announced)}
            for node in announced
        }

    @_never_raises(Stage.CONSISTENCY_CHECK)
    def receive_consistency(self, node_id: int, reply: Mapping[str, Any]) -> bool:
        """Accept a contributor's signature over the announced set (invalid: rejected)."""
        stage = Stage.CONSISTENCY_CHECK
        reason = self._accept(node_id, reply, stage, frozenset(self._u3))
        if reason is None and node_id in self._signatures:
            reason = "duplicate consistency signature"
        if reason is None:
            try:
                keys.verify_contributors(
                    self._registry[node_id],
                    reply["signature"],
                    self._binding,
                    signer=node_id,
                    attempt=self._config.attempt,
                    contributors=tuple(sorted(self._u3)),
                )
            except SecAggError as exc:
                reason = str(exc)
        if reason is not None:
            return self._reject(node_id, stage, reason)
        self._signatures[node_id] = reply["signature"]
        return True

    def unmask_requests(self) -> dict[int, dict[str, Any]]:
        """Close stage 4 and open stage 5: ask each signer for the shares to unmask.

        A signer is sent the set, ``signature_threshold`` valid signatures over it (what a
        site needs, and checks, before it reveals anything: sending all of them would only
        make every site verify up to n signatures, n^2 per round), and the lists the set
        implies: the self-mask-seed shares of every contributor it holds shares of (itself
        included) and the mask-key shares of its neighbours that shared keys but sent no
        masked input.

        Raises
        ------
        SecAggAbort
            If fewer than ``signature_threshold`` contributors signed the set.
        """
        self._advance(Stage.UNMASK)
        u3, need = frozenset(self._u3), self._config.signature_threshold
        signers = sorted(self._signatures)
        if len(signers) < need:
            raise self._abort(f"{len(signers)} consistency signatures, need {need}")
        shown = signers[:need]  # every one verified on receipt
        proof = {
            "contributors": sorted(u3),
            "signers": shown,
            "signatures": b"".join(self._signatures[v] for v in shown),
        }
        requests = {}
        for node in signers:
            alive = [v for v in self._graph.holders(node) if v in u3]
            dropped = [v for v in self._graph.neighbours(node) if v in self._u2 and v not in u3]
            self._unmask_lists[node] = (alive, dropped)
            requests[node] = {
                **self._header(Stage.UNMASK),
                "alive": alive,
                "dropped": dropped,
                **proof,
            }
        return requests

    @_never_raises(Stage.UNMASK)
    def receive_unmask(self, node_id: int, reply: Mapping[str, Any]) -> bool:
        """Collect a site's shares (ids must match what it was asked; x must be its own)."""
        stage = Stage.UNMASK
        reason = self._accept(node_id, reply, stage, frozenset(self._unmask_lists))
        if reason is None and node_id in self._unmask_done:
            reason = "duplicate unmask reply"
        if reason is None:
            try:
                alive, dropped = self._unmask_lists[node_id]
                if get_ids(reply, "seed-share-ids") != alive:
                    raise SecAggError("`seed-share-ids` differ from the request")
                if get_ids(reply, "key-share-ids") != dropped:
                    raise SecAggError("`key-share-ids` differ from the request")
                seed_shares = split_fixed(reply, "seed-shares", len(alive))
                key_shares = split_fixed(reply, "key-shares", len(dropped))
                own_x = self._config.cohort.index(node_id) + 1
                if any(shamir.share_x(s) != own_x for s in (*seed_shares, *key_shares)):
                    raise SecAggError("a share is not the sender's own")
                for kind, index, owners, shares in (
                    (b"seed", 0, alive, seed_shares),
                    (b"key", 1, dropped, key_shares),
                ):
                    for owner, share in zip(owners, shares, strict=True):
                        commit = self._commits.get(owner, {}).get(node_id)
                        made = keys.share_commitment(
                            share, self._binding, owner=owner, holder=node_id, kind=kind
                        )
                        if commit is None or not keys.ct_equal(made, commit[index]):
                            raise SecAggError(
                                f"{kind.decode()} share of node {owner} does not match "
                                "the commitment its owner sent"
                            )
            except SecAggError as exc:
                reason = str(exc)
        if reason is not None:
            return self._reject(node_id, stage, reason)
        self._unmask_done.add(node_id)
        for owner, share in zip(alive, seed_shares, strict=True):
            self._seed_shares.setdefault(owner, []).append(share)
        for owner, share in zip(dropped, key_shares, strict=True):
            self._key_shares.setdefault(owner, []).append(share)
        return True

    def finish(self) -> SecAggResult:
        """Close stage 4: reconstruct, remove the masks, return the aggregate.

        Raises
        ------
        SecAggAbort
            If a needed secret has fewer than ``threshold`` shares, or a reconstructed
            secret does not match what its owner committed to or advertised.
        """
        check_transition(self._stage, Stage.DONE)
        cfg, t, u3 = self._config, self._config.threshold, frozenset(self._u3)
        try:
            add, subtract = recover_mask_keys(
                binding=self._binding,
                graph=self._graph,
                threshold=t,
                contributors=u3,
                dropped=self._u2 - u3,
                adverts=self._adverts,
                seed_shares=self._seed_shares,
                key_shares=self._key_shares,
            )
        except SecAggError as exc:
            raise self._abort(f"reconstruction failed: {exc}") from None
        assert self._acc is not None
        vector = apply_masks(self._acc, add=add, subtract=subtract, modulus_bits=cfg.modulus_bits)
        self._acc = None
        self._seed_shares.clear()
        self._key_shares.clear()
        self._stage = Stage.DONE
        dropped = tuple(n for n in cfg.cohort if n not in u3)
        logger.info(
            "secure aggregation round %s: %d contributors, %d dropped, threshold %d",
            round_label(cfg.round),
            len(u3),
            len(dropped),
            t,
        )
        return SecAggResult(
            vector=vector,
            contributors=tuple(sorted(u3)),
            dropped=dropped,
            threshold=t,
            rejections=tuple(self._rejections),
        )
