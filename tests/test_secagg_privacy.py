"""An instrumented server never holds an individual site's unmasked vector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from scipy import stats

from privacy.secagg import ServerSession, keys, shamir
from privacy.secagg.masks import apply_masks
from protocol.codec import Manifest, TensorSpec, decode, decoding_error_bound, encode
from protocol.wire import Stage
from tests.test_secagg_harness import cohort_of, make_config, run_round

NODES = [11, 12, 13, 14, 15, 16, 17, 18]
DIM = 40_000
BITS = 32
SCALE = 2.0**-16
MANIFEST = Manifest((TensorSpec("lora", (DIM,), "float32"),))


def _deltas() -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return {v: {"lora": (rng.normal(size=DIM) * 1e-3).astype(np.float32)} for v in NODES}


def _inputs(deltas: dict[int, dict[str, np.ndarray]]) -> dict[int, np.ndarray]:
    return {
        v: encode(
            d,
            MANIFEST,
            clip_norm=1.0,
            weight=1.0,
            scale=SCALE,
            modulus_bits=BITS,
            rng=np.random.default_rng(v),
        )
        for v, d in deltas.items()
    }


def _uniform_p(vec: np.ndarray) -> float:
    """Chi-square p-value of the top 8 bits of a 32-bit ring vector being uniform."""
    counts = np.bincount((vec >> np.uint32(BITS - 8)).astype(np.int64), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def _arrays(obj: Any, seen: set[int] | None = None) -> Iterator[np.ndarray]:
    """Every numpy array reachable from ``obj`` (attributes, containers)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _arrays(k, seen)
            yield from _arrays(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from _arrays(v, seen)
    elif hasattr(obj, "__dict__"):
        yield from _arrays(vars(obj), seen)


class RecordingServer(ServerSession):
    """Keeps a copy of every upload and of every array it holds after each call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.uploads: dict[int, np.ndarray] = {}
        self.held: list[np.ndarray] = []

    def _snapshot(self) -> None:
        self.held.extend(
            a.copy()
            for a in _arrays({k: v for k, v in vars(self).items() if k not in ("uploads", "held")})
        )

    def receive_masked_input(self, node_id: int, reply: dict[str, Any]) -> bool:
        self.uploads[node_id] = reply["masked-vector"].copy()
        accepted = super().receive_masked_input(node_id, reply)
        self._snapshot()
        return accepted

    def receive_unmask(self, node_id: int, reply: dict[str, Any]) -> bool:
        accepted = super().receive_unmask(node_id, reply)
        self._snapshot()
        return accepted

    def unmask_requests(self) -> dict[int, dict[str, Any]]:
        requests = super().unmask_requests()
        self._snapshot()
        return requests


@pytest.mark.parametrize(
    "drop",
    [
        {},
        {Stage.SHARE_KEYS: [12]},
        {Stage.MASKED_INPUT: [13]},
        {Stage.UNMASK: [14]},
        {Stage.ADVERTISE_KEYS: [11], Stage.MASKED_INPUT: [15], Stage.UNMASK: [16]},
    ],
    ids=["none", "after-advertise", "after-share-keys", "after-masked-input", "every-stage"],
)
def test_server_never_holds_an_individual_unmasked_vector(drop: dict[str, list[int]]) -> None:
    deltas = _deltas()
    inputs = _inputs(deltas)
    config = make_config(NODES, modulus_bits=BITS, vector_length=DIM)
    server = RecordingServer(config=config, registry=cohort_of(NODES).registry)
    run = run_round(config, inputs=inputs, drop=drop, server=server)
    assert run.result is not None

    # the test has power: plaintext encodings are far from uniform, masked uploads are not
    assert all(_uniform_p(x) < 1e-12 for x in inputs.values())
    for node, upload in server.uploads.items():
        assert _uniform_p(upload) > 1e-6, node
        assert stats.kstest(upload / 2.0**BITS, "uniform").pvalue > 1e-6

    bound = decoding_error_bound(n_sites=1, clip_norm=1.0, max_weight=1.0, scale=SCALE, dim=DIM)
    for held in server.held:
        if held.shape != (DIM,):
            continue
        assert _uniform_p(held) > 1e-6  # running sums are as masked as the uploads
        decoded = decode(held, MANIFEST, scale=SCALE, modulus_bits=BITS)["lora"]
        for node, x in inputs.items():
            assert not np.array_equal(held, x)
            assert np.max(np.abs(decoded - deltas[node]["lora"])) > 100 * bound.per_coordinate
    # the only unmasked vector is the final aggregate of the contributors
    assert len(run.result.contributors) >= 2


def test_dropped_sites_upload_stays_masked_even_with_every_share_the_server_got() -> None:
    """A site declared dropped after sending its masked input (a late arrival): the server
    learns its mask key and strips its pairwise masks, but never its self-mask seed.
    """
    deltas = _deltas()
    inputs = _inputs(deltas)
    config = make_config(NODES, modulus_bits=BITS, vector_length=DIM)
    late = 13
    run = run_round(config, inputs=inputs, drop={Stage.MASKED_INPUT: [late]},
                    stop_after=Stage.UNMASK)
    server = run.server
    upload = run.replies[Stage.MASKED_INPUT][late]["masked-vector"]
    assert late not in server._seed_shares  # nobody was asked for its seed share
    secret = keys.x25519_private_from_bytes(
        shamir.combine_shares(server._key_shares[late], threshold=config.threshold)
    )
    pair_keys_add, pair_keys_sub = [], []
    for peer in config.graph().neighbours(late):
        shared = keys.agree(secret, server._adverts[peer][1])
        key = keys.pair_mask_key(shared, config.binding, a=late, b=peer)
        # the late site added +mask for peers above it and -mask below: undo both
        (pair_keys_sub if late < peer else pair_keys_add).append(key)
    stripped = apply_masks(
        upload.copy(), add=pair_keys_add, subtract=pair_keys_sub, modulus_bits=BITS
    )
    assert _uniform_p(stripped) > 1e-6
    assert not np.array_equal(stripped, inputs[late])
    run.server.finish()
