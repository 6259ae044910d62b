"""A site's side of one secure-aggregation round.

Each method takes the server's request payload for one stage and returns the reply payload
(see :mod:`privacy.secagg.payloads` for the keys). Requests for another run, round, config
or stage are refused before anything is used; a failure inside a stage (bad signature, bad
ciphertext, an unsafe unmask request) aborts the session and wipes its secrets.

Stages: advertise-keys, share-keys, masked-input, consistency-check, unmask.

Per-round secrets: two X25519 key pairs (``enc`` for share encryption, ``mask`` for
pairwise masks) and a 32-byte self-mask seed. They are dropped as soon as the masked
input is sent; what remains until the unmask stage are the shares held for neighbours.
:meth:`SiteSession.to_state` / :meth:`SiteSession.from_state` carry the session across
Flower messages (in ``context.state``); :meth:`SiteSession.wipe` ends it.

Threat model. The coordinator may be malicious: it may send any message to any site, route
shares as it likes, claim any contributor set to anyone, replay or re-run a round, choose
every parameter, and collude with c enrolled sites. Against it an honest site's input is
revealed only inside a sum of at least t inputs of one round (at least t - c honest ones),
provided c < 2 * signature_threshold - n (the consistency check's majority; with the
defaults, c = 0 or 1) and c < t; a site raises its own floor with
:class:`~privacy.secagg.cohort.SiteLimits`. What stops each attack:

- split views at unmask: the consistency check (:mod:`privacy.secagg.consistency`);
- Sybil identities: one key per node (:func:`~privacy.secagg.cohort.cohort_registry`);
- replays, re-runs, shrunk cohorts: one masked input per (run, round) and unmask help for
  that attempt only, recorded on disk (:class:`~privacy.secagg.guard.RoundGuard`); a
  second attempt of a round the site already contributed to is refused (training the
  same round twice with the same randomness is issue 14's, at the training layer);
- site-level DP under-noising: ``unmask(..., min_contributors=...)`` checks the
  calibration cohort against the signed set;
- resource exhaustion: caps from :class:`SiteLimits` before any work that grows with n;
  low-order X25519 keys refused.

Not covered: a site may poison the sum with an out-of-range input (masking hides inputs,
it does not bound them; that needs input proofs such as ACORN or RoFL), and a malicious
site that deals inconsistent shares of its own secrets can make the round abort (never
unmask wrongly: every reconstructed secret is checked against its owner's commitment).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.secagg import keys
from privacy.secagg.cohort import SiteLimits, check_distinct_identities
from privacy.secagg.config import SecAggConfig
from privacy.secagg.consistency import check_announced_set
from privacy.secagg.errors import SecAggError
from privacy.secagg.guard import RoundGuard
from privacy.secagg.payloads import (
    REQUEST_KEYS,
    check_request,
    ring_vector_problem,
)
from privacy.secagg.site_stages import SiteStages
from privacy.secagg.site_state import SiteSecrets, dump_state, load_state
from privacy.secagg.stages import Stage, check_transition

__all__ = ["SiteSession"]

logger = logging.getLogger(__name__)


class SiteSession(SiteStages):
    """One site's state machine for one round.

    Parameters
    ----------
    config : SecAggConfig
        The round's configuration (from the advertise-keys request:
        :meth:`from_request`).
    node_id : int
        This site's node id; must be in ``config.cohort``.
    identity_key : Ed25519PrivateKey
        This site's long-term identity key; signs the advertised keys.
    registry : mapping of int to bytes
        Raw Ed25519 identity public keys of every site of the cohort, by node id (build it
        with :func:`~privacy.secagg.cohort.cohort_registry`); a neighbour's advertisement
        and a consistency signature count only after they verify against it. Two nodes
        with one key are refused.
    limits : SiteLimits, optional
        This site's own caps on cohort size, degree and threshold.
    guard : RoundGuard, optional
        The site's persistent round record: at most one masked input per (run, round) and
        unmask help for that attempt only. Deployment must pass one (per-message work runs
        in a fresh process); without it, replays across sessions are not stopped.
    """

    def __init__(
        self,
        *,
        config: SecAggConfig,
        node_id: int,
        identity_key: Ed25519PrivateKey,
        registry: Mapping[int, bytes],
        limits: SiteLimits | None = None,
        guard: RoundGuard | None = None,
    ) -> None:
        if not isinstance(config, SecAggConfig):
            raise ValueError(f"`config` must be a SecAggConfig, got {type(config).__name__}")
        self._limits = limits or SiteLimits()
        problem = self._limits.request_problem(config.to_payload())
        if problem is not None:
            raise SecAggError(f"refused: {problem}")
        if type(node_id) is not int or node_id not in config.cohort:
            raise ValueError(f"`node_id` {node_id!r} is not in the round's cohort")
        if not isinstance(identity_key, Ed25519PrivateKey):
            raise ValueError("`identity_key` must be an Ed25519PrivateKey")
        self._registry = dict(registry)
        check_distinct_identities(self._registry, config.cohort)
        if not keys.ct_equal(self._registry[node_id], keys.identity_public_bytes(identity_key)):
            raise SecAggError("the registry gives this site another identity key")
        self._config = config
        self._binding = config.binding
        self._node_id = node_id
        self._identity_key = identity_key
        self._guard = guard
        self._neighbours = frozenset(config.graph().neighbours(node_id))
        self._x = {v: i + 1 for i, v in enumerate(config.cohort)}  # Shamir evaluation points
        self._stage = Stage.SETUP
        self._secrets = SiteSecrets()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_request(
        cls,
        request: Mapping[str, Any],
        *,
        node_id: int,
        identity_key: Ed25519PrivateKey,
        registry: Mapping[int, bytes],
        limits: SiteLimits | None = None,
        guard: RoundGuard | None = None,
    ) -> SiteSession:
        """Create the session from the server's advertise-keys request.

        The cohort size, degree and threshold are checked against ``limits`` before the
        config is parsed, in time and memory independent of the cohort's size.

        Raises
        ------
        SecAggError
            If the request's config is malformed or exceeds this site's limits.
        """
        if not isinstance(request, Mapping):
            raise SecAggError("advertise-keys request must be a mapping")
        problem = (limits or SiteLimits()).request_problem(request)
        if problem is not None:
            raise SecAggError(f"refused: {problem}")
        try:
            config = SecAggConfig.from_payload(request, allow_extra=("stage",))
        except (ValueError, TypeError) as exc:
            raise SecAggError(f"invalid secure-aggregation config: {exc}") from None
        return cls(
            config=config,
            node_id=node_id,
            identity_key=identity_key,
            registry=registry,
            limits=limits,
            guard=guard,
        )

    @property
    def stage(self) -> Stage:
        """The last stage this session completed (or ``SETUP``, ``DONE``, ``ABORTED``)."""
        return self._stage

    @property
    def config(self) -> SecAggConfig:
        """The round's configuration."""
        return self._config

    @property
    def node_id(self) -> int:
        """Node id of this site."""
        return self._node_id

    @property
    def signed_contributors(self) -> tuple[int, ...] | None:
        """The contributor set this site signed at the consistency check (None before).

        Its length is the exact number of inputs in any sum this site helps unmask: a site
        checks a calibration cohort (site-level DP) against it, not against the
        coordinator's word.
        """
        return self._secrets.contributors

    # ------------------------------------------------------------------ helpers

    def _enter(self, request: Mapping[str, Any], stage: Stage) -> None:
        """Refuse a request for another run, round, config or stage (state unchanged)."""
        check_transition(self._stage, stage)
        if stage == Stage.ADVERTISE_KEYS:
            check_request(
                request,
                stage=stage,
                binding=self._binding,
                extra=[k for k in self._config.to_payload() if k not in ("run-id", "round")],
                with_digest=False,
            )
            try:
                same = SecAggConfig.from_payload(request, allow_extra=("stage",)) == self._config
            except (ValueError, TypeError):
                same = False
            if not same:
                raise SecAggError("advertise-keys request is for another config")
        else:
            check_request(request, stage=stage, binding=self._binding, extra=REQUEST_KEYS[stage])

    def _fail(self, exc: Exception) -> SecAggError:
        logger.warning(
            "node %d: secure aggregation aborted after stage %r: %s",
            self._node_id,
            self._stage.value,
            exc,
        )
        self.wipe()
        return exc if isinstance(exc, SecAggError) else SecAggError(str(exc))

    # ------------------------------------------------------------------ stages

    def advertise_keys(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Stage 1: fresh X25519 key pairs and self-mask seed; sign the public parts."""
        self._enter(request, Stage.ADVERTISE_KEYS)
        sec = self._secrets
        sec.enc_sk, enc_pk = keys.x25519_keypair()
        sec.mask_sk, mask_pk = keys.x25519_keypair()
        sec.seed = bytearray(os.urandom(keys.KEY_LEN))
        commit = keys.seed_commitment(sec.seed, self._binding, node_id=self._node_id)
        signature = keys.sign_advertisement(
            self._identity_key,
            self._binding,
            node_id=self._node_id,
            enc_pk=enc_pk,
            mask_pk=mask_pk,
            seed_commit=commit,
        )
        self._stage = Stage.ADVERTISE_KEYS
        logger.debug("node %d: advertised keys for round %d", self._node_id, self._config.round)
        return {
            **self._header(Stage.ADVERTISE_KEYS),
            "enc-pk": enc_pk,
            "mask-pk": mask_pk,
            "seed-commit": commit,
            "signature": signature,
        }

    def share_keys(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Stage 2: verify neighbours' adverts, Shamir-share seed and mask key to them."""
        self._enter(request, Stage.SHARE_KEYS)
        try:
            return self._share_keys(request)
        except (SecAggError, ValueError) as exc:
            raise self._fail(exc) from None

    def masked_input(self, request: Mapping[str, Any], *, vector: np.ndarray) -> dict[str, Any]:
        """Stage 3: store neighbours' shares, return ``vector`` + pairwise masks + self mask.

        With a :class:`RoundGuard`, the masked input of this (run, round) is claimed on disk
        first; a second one, for any attempt, is refused.

        Parameters
        ----------
        request : mapping
            The server's masked-input request (the shares addressed to this site).
        vector : numpy.ndarray
            The encoded update (see :func:`protocol.codec.encode`): 1-D, length
            ``config.vector_length``, dtype ``ring_dtype(config.modulus_bits)``. Not modified.
        """
        self._enter(request, Stage.MASKED_INPUT)
        problem = ring_vector_problem(
            vector, modulus_bits=self._config.modulus_bits, length=self._config.vector_length
        )
        if problem is not None:
            raise ValueError(f"`vector`: {problem}")
        try:
            return self._masked_input(request, vector)
        except (SecAggError, ValueError) as exc:
            raise self._fail(exc) from None

    def consistency_check(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Stage 4: sign the announced contributor set, if it agrees with what this site saw.

        See :mod:`privacy.secagg.consistency` for the checks. A site signs one set per
        session and reveals nothing here.
        """
        self._enter(request, Stage.CONSISTENCY_CHECK)
        try:
            signed = check_announced_set(
                request,
                config=self._config,
                node_id=self._node_id,
                masked_with=sorted(self._secrets.held),
            )
        except (SecAggError, ValueError) as exc:
            raise self._fail(exc) from None
        signature = keys.sign_contributors(
            self._identity_key, self._binding, attempt=self._config.attempt, contributors=signed
        )
        self._secrets.contributors = signed
        self._stage = Stage.CONSISTENCY_CHECK
        return {**self._header(Stage.CONSISTENCY_CHECK), "signature": signature}

    def unmask(self, request: Mapping[str, Any], *, min_contributors: int = 0) -> dict[str, Any]:
        """Stage 5: reveal seed shares of live holders and key shares of dropped ones.

        Refuses (and aborts) a request that names a node whose shares this site does not
        hold, names a node both alive and dropped, lists this site as dropped, names
        fewer than ``threshold`` live holders of this site's shares, is for another set
        than this site signed, carries fewer than ``signature_threshold`` valid signatures
        over it, or lists alive / dropped nodes other than that set implies.

        Parameters
        ----------
        min_contributors : int, optional
            Refuse unless the signed set holds at least this many sites (a site-level DP
            calibration cohort, checked against the signed count).
        """
        self._enter(request, Stage.UNMASK)
        try:
            reply = self._unmask(request, min_contributors)
        except (SecAggError, ValueError) as exc:
            raise self._fail(exc) from None
        self._stage = Stage.UNMASK
        self.wipe()
        return reply

    # ------------------------------------------------------------------ secrets

    def wipe(self) -> None:
        """Forget every per-round secret and end the session.

        The stage becomes ``DONE`` after unmask, else ``ABORTED``. Python cannot guarantee
        erasure: buffers are zeroed where mutable and every reference is dropped.
        """
        self._secrets.wipe()
        if self._stage == Stage.UNMASK:
            self._stage = Stage.DONE
        elif self._stage != Stage.DONE:
            self._stage = Stage.ABORTED

    def to_state(self) -> dict[str, bytes]:
        """Serialise the session (secrets included) to a dict of bytes for ``context.state``.

        The dict holds per-round secrets: keep it only in the site's own state, and store
        it again after the round ends (the secrets are gone by then).
        """
        return dump_state(
            config=self._config, node_id=self._node_id, stage=self._stage, secrets=self._secrets
        )

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, bytes],
        *,
        identity_key: Ed25519PrivateKey,
        registry: Mapping[int, bytes],
        limits: SiteLimits | None = None,
        guard: RoundGuard | None = None,
    ) -> SiteSession:
        """Rebuild a session from :meth:`to_state` output.

        Raises
        ------
        SecAggError
            If the state is malformed or of another version.
        """
        config, node_id, stage, secrets = load_state(state)
        try:
            session = cls(
                config=config,
                node_id=node_id,
                identity_key=identity_key,
                registry=registry,
                limits=limits,
                guard=guard,
            )
        except ValueError as exc:
            raise SecAggError(f"malformed secure-aggregation state: {exc}") from None
        session._stage = stage
        session._secrets = secrets
        return session
