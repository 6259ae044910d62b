"""Signatures, key agreement, derivations and share encryption are bound and tamper-evident."""

from __future__ import annotations

import os

import pytest

from privacy.secagg import SecAggError, keys
from privacy.secagg.keys import RoundBinding

B = RoundBinding(run_id=5, round=3, config_digest=bytes(32))
OTHER_BINDINGS = [
    RoundBinding(run_id=6, round=3, config_digest=bytes(32)),
    RoundBinding(run_id=5, round=4, config_digest=bytes(32)),
    RoundBinding(run_id=5, round=3, config_digest=b"\x01" * 32),
]


def _advert() -> dict[str, bytes]:
    return {"enc_pk": os.urandom(32), "mask_pk": os.urandom(32), "seed_commit": os.urandom(32)}


def test_advertisement_signature_verifies() -> None:
    identity = keys.generate_identity_key()
    advert = _advert()
    sig = keys.sign_advertisement(identity, B, node_id=9, **advert)
    keys.verify_advertisement(keys.identity_public_bytes(identity), sig, B, node_id=9, **advert)


@pytest.mark.parametrize("field", ["enc_pk", "mask_pk", "seed_commit", "node_id", "signature"])
def test_tampered_advertisement_is_rejected(field: str) -> None:
    identity = keys.generate_identity_key()
    advert = _advert()
    sig = keys.sign_advertisement(identity, B, node_id=9, **advert)
    node = 9
    if field == "node_id":
        node = 10
    elif field == "signature":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    else:
        advert[field] = bytes([advert[field][0] ^ 1]) + advert[field][1:]
    with pytest.raises(SecAggError):
        keys.verify_advertisement(
            keys.identity_public_bytes(identity), sig, B, node_id=node, **advert
        )


@pytest.mark.parametrize("other", OTHER_BINDINGS)
def test_advertisement_replayed_in_another_run_round_or_config_is_rejected(
    other: RoundBinding,
) -> None:
    identity = keys.generate_identity_key()
    advert = _advert()
    sig = keys.sign_advertisement(identity, B, node_id=9, **advert)
    with pytest.raises(SecAggError):
        keys.verify_advertisement(
            keys.identity_public_bytes(identity), sig, other, node_id=9, **advert
        )


def test_advertisement_signed_by_another_identity_is_rejected() -> None:
    advert = _advert()
    sig = keys.sign_advertisement(keys.generate_identity_key(), B, node_id=9, **advert)
    with pytest.raises(SecAggError):
        keys.verify_advertisement(
            keys.identity_public_bytes(keys.generate_identity_key()), sig, B, node_id=9, **advert
        )


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 64, "text"])
def test_malformed_identity_keys_are_rejected(bad: object) -> None:
    with pytest.raises(SecAggError):
        keys.load_identity_public_key(bad)  # type: ignore[arg-type]


def test_key_agreement_is_symmetric_and_derivations_are_bound() -> None:
    a_sk, a_pk = keys.x25519_keypair()
    b_sk, b_pk = keys.x25519_keypair()
    shared = keys.agree(a_sk, b_pk)
    assert shared == keys.agree(b_sk, a_pk)
    k = keys.pair_mask_key(shared, B, a=1, b=2)
    assert k == keys.pair_mask_key(shared, B, a=2, b=1)
    variants = {
        k,
        keys.pair_mask_key(shared, B, a=1, b=3),
        keys.share_enc_key(shared, B, a=1, b=2),
        *(keys.pair_mask_key(shared, o, a=1, b=2) for o in OTHER_BINDINGS),
    }
    assert len(variants) == 3 + len(OTHER_BINDINGS)
    seed = os.urandom(32)
    assert keys.self_mask_key(seed, B, node_id=1) != keys.self_mask_key(seed, B, node_id=2)
    assert keys.seed_commitment(seed, B, node_id=1) != keys.self_mask_key(seed, B, node_id=1)


def test_private_key_round_trip() -> None:
    sk, pk = keys.x25519_keypair()
    again = keys.x25519_private_from_bytes(keys.x25519_private_bytes(sk))
    assert keys.x25519_public_from_private(again) == pk
    with pytest.raises(SecAggError):
        keys.x25519_private_from_bytes(b"short")


@pytest.mark.parametrize("peer", [bytes(32), b"\x01" + bytes(31), b"short"])
def test_low_order_or_malformed_peer_keys_are_rejected(peer: bytes) -> None:
    sk, _ = keys.x25519_keypair()
    with pytest.raises(SecAggError):
        keys.agree(sk, peer)


def test_share_encryption_round_trip() -> None:
    key = os.urandom(32)
    ct = keys.encrypt_shares(key, b"shares", B, sender=1, recipient=2)
    assert keys.decrypt_shares(key, ct, B, sender=1, recipient=2) == b"shares"
    assert ct != keys.encrypt_shares(key, b"shares", B, sender=1, recipient=2)  # fresh nonce


@pytest.mark.parametrize("position", [0, 12, 15, -1])
def test_tampered_ciphertext_is_rejected(position: int) -> None:
    key = os.urandom(32)
    ct = bytearray(keys.encrypt_shares(key, b"shares" * 20, B, sender=1, recipient=2))
    ct[position] ^= 0x40
    with pytest.raises(SecAggError, match="node 1"):
        keys.decrypt_shares(key, bytes(ct), B, sender=1, recipient=2)


@pytest.mark.parametrize(
    "binding,sender,recipient",
    [(B, 2, 1), (B, 1, 3), (B, 3, 2), *((o, 1, 2) for o in OTHER_BINDINGS)],
)
def test_ciphertext_bound_to_run_round_sender_and_recipient(
    binding: RoundBinding, sender: int, recipient: int
) -> None:
    key = os.urandom(32)
    ct = keys.encrypt_shares(key, b"shares", B, sender=1, recipient=2)
    with pytest.raises(SecAggError):
        keys.decrypt_shares(key, ct, binding, sender=sender, recipient=recipient)


def test_truncated_ciphertext_is_rejected() -> None:
    with pytest.raises(SecAggError):
        keys.decrypt_shares(os.urandom(32), b"x" * 27, B, sender=1, recipient=2)


def test_round_binding_validates_fields() -> None:
    with pytest.raises(ValueError, match="run_id"):
        RoundBinding(run_id=-1, round=0, config_digest=bytes(32))
    with pytest.raises(ValueError, match="round"):
        RoundBinding(run_id=0, round=True, config_digest=bytes(32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config_digest"):
        RoundBinding(run_id=0, round=0, config_digest=b"")


def test_constant_time_compare() -> None:
    assert keys.ct_equal(b"abc", b"abc")
    assert not keys.ct_equal(b"abc", b"abd")
    assert not keys.ct_equal(b"abc", b"ab")


def test_identity_private_key_round_trip() -> None:
    identity = keys.generate_identity_key()
    again = keys.load_identity_private_key(keys.identity_private_bytes(identity))
    assert keys.identity_public_bytes(again) == keys.identity_public_bytes(identity)
    with pytest.raises(SecAggError):
        keys.load_identity_private_key(b"short")
