"""A site's per-round secrets, their wiping and their (de)serialisation to a dict of bytes.

The dict form is what a Flower ClientApp keeps in ``context.state`` between the messages
of a round. It holds secrets: it must stay in the site's own state and be wiped when the
round ends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.secagg import keys
from privacy.secagg.config import SecAggConfig
from privacy.secagg.errors import SecAggError
from privacy.secagg.stages import Stage

__all__ = ["SiteSecrets", "dump_state", "load_state"]

_STATE_VERSION = b"1"


@dataclass
class SiteSecrets:
    """Mutable per-round secrets of a site.

    Attributes
    ----------
    enc_sk, mask_sk : X25519PrivateKey or None
        Share-encryption and pairwise-mask key pairs (until the masked input is sent).
    seed : bytearray or None
        Self-mask seed (until the masked input is sent).
    peers : dict of int to (bytes, bytes)
        Verified ``(enc_pk, mask_pk)`` of neighbours.
    held : dict of int to (bytes, bytes)
        ``(seed share, key share)`` received from each neighbour.
    own_seed_share : bytes or None
        This site's share of its own seed (its own key share is never kept).
    contributors : tuple of int or None
        The contributor set this site signed at the consistency check (not secret).
    """

    enc_sk: X25519PrivateKey | None = None
    mask_sk: X25519PrivateKey | None = None
    seed: bytearray | None = None
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    own_seed_share: bytes | None = None
    contributors: tuple[int, ...] | None = None

    def drop_key_material(self) -> None:
        """Forget the key pairs and the seed (zeroing the seed buffer)."""
        if self.seed is not None:
            self.seed[:] = bytes(len(self.seed))
        self.seed = None
        self.enc_sk = None
        self.mask_sk = None

    def wipe(self) -> None:
        """Forget everything."""
        self.drop_key_material()
        self.peers = {}
        self.held = {}
        self.own_seed_share = None
        self.contributors = None


def dump_state(
    *, config: SecAggConfig, node_id: int, stage: Stage, secrets: SiteSecrets
) -> dict[str, bytes]:
    """Serialise a site session to a dict of bytes (secrets included)."""
    state: dict[str, bytes] = {
        "version": _STATE_VERSION,
        "config": config.to_json(),
        "node-id": str(node_id).encode(),
        "stage": stage.value.encode(),
        "peers": json.dumps(
            {str(n): [e.hex(), m.hex()] for n, (e, m) in secrets.peers.items()}
        ).encode(),
        "held": json.dumps(
            {str(n): [s.hex(), k.hex()] for n, (s, k) in secrets.held.items()}
        ).encode(),
    }
    if secrets.enc_sk is not None and secrets.mask_sk is not None and secrets.seed is not None:
        state["enc-sk"] = keys.x25519_private_bytes(secrets.enc_sk)
        state["mask-sk"] = keys.x25519_private_bytes(secrets.mask_sk)
        state["seed"] = bytes(secrets.seed)
    if secrets.own_seed_share is not None:
        state["own-seed-share"] = secrets.own_seed_share
    if secrets.contributors is not None:
        state["contributors"] = json.dumps(list(secrets.contributors)).encode()
    return state


def load_state(state: Mapping[str, bytes]) -> tuple[SecAggConfig, int, Stage, SiteSecrets]:
    """Parse :func:`dump_state` output into ``(config, node id, stage, secrets)``.

    Raises
    ------
    SecAggError
        If the state is malformed or of another version.
    """
    try:
        if state["version"] != _STATE_VERSION:
            raise SecAggError("secure-aggregation state has an unknown version")
        secrets = SiteSecrets(
            peers={
                int(n): (bytes.fromhex(e), bytes.fromhex(m))
                for n, (e, m) in json.loads(state["peers"]).items()
            },
            held={
                int(n): (bytes.fromhex(s), bytes.fromhex(k))
                for n, (s, k) in json.loads(state["held"]).items()
            },
            own_seed_share=state.get("own-seed-share"),
        )
        if "seed" in state:
            secrets.enc_sk = keys.x25519_private_from_bytes(state["enc-sk"])
            secrets.mask_sk = keys.x25519_private_from_bytes(state["mask-sk"])
            if len(state["seed"]) != keys.KEY_LEN:
                raise SecAggError("secure-aggregation state has a malformed seed")
            secrets.seed = bytearray(state["seed"])
        if "contributors" in state:
            signed = json.loads(state["contributors"])
            if not isinstance(signed, list) or any(type(v) is not int for v in signed):
                raise SecAggError("secure-aggregation state has a malformed contributor set")
            secrets.contributors = tuple(signed)
        return (
            SecAggConfig.from_json(state["config"]),
            int(state["node-id"].decode()),
            Stage(state["stage"].decode()),
            secrets,
        )
    except SecAggError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise SecAggError(f"malformed secure-aggregation state ({type(exc).__name__})") from None
