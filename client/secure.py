"""The site's side of secure aggregation, registered on the ClientApp.

Per-round secrets live in ``context.state`` (Flower keeps it per node across the messages of
a run) as the session's byte state, and are wiped after the unmask stage or on any failure.
Identity: the site's long-term Ed25519 key (``identity.key`` in its state directory); the
other sites' public keys come from the site's own copy of the enrolment list, looked up by
the names the server claims for each node id — a claim that only holds if the node signs
with that name's key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.app import app, local_update, site_spec, status_record
from privacy.secagg import SecAggError, SiteSession, load_identity_private_key
from protocol.codec import Manifest, encode
from protocol.config import RunConfig
from protocol.enrolment import load_enrolment
from protocol.messages import ARRAYS, CONFIG, METRICS, STATUS_OK, get_payload, put_payload

__all__ = ["IDENTITY_FILE", "SimulatedCrash", "inject_fault", "load_site_identity"]

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.key"
_STATE_KEY = "secagg-session"
_NAMES_KEY = "cohort-names"


def load_site_identity(state_dir: Path) -> Any:
    """The site's Ed25519 identity key from ``state_dir/identity.key`` (32 raw bytes)."""
    path = state_dir / IDENTITY_FILE
    try:
        return load_identity_private_key(path.read_bytes())
    except OSError as exc:
        raise SecAggError(f"cannot read the site identity key {path}: {exc.strerror}") from None


class SimulatedCrash(RuntimeError):
    """A fault injected by the ``faults`` scenario setting (simulation only)."""


def inject_fault(cfg: RunConfig, site: str, stage: str, round_num: int | None) -> None:
    """Crash here if the scenario says so: ``faults = "site@stage[@round],..."``.

    Stages: ``advertise``, ``share``, ``masked-input``, ``unmask``, ``train``. Used by the
    simulation scenarios and tests to drop a site at a given point of a round.
    """
    for item in filter(None, (x.strip() for x in cfg.faults.split(","))):
        parts = item.split("@")
        if len(parts) not in (2, 3):
            raise ValueError(f"`faults` entry {item!r} must be site@stage[@round]")
        if parts[0] == site and parts[1] == stage and (
                len(parts) == 2 or round_num is None or int(parts[2]) == round_num):
            logger.warning("site %s: injected crash at %s (round %s)", site, stage, round_num)
            raise SimulatedCrash(f"site {site} crashed at {stage} (injected fault)")


def _context(context: Context) -> tuple[RunConfig, str, Path]:
    cfg = RunConfig.from_mapping(context.run_config, allow_extra=True)
    own_list = context.node_config.get("secagg-enrolment")
    if own_list:  # deployment: the site's own copy of the enrolment list, not the server's path
        cfg = cfg.replace(secagg_enrolment=str(own_list))
    spec = site_spec(context.node_config, cfg)
    if spec.state_dir is None:
        raise SecAggError(f"site {spec.name} has no state directory for its identity key")
    return cfg, spec.name, spec.state_dir


def _round_of(msg: Message) -> int | None:
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        return None


def _registry(msg_or_state: Any, cfg: RunConfig, me: str, node_id: int) -> dict[int, bytes]:
    names = json.loads(str(msg_or_state["names"]))
    enrolment = load_enrolment(cfg.secagg_enrolment)
    registry: dict[int, bytes] = {}
    for node, name in names.items():
        if name not in enrolment:
            raise SecAggError(f"the server names node {node} as {name!r}, which is not enrolled")
        registry[int(node)] = enrolment[name]
    if names.get(str(node_id)) != me:
        raise SecAggError("the server names this node as another site")
    return registry


def _restore(context: Context, cfg: RunConfig, me: str, state_dir: Path) -> SiteSession:
    if _STATE_KEY not in context.state or _NAMES_KEY not in context.state:
        raise SecAggError("no secure-aggregation session in progress at this site")
    rec: Any = context.state[_STATE_KEY]
    registry = _registry(context.state[_NAMES_KEY], cfg, me, context.node_id)
    return SiteSession.from_state({k: bytes(rec[k]) for k in rec},
                                  identity_key=load_site_identity(state_dir), registry=registry)


def _save(context: Context, session: SiteSession) -> None:
    context.state[_STATE_KEY] = ConfigRecord(session.to_state())


def _wipe(context: Context, session: SiteSession | None = None) -> None:
    if session is not None:
        session.wipe()
    for key in (_STATE_KEY, _NAMES_KEY):
        if key in context.state:
            del context.state[key]


def _answer(msg: Message, me: str, payload: dict[str, Any] | None, *, status: str = STATUS_OK,
            reason: str = "", metrics: dict[str, Any] | None = None,
            ledger_summary: tuple[str, str] | None = None) -> Message:
    content = RecordDict({CONFIG: status_record(me, status, reason, ledger_summary)})
    if metrics:
        content[METRICS] = MetricRecord(metrics)
    if payload is not None:
        put_payload(content, payload)
    return Message(content, reply_to=msg)


def _refuse(msg: Message, context: Context, me: str, exc: Exception,
            session: SiteSession | None = None) -> Message:
    _wipe(context, session)
    logger.warning("site %s refuses the secure-aggregation request: %s", me, exc)
    return _answer(msg, me, None, status="failed", reason="secure aggregation refused")


@app.query("secagg_advertise")
def advertise(msg: Message, context: Context) -> Message:
    """Stage 1: fresh round keys, signed with the site's identity key."""
    cfg, me, state_dir = _context(context)
    _wipe(context)
    inject_fault(cfg, me, "advertise", _round_of(msg))
    try:
        names_rec: Any = msg.content[_NAMES_KEY]
        registry = _registry(names_rec, cfg, me, context.node_id)
        session = SiteSession.from_request(get_payload(msg.content), node_id=context.node_id,
                                           identity_key=load_site_identity(state_dir),
                                           registry=registry)
        reply = session.advertise_keys(get_payload(msg.content))
    except (SecAggError, ValueError, KeyError) as exc:
        return _refuse(msg, context, me, exc)
    context.state[_NAMES_KEY] = ConfigRecord({"names": str(names_rec["names"])})
    _save(context, session)
    return _answer(msg, me, reply)


@app.query("secagg_share")
def share(msg: Message, context: Context) -> Message:
    """Stage 2: check neighbours' signatures, send them encrypted Shamir shares."""
    cfg, me, state_dir = _context(context)
    inject_fault(cfg, me, "share", _round_of(msg))
    session = None
    try:
        session = _restore(context, cfg, me, state_dir)
        reply = session.share_keys(get_payload(msg.content))
    except (SecAggError, ValueError, KeyError) as exc:
        return _refuse(msg, context, me, exc, session)
    _save(context, session)
    return _answer(msg, me, reply)


@app.train("secagg")
def masked_train(msg: Message, context: Context) -> Message:
    """Stage 3: train (DP first), encode the delta, mask it, send it."""
    cfg, me, state_dir = _context(context)
    inject_fault(cfg, me, "masked-input", _round_of(msg))
    session = None
    try:
        session = _restore(context, cfg, me, state_dir)
        instr: Any = msg.content[CONFIG]
        upd = local_update(instr, msg.content[ARRAYS], context)
        if upd.status != STATUS_OK or upd.delta is None:
            _wipe(context, session)
            return _answer(msg, me, None, status=upd.status, reason=upd.reason,
                           metrics=upd.metrics, ledger_summary=upd.ledger_summary)
        delta = {k: upd.delta[k] for k in sorted(upd.delta)}
        manifest = Manifest.from_arrays(delta)
        manifest.check_digest(str(instr["manifest"]))
        weight = int(upd.metrics["num-examples"])
        if "site-dp-mode" in instr:  # site-level DP: clip, rotate, round, add own noise
            from client.site_dp import encode_site_dp

            vector = encode_site_dp(delta, manifest, instr, cfg, session.config, context)
        else:
            vector = encode(delta, manifest, clip_norm=float(instr["secagg-clip"]),
                            weight=float(weight), scale=float(instr["secagg-scale"]),
                            modulus_bits=session.config.modulus_bits,
                            rng=np.random.default_rng(),
                            max_weight=float(instr["secagg-max-weight"]))
        reply = session.masked_input(get_payload(msg.content), vector=vector)
        del vector, delta  # only the masked vector leaves
    except (SecAggError, ValueError, KeyError) as exc:
        return _refuse(msg, context, me, exc, session)
    _save(context, session)
    return _answer(msg, me, reply, metrics=upd.metrics, ledger_summary=upd.ledger_summary)


@app.query("secagg_unmask")
def unmask(msg: Message, context: Context) -> Message:
    """Stage 4: reveal, per neighbour, the self-mask share (alive) or key share (dropped)."""
    cfg, me, state_dir = _context(context)
    inject_fault(cfg, me, "unmask", _round_of(msg))
    session = None
    try:
        session = _restore(context, cfg, me, state_dir)
        from client.site_dp import check_unmask

        check_unmask(context, get_payload(msg.content), session.config, session.node_id)
        reply = session.unmask(get_payload(msg.content))
    except (SecAggError, ValueError, KeyError) as exc:
        return _refuse(msg, context, me, exc, session)
    _wipe(context, session)
    return _answer(msg, me, reply)

