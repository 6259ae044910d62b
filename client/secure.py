"""The site's side of secure aggregation: its session between stages, and its masked input.

Per-round secrets live in ``context.state`` (Flower keeps it per node across the messages of
a run) as the session's byte state, and are wiped after the unmask stage or on any failure.
Identity: the site's long-term Ed25519 key (:mod:`client.identity`); the other sites' public
keys come from the site's own copy of the enrolment list, looked up by the names the server
claims for each node id — a claim that only holds if the node signs with that name's key, and
one name (one key) per node (:func:`privacy.secagg.cohort_registry`). The site's own caps on a
round (:class:`privacy.secagg.SiteLimits`) come from its node config, and its record of what it
sent in each round (:class:`privacy.secagg.RoundGuard`) lives in its state directory, so no
per-message process can be talked into a replay. The message handlers that drive these steps
are in :mod:`client.secure_handlers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict

from client import ahead
from client.deploy_config import NODE_ENROLMENT
from client.identity import load_site_identity
from client.local_round import LocalUpdate
from client.site import site_spec
from client.site_level_dp import encode_site_level_dp
from privacy.secagg import RoundGuard, SecAggError, SiteLimits, SiteSession, cohort_registry
from protocol.codec import Manifest, encode
from protocol.config import RunConfig
from protocol.enrolment import load_enrolment
from protocol.instructions import RoundInstructions
from protocol.messages import get_payload
from protocol.ring import check_ring
from protocol.secure_stats import (
    append_eval_stats,
    append_weight,
    eval_stats_limbs,
    weight_limbs,
)
from protocol.wire import Field, Key, Metric

__all__ = ["SecureSite", "site_limits"]

#: context.state keys of the session in progress (site-local, never sent)
_STATE_KEY = "secagg-session"
_NAMES_KEY = Key.COHORT_NAMES

#: node-config keys of the site's own caps (``site.toml`` or ``--node-config``), defaults of
#: :class:`SiteLimits` when absent
LIMIT_KEYS = {"secagg-max-cohort": "max_cohort", "secagg-max-degree": "max_degree",
              "secagg-min-threshold": "min_threshold"}


def site_limits(node_config: Any) -> SiteLimits:
    """Read the site's caps from its own node config (never from the coordinator)."""
    given = {field: node_config[key] for key, field in LIMIT_KEYS.items() if key in node_config}
    try:
        return SiteLimits(**given)
    except ValueError as exc:
        raise SecAggError(f"node config: {exc}") from None


@dataclass(frozen=True)
class SecureSite:
    """Who this site is for secure aggregation: run config, site name, state directory."""

    cfg: RunConfig
    name: str
    state_dir: Path
    limits: SiteLimits = field(default_factory=SiteLimits)

    @property
    def guard(self) -> RoundGuard:
        """Open the site's persistent record of its masked inputs and unmask help per round."""
        return RoundGuard(self.state_dir)

    @classmethod
    def of(cls, context: Context) -> SecureSite:
        """From the node's context; a site without a state directory has no identity key."""
        cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
        own_list = context.node_config.get(NODE_ENROLMENT)
        if own_list:  # deployment: the site's own copy of the enrolment list, not the server's
            cfg = cfg.replace(secagg_enrolment=str(own_list))
        spec = site_spec(context.node_config, cfg)
        if spec.state_dir is None:
            raise SecAggError(f"site {spec.name} has no state directory for its identity key")
        return cls(cfg, spec.name, spec.state_dir, site_limits(context.node_config))

    def _registry(self, names_rec: Any, node_id: int) -> dict[int, bytes]:
        """Node id -> enrolled public key, for the names the server claims (one per node)."""
        try:
            claimed = json.loads(str(names_rec[Field.NAMES]))
            names = {int(node): name for node, name in claimed.items()}
        except (ValueError, TypeError, AttributeError, RecursionError):
            raise SecAggError("the server's cohort names are malformed") from None
        if names.get(node_id) != self.name:
            raise SecAggError("the server names this node as another site")
        return cohort_registry(names, load_enrolment(self.cfg.secagg_enrolment))

    def start(self, context: Context, content: RecordDict) -> tuple[SiteSession, dict[str, Any]]:
        """Start a new session from the advertise request; return it with the site's reply."""
        names_rec: Any = content[Key.COHORT_NAMES]
        registry = self._registry(names_rec, context.node_id)
        request = get_payload(content)
        session = SiteSession.from_request(request, node_id=context.node_id,
                                           identity_key=load_site_identity(self.state_dir),
                                           registry=registry, limits=self.limits,
                                           guard=self.guard)
        reply = session.advertise_keys(request)
        context.state[_NAMES_KEY] = ConfigRecord({Field.NAMES: str(names_rec[Field.NAMES])})
        return session, reply

    def restore(self, context: Context) -> SiteSession:
        """Restore the session in progress; raise :class:`SecAggError` if there is none."""
        if _STATE_KEY not in context.state or _NAMES_KEY not in context.state:
            raise SecAggError("no secure-aggregation session in progress at this site")
        rec: Any = context.state[_STATE_KEY]
        registry = self._registry(context.state[_NAMES_KEY], context.node_id)
        return SiteSession.from_state({k: bytes(rec[k]) for k in rec},
                                      identity_key=load_site_identity(self.state_dir),
                                      registry=registry, limits=self.limits, guard=self.guard)

    @staticmethod
    def save(context: Context, session: SiteSession) -> None:
        """Keep ``session``'s state in the node's context until the next stage's message."""
        context.state[_STATE_KEY] = ConfigRecord(dict(session.to_state().items()))

    @staticmethod
    def wipe(context: Context, session: SiteSession | None = None) -> None:
        """Wipe ``session``'s secrets, if given; drop the session and its local work."""
        if session is not None:
            session.wipe()
        ahead.discard(context)
        for key in (_STATE_KEY, _NAMES_KEY):
            if key in context.state:
                del context.state[key]

    def encode(self, upd: LocalUpdate, instr: RoundInstructions, session: SiteSession,
               context: Context, *, eval_stats: np.ndarray | None = None) -> np.ndarray:
        """Encode the trained delta as the round's ring vector (clipped, weighted or noised).

        Without site-level DP the weight (number of examples) follows as its exact integer
        limbs (:func:`protocol.secure_stats.weight_limbs`): it travels inside the masked sum,
        never in the clear. Before encoding, the site checks the ring and grid it is handed
        (:func:`protocol.ring.check_ring`): it refuses a pair under which its clipped,
        weighted input, or the cohort's sum, could wrap.

        ``eval_stats`` (``evaluate-received``) follow the weight as their exact limbs
        (:func:`protocol.secure_stats.append_eval_stats`).
        """
        if instr.codec is None or upd.delta is None:
            raise SecAggError("a masked input needs the round's codec and a trained delta")
        delta = {k: upd.delta[k] for k in sorted(upd.delta)}
        manifest = Manifest.from_arrays(delta)
        manifest.check_digest(instr.codec.manifest)
        if (eval_stats is not None) != instr.evaluate_received:
            raise SecAggError("evaluation figures asked for and given must agree")
        if instr.site_level_dp is not None:  # site-level DP: clip, rotate, round, add own noise
            return encode_site_level_dp(delta, manifest, instr.site_level_dp, self.cfg,
                                        session.config, context, run_id=instr.run_id)
        weight = int(upd.metrics[Metric.NUM_EXAMPLES])
        bits = session.config.modulus_bits
        n_sites = len(session.config.cohort)
        try:
            check_ring(n_sites=n_sites, clip_norm=instr.codec.clip,
                       max_weight=instr.codec.max_weight, scale=instr.codec.scale,
                       modulus_bits=bits)
            limbs = weight_limbs(modulus_bits=bits, n_sites=n_sites,
                                 max_weight=instr.codec.max_weight)[1]
            if eval_stats is not None:
                limbs += eval_stats_limbs(modulus_bits=bits, n_sites=n_sites)
        except ValueError as exc:
            raise SecAggError(f"refused the round's codec: {exc}") from None
        if session.config.vector_length != manifest.dim + limbs:
            raise SecAggError(f"refused the round's codec: vector length "
                              f"{session.config.vector_length} is not {manifest.dim} + {limbs}")
        vec = encode(delta, manifest, clip_norm=instr.codec.clip, weight=float(weight),
                     scale=instr.codec.scale, modulus_bits=bits,
                     rng=np.random.default_rng(), max_weight=instr.codec.max_weight)
        vec = append_weight(vec, weight, modulus_bits=bits, max_weight=instr.codec.max_weight,
                            n_sites=n_sites)
        if eval_stats is None:
            return vec
        try:
            return append_eval_stats(vec, eval_stats, modulus_bits=bits, n_sites=n_sites)
        except ValueError as exc:
            raise SecAggError(f"refused the round's codec: {exc}") from None
