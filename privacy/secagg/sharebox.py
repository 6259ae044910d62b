"""Sealing a pair of Shamir shares (self-mask seed, mask key) for one neighbour.

The pair travels through the server encrypted with AES-256-GCM under a key derived by
HKDF from the two sites' X25519 ``enc`` keys, and authenticated together with the run,
round, config digest, sender and recipient (see :mod:`privacy.secagg.keys`).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.secagg import keys, shamir
from privacy.secagg.errors import SecAggError
from privacy.secagg.keys import RoundBinding
from privacy.secagg.payloads import SHARE_PAIR_LEN

__all__ = ["SHARE_PAIR_LEN", "open_shares", "seal_shares"]


def _key(
    enc_sk: X25519PrivateKey, peer_enc_pk: bytes, binding: RoundBinding, a: int, b: int
) -> bytes:
    return keys.share_enc_key(keys.agree(enc_sk, peer_enc_pk), binding, a=a, b=b)


def seal_shares(
    enc_sk: X25519PrivateKey,
    peer_enc_pk: bytes,
    binding: RoundBinding,
    *,
    sender: int,
    recipient: int,
    seed_share: bytes,
    key_share: bytes,
) -> bytes:
    """Encrypt ``sender``'s share pair for ``recipient``."""
    key = _key(enc_sk, peer_enc_pk, binding, sender, recipient)
    return keys.encrypt_shares(
        key, seed_share + key_share, binding, sender=sender, recipient=recipient
    )


def open_shares(
    enc_sk: X25519PrivateKey,
    peer_enc_pk: bytes,
    binding: RoundBinding,
    ciphertext: bytes,
    *,
    sender: int,
    recipient: int,
    own_x: int,
) -> tuple[bytes, bytes]:
    """Decrypt a share pair from ``sender``; both shares must be for evaluation point ``own_x``.

    Raises
    ------
    SecAggError
        If the ciphertext fails authentication (tampered, replayed, misrouted) or the
        shares are malformed or made for another holder.
    """
    key = _key(enc_sk, peer_enc_pk, binding, recipient, sender)
    plain = keys.decrypt_shares(key, ciphertext, binding, sender=sender, recipient=recipient)
    if len(plain) != SHARE_PAIR_LEN:
        raise SecAggError(f"shares from node {sender} are malformed")
    seed_share, key_share = plain[: shamir.SHARE_LEN], plain[shamir.SHARE_LEN :]
    if shamir.share_x(seed_share) != own_x or shamir.share_x(key_share) != own_x:
        raise SecAggError(f"shares from node {sender} are not addressed to this site")
    return seed_share, key_share
