"""Key agreement, identity signatures, key derivation and share encryption.

Every derived key and every signed or authenticated message is bound to the round by a
:class:`RoundBinding` (run id, round, digest of the round's configuration) and to the node
ids involved, under a domain-separation tag per use, so that nothing from one run, round,
purpose or pair of sites can be replayed as another.

Primitives: X25519 (key agreement), Ed25519 (long-term identity signatures), HKDF-SHA256
(key derivation), AES-256-GCM (share encryption). Anything that fails raises
:class:`~privacy.secagg.errors.SecAggError` without saying more than which object failed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privacy.secagg.errors import SecAggError

__all__ = [
    "KEY_LEN",
    "NONCE_LEN",
    "SIGNATURE_LEN",
    "TAG_LEN",
    "RoundBinding",
    "agree",
    "ct_equal",
    "decrypt_shares",
    "encrypt_shares",
    "generate_identity_key",
    "identity_private_bytes",
    "identity_public_bytes",
    "load_identity_private_key",
    "load_identity_public_key",
    "pair_mask_key",
    "seed_commitment",
    "self_mask_key",
    "share_commitment",
    "share_enc_key",
    "sign_advertisement",
    "sign_contributors",
    "verify_advertisement",
    "verify_contributors",
    "x25519_keypair",
    "x25519_private_bytes",
    "x25519_private_from_bytes",
    "x25519_public_from_private",
    "x25519_public_problem",
]

KEY_LEN = 32
SIGNATURE_LEN = 64
NONCE_LEN = 12
TAG_LEN = 16
_U64 = (1 << 64) - 1
_DOMAIN = b"confide/secagg/v1/"


def _frame(*parts: bytes) -> bytes:
    """Unambiguous concatenation: each part is prefixed with its 4-byte length."""
    return b"".join(struct.pack(">I", len(p)) + bytes(p) for p in parts)


def _u64(value: int) -> bytes:
    if type(value) is not int or not 0 <= value <= _U64:
        raise SecAggError(f"node id / counter must be an int in [0, 2^64), got {value!r}")
    return struct.pack(">Q", value)


def ct_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in constant time (for equal lengths)."""
    return hmac.compare_digest(bytes(a), bytes(b))


@dataclass(frozen=True)
class RoundBinding:
    """What every key, signature and ciphertext of a round is bound to.

    Parameters
    ----------
    run_id : int
        Flower run id.
    round : int
        Server round.
    config_digest : bytes
        SHA-256 digest of the round's canonical secure-aggregation configuration.
    """

    run_id: int
    round: int
    config_digest: bytes

    def __post_init__(self) -> None:
        for name in ("run_id", "round"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= _U64:
                raise ValueError(f"`{name}` must be an int in [0, 2^64), got {value!r}")
        if not isinstance(self.config_digest, bytes) or len(self.config_digest) != 32:
            raise ValueError("`config_digest` must be 32 bytes")

    def encode(self) -> bytes:
        """Canonical encoding used inside every derivation and signature."""
        return _frame(_u64(self.run_id), _u64(self.round), self.config_digest)


# ----------------------------------------------------------------------------- identity keys


def generate_identity_key() -> Ed25519PrivateKey:
    """Return a fresh long-term Ed25519 identity key."""
    return Ed25519PrivateKey.generate()


def identity_public_bytes(key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key of an identity key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def identity_private_bytes(key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte private key of an identity key (to store it at the site)."""
    return key.private_bytes_raw()


def load_identity_private_key(raw: bytes) -> Ed25519PrivateKey:
    """Load a raw 32-byte Ed25519 private key.

    Raises
    ------
    SecAggError
        If ``raw`` is not 32 bytes.
    """
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_LEN:
        raise SecAggError("identity private key must be 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(bytes(raw))


def load_identity_public_key(raw: bytes) -> Ed25519PublicKey:
    """Load a raw 32-byte Ed25519 public key.

    Raises
    ------
    SecAggError
        If ``raw`` is not a valid 32-byte Ed25519 public key.
    """
    if not isinstance(raw, bytes) or len(raw) != KEY_LEN:
        raise SecAggError("identity public key must be 32 bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SecAggError("invalid identity public key") from None


def _advert_message(
    binding: RoundBinding, node_id: int, enc_pk: bytes, mask_pk: bytes, seed_commit: bytes
) -> bytes:
    return _frame(
        _DOMAIN + b"advertise", binding.encode(), _u64(node_id), enc_pk, mask_pk, seed_commit
    )


def sign_advertisement(
    identity_key: Ed25519PrivateKey,
    binding: RoundBinding,
    *,
    node_id: int,
    enc_pk: bytes,
    mask_pk: bytes,
    seed_commit: bytes,
) -> bytes:
    """Sign a site's advertised public keys and self-mask commitment for one round."""
    return identity_key.sign(_advert_message(binding, node_id, enc_pk, mask_pk, seed_commit))


def verify_advertisement(
    identity_public: bytes,
    signature: bytes,
    binding: RoundBinding,
    *,
    node_id: int,
    enc_pk: bytes,
    mask_pk: bytes,
    seed_commit: bytes,
) -> None:
    """Verify an advertisement signature.

    Raises
    ------
    SecAggError
        If any field has the wrong length or the signature does not verify.
    """
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
        raise SecAggError(f"advertisement of node {node_id} has a malformed signature")
    for value in (enc_pk, mask_pk, seed_commit):
        if not isinstance(value, bytes) or len(value) != KEY_LEN:
            raise SecAggError(f"advertisement of node {node_id} has a malformed key")
    public = load_identity_public_key(identity_public)
    try:
        public.verify(signature, _advert_message(binding, node_id, enc_pk, mask_pk, seed_commit))
    except InvalidSignature:
        raise SecAggError(f"advertisement of node {node_id} has an invalid signature") from None
    for name, value in (("enc", enc_pk), ("mask", mask_pk)):
        problem = x25519_public_problem(value)
        if problem is not None:
            raise SecAggError(f"advertisement of node {node_id}: {name} key {problem}")


@functools.lru_cache(maxsize=8)
def _contributors_message(
    binding: RoundBinding, attempt: int, contributors: tuple[int, ...]
) -> bytes:
    # one set is signed by every contributor and checked by every unmasker, each checking up
    # to all the signatures over it: framed once per (binding, attempt, set), not once per
    # signature (O(n) bytes each, so O(n^2) per site and O(n^3) per round without the cache)
    return _frame(
        _DOMAIN + b"consistency",
        binding.encode(),
        _u64(attempt),
        struct.pack(">I", len(contributors)),
        b"".join(_u64(v) for v in contributors),
    )


def sign_contributors(
    identity_key: Ed25519PrivateKey,
    binding: RoundBinding,
    *,
    attempt: int,
    contributors: tuple[int, ...],
) -> bytes:
    """Sign the exact contributor set of one (run, round, attempt) (ConsistencyCheck)."""
    return identity_key.sign(_contributors_message(binding, attempt, tuple(contributors)))


def verify_contributors(
    identity_public: bytes,
    signature: object,
    binding: RoundBinding,
    *,
    signer: int,
    attempt: int,
    contributors: tuple[int, ...],
) -> None:
    """Verify a consistency signature.

    Raises
    ------
    SecAggError
        If the signature is malformed or does not verify.
    """
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LEN:
        raise SecAggError(f"consistency signature of node {signer} is malformed")
    public = load_identity_public_key(identity_public)
    try:
        public.verify(signature, _contributors_message(binding, attempt, tuple(contributors)))
    except InvalidSignature:
        raise SecAggError(f"consistency signature of node {signer} is invalid") from None


# ----------------------------------------------------------------------------- X25519


def x25519_keypair() -> tuple[X25519PrivateKey, bytes]:
    """Return a fresh X25519 private key and its raw 32-byte public key."""
    private = X25519PrivateKey.generate()
    return private, x25519_public_from_private(private)


def x25519_public_from_private(private: X25519PrivateKey) -> bytes:
    """Return the raw public key of an X25519 private key."""
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_private_bytes(private: X25519PrivateKey) -> bytes:
    """Return the raw 32 bytes of an X25519 private key (to share or store it)."""
    return private.private_bytes_raw()


def x25519_private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Load a raw 32-byte X25519 private key.

    Raises
    ------
    SecAggError
        If ``raw`` is not 32 bytes.
    """
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_LEN:
        raise SecAggError("X25519 private key must be 32 bytes")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


#: A fixed clamped scalar: its product with a point of order dividing 8 (the all-zero key,
#: the other low-order points and their non-canonical encodings) is the neutral element.
_PROBE = X25519PrivateKey.from_private_bytes(hashlib.sha256(_DOMAIN + b"low-order-probe").digest())


def x25519_public_problem(public: object) -> str | None:
    """Say what is wrong with a raw X25519 public key (length, low order), or None.

    Every clamped X25519 scalar is a multiple of 8, so a key of low order gives the
    all-zero shared secret with any private key; the probe exchange finds exactly those.
    """
    if not isinstance(public, bytes) or len(public) != KEY_LEN:
        return "must be 32 bytes"
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return "is of low order (all-zero shared secret)"
    return None


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret with a peer's raw public key.

    Raises
    ------
    SecAggError
        If the peer key is malformed or of low order (all-zero shared secret).
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_LEN:
        raise SecAggError("X25519 public key must be 32 bytes")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise SecAggError("X25519 key agreement failed") from None


# ----------------------------------------------------------------------------- derivations


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=info).derive(ikm)


def _pair(a: int, b: int) -> bytes:
    lo, hi = (a, b) if a < b else (b, a)
    return _u64(lo) + _u64(hi)


def pair_mask_key(shared: bytes, binding: RoundBinding, *, a: int, b: int) -> bytes:
    """AES key of the pairwise mask between nodes ``a`` and ``b`` (symmetric in a, b)."""
    return _hkdf(shared, _frame(_DOMAIN + b"pair-mask", binding.encode(), _pair(a, b)))


def share_enc_key(shared: bytes, binding: RoundBinding, *, a: int, b: int) -> bytes:
    """AES-GCM key protecting the shares exchanged between nodes ``a`` and ``b``."""
    return _hkdf(shared, _frame(_DOMAIN + b"share-enc", binding.encode(), _pair(a, b)))


def self_mask_key(seed: bytes | bytearray, binding: RoundBinding, *, node_id: int) -> bytes:
    """AES key of node ``node_id``'s self mask, from its 32-byte self-mask seed."""
    if len(seed) != KEY_LEN:
        raise SecAggError("self-mask seed must be 32 bytes")
    return _hkdf(bytes(seed), _frame(_DOMAIN + b"self-mask", binding.encode(), _u64(node_id)))


def seed_commitment(seed: bytes | bytearray, binding: RoundBinding, *, node_id: int) -> bytes:
    """Hiding, binding commitment to a 32-byte uniformly random self-mask seed."""
    if len(seed) != KEY_LEN:
        raise SecAggError("self-mask seed must be 32 bytes")
    message = _frame(_DOMAIN + b"seed-commit", binding.encode(), _u64(node_id), bytes(seed))
    return hashlib.sha256(message).digest()


def share_commitment(
    share: bytes, binding: RoundBinding, *, owner: int, holder: int, kind: bytes
) -> bytes:
    """Return the commitment to one Shamir share that ``owner`` dealt to ``holder``.

    ``kind`` is b"seed" or b"key". The owner sends it to the server at share time, so that
    the server can drop a holder that reveals a wrong share and combine any t valid ones. A
    share is a uniform field element given fewer than t others, so the hash reveals nothing.
    """
    message = _frame(
        _DOMAIN + b"share-commit", binding.encode(), _u64(owner), _u64(holder), kind, share
    )
    return hashlib.sha256(message).digest()


# ----------------------------------------------------------------------------- share encryption


def _aad(binding: RoundBinding, sender: int, recipient: int) -> bytes:
    return _frame(_DOMAIN + b"shares", binding.encode(), _u64(sender), _u64(recipient))


def encrypt_shares(
    key: bytes, plaintext: bytes, binding: RoundBinding, *, sender: int, recipient: int
) -> bytes:
    """Encrypt ``plaintext`` from ``sender`` to ``recipient``; returns ``nonce || ct || tag``."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(binding, sender, recipient))


def decrypt_shares(
    key: bytes, ciphertext: bytes, binding: RoundBinding, *, sender: int, recipient: int
) -> bytes:
    """Decrypt and authenticate a ciphertext made by :func:`encrypt_shares`.

    Raises
    ------
    SecAggError
        If the ciphertext was tampered with or is bound to another run, round, sender or
        recipient.
    """
    if not isinstance(ciphertext, bytes) or len(ciphertext) < NONCE_LEN + TAG_LEN:
        raise SecAggError(f"ciphertext from node {sender} is malformed")
    nonce, body = ciphertext[:NONCE_LEN], ciphertext[NONCE_LEN:]
    try:
        return AESGCM(key).decrypt(nonce, body, _aad(binding, sender, recipient))
    except InvalidTag:
        raise SecAggError(f"ciphertext from node {sender} failed authentication") from None
