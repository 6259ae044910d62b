"""Payload keys and checks shared by the site and the server.

Every payload is a flat ``dict`` whose values are ``int``, ``str``, ``bytes``, ``list[int]``
or a 1-D ``numpy`` array of an unsigned ring dtype, so it maps 1:1 onto Flower's
``ConfigRecord`` (everything but arrays) and ``ArrayRecord`` (the masked vector).

Requests (server to site) carry ``run-id``, ``round`` and ``stage``; all but the first also
carry ``config-digest``. Replies (site to server) carry ``run-id``, ``round``, ``stage`` and
``node-id``. Fixed-width byte fields of several peers are concatenated in the order of the
accompanying id list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from privacy.secagg import shamir
from privacy.secagg.errors import SecAggError, StageError
from privacy.secagg.keys import (
    KEY_LEN,
    NONCE_LEN,
    SIGNATURE_LEN,
    TAG_LEN,
    RoundBinding,
    ct_equal,
)
from privacy.secagg.stages import Stage, parse_stage
from protocol.codec import ring_dtype

__all__ = [
    "CIPHERTEXT_LEN",
    "REPLY_KEYS",
    "REQUEST_KEYS",
    "check_reply",
    "check_request",
    "get_bytes",
    "get_ids",
    "ring_vector_problem",
    "split_fixed",
]

#: Plaintext of an encrypted share pair: self-mask-seed share then mask-key share.
SHARE_PAIR_LEN = 2 * shamir.SHARE_LEN
CIPHERTEXT_LEN = NONCE_LEN + SHARE_PAIR_LEN + TAG_LEN

_HEADER_REQUEST = ("config-digest", "round", "run-id", "stage")
_HEADER_REPLY = ("node-id", "round", "run-id", "stage")

#: Stage-specific keys of each request (on top of the header; ADVERTISE_KEYS carries the
#: whole config instead of its digest).
REQUEST_KEYS: dict[Stage, tuple[str, ...]] = {
    Stage.SHARE_KEYS: ("enc-pks", "mask-pks", "node-ids", "seed-commits", "signatures"),
    Stage.MASKED_INPUT: ("ciphertexts", "senders"),
    Stage.CONSISTENCY_CHECK: ("contributors",),
    Stage.UNMASK: ("alive", "contributors", "dropped", "signatures", "signers"),
}

#: Stage-specific keys of each reply.
REPLY_KEYS: dict[Stage, tuple[str, ...]] = {
    Stage.ADVERTISE_KEYS: ("enc-pk", "mask-pk", "seed-commit", "signature"),
    Stage.SHARE_KEYS: ("ciphertexts", "recipients", "share-commits"),
    Stage.MASKED_INPUT: ("masked-vector",),
    Stage.CONSISTENCY_CHECK: ("signature",),
    Stage.UNMASK: ("key-share-ids", "key-shares", "seed-share-ids", "seed-shares"),
}

#: Widths of the fixed-size entries of concatenated byte fields.
WIDTHS = {
    "enc-pks": KEY_LEN,
    "mask-pks": KEY_LEN,
    "seed-commits": KEY_LEN,
    "signatures": SIGNATURE_LEN,
    "ciphertexts": CIPHERTEXT_LEN,
    "seed-shares": shamir.SHARE_LEN,
    "key-shares": shamir.SHARE_LEN,
    "share-commits": 2 * KEY_LEN,  # per holder: seed-share then key-share commitment
}


def _check_common(
    payload: Mapping[str, Any], stage: Stage, binding: RoundBinding, expected: set[str]
) -> None:
    if not isinstance(payload, Mapping):
        raise SecAggError(f"payload must be a mapping, got {type(payload).__name__}")
    if parse_stage(payload.get("stage")) != stage:
        raise StageError(f"expected a {stage.value!r} message, got {payload.get('stage')!r}")
    missing = sorted(expected - set(payload))
    unknown = sorted(set(payload) - expected)
    if missing:
        raise SecAggError(f"{stage.value!r} message is missing key {missing[0]!r}")
    if unknown:
        raise SecAggError(f"{stage.value!r} message has unknown key {unknown[0]!r}")
    run_id, rnd = payload["run-id"], payload["round"]
    if type(run_id) is not int or run_id != binding.run_id:
        raise SecAggError(f"message is for run {run_id!r}, this is run {binding.run_id}")
    if type(rnd) is not int or rnd != binding.round:
        raise SecAggError(f"message is for round {rnd!r}, this is round {binding.round}")


def check_request(
    payload: Mapping[str, Any],
    *,
    stage: Stage,
    binding: RoundBinding,
    extra: Sequence[str] = (),
    with_digest: bool = True,
) -> None:
    """Check a request's run, round, stage, config digest and exact key set.

    Raises
    ------
    StageError
        If the request is for another stage.
    SecAggError
        If it is for another run, round or config, or has missing or unknown keys.
    """
    header = _HEADER_REQUEST if with_digest else ("round", "run-id", "stage")
    _check_common(payload, stage, binding, set(header) | set(extra))
    if with_digest:
        digest = payload["config-digest"]
        if not isinstance(digest, bytes) or not ct_equal(digest, binding.config_digest):
            raise SecAggError("message is for another secure-aggregation config")


def check_reply(
    payload: Mapping[str, Any],
    *,
    stage: Stage,
    binding: RoundBinding,
    node_id: int,
    extra: Sequence[str] = (),
) -> None:
    """Check a reply's run, round, stage, claimed sender and exact key set.

    Raises
    ------
    StageError
        If the reply is for another stage.
    SecAggError
        If it is for another run or round, claims another sender, or has missing or
        unknown keys.
    """
    _check_common(payload, stage, binding, set(_HEADER_REPLY) | set(extra))
    claimed = payload["node-id"]
    if type(claimed) is not int or claimed != node_id:
        raise SecAggError(f"reply claims node {claimed!r}, sent by node {node_id}")


def get_ids(payload: Mapping[str, Any], key: str, *, max_len: int | None = None) -> list[int]:
    """Return ``payload[key]`` as a list of distinct ints, or raise :class:`SecAggError`.

    ``max_len`` (the cohort size, where known) is checked before the list is read.
    """
    value = payload[key]
    if not isinstance(value, (list, tuple)):
        raise SecAggError(f"`{key}` must be a list of node ids")
    if max_len is not None and len(value) > max_len:
        raise SecAggError(f"`{key}` names {len(value)} nodes, more than the cohort's {max_len}")
    if any(type(v) is not int for v in value):
        raise SecAggError(f"`{key}` must be a list of node ids")
    if len(set(value)) != len(value):
        raise SecAggError(f"`{key}` repeats a node id")
    return list(value)


def get_bytes(payload: Mapping[str, Any], key: str) -> bytes:
    """Return ``payload[key]`` as bytes, or raise :class:`SecAggError`."""
    value = payload[key]
    if not isinstance(value, bytes):
        raise SecAggError(f"`{key}` must be bytes, got {type(value).__name__}")
    return value


def split_fixed(payload: Mapping[str, Any], key: str, count: int) -> list[bytes]:
    """Split the concatenated field ``key`` into ``count`` entries of its fixed width."""
    data = get_bytes(payload, key)
    width = WIDTHS[key]
    if type(count) is not int or count < 0:
        raise SecAggError(f"`{key}`: bad entry count")
    if len(data) != count * width:
        raise SecAggError(f"`{key}` must hold {count} entries of {width} bytes")
    return [data[i * width : (i + 1) * width] for i in range(count)]


def ring_vector_problem(vector: object, *, modulus_bits: int, length: int) -> str | None:
    """Say what is wrong with a vector that should be ``length`` elements of Z/2^k, or None.

    The vector must be of exactly :func:`~protocol.codec.ring_dtype` ``(k)`` (``uint16`` for
    k <= 16, and so on; native byte order): a wider, signed, float or byte-swapped array is
    refused, as are values >= 2^k where the dtype could hold them.
    """
    dtype = ring_dtype(modulus_bits)
    if not isinstance(vector, np.ndarray) or vector.dtype != dtype:
        got = getattr(vector, "dtype", type(vector).__name__)
        return f"must be a {dtype} array for the ring Z/2^{modulus_bits}, got {got}"
    if vector.shape != (length,):
        return f"has shape {vector.shape}, expected ({length},)"
    if int(vector.max()) >> modulus_bits:
        return f"holds values >= 2^{modulus_bits}"
    return None
