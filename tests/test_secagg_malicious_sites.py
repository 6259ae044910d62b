"""A malicious site cannot take the round down: every malformed reply is rejected for that
site with a named reason, and the round releases the exact sum of the honest sites.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from privacy.secagg import ServerSession
from tests.test_secagg_harness import cohort_of, make_config, random_inputs, ring_sum

NODES = [1, 2, 3, 4, 5, 6, 7]
BAD = 4


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


MALFORMED: list[tuple[str, str, Any]] = [  # (stage, key, value)
    ("advertise-keys", "enc-pk", {"b64": 5}),
    ("advertise-keys", "signature", 5),
    ("advertise-keys", "seed-commit", b"short"),
    ("advertise-keys", "node-id", [4]),
    ("share-keys", "recipients", _deep(100_000)),
    ("share-keys", "recipients", ["1"]),
    ("share-keys", "ciphertexts", b"\0" * 10_000_000),
    ("share-keys", "share-commits", None),
    ("masked-input", "masked-vector", {"b64": 5}),
    ("masked-input", "masked-vector", np.zeros((16, 1), np.uint32)),
    ("masked-input", "run-id", 11.0),
    ("consistency-check", "signature", b"\0" * 64),
    ("consistency-check", "signature", [1, 2]),
    ("unmask", "seed-shares", b"\0" * 3),
    ("unmask", "key-share-ids", {"a": 1}),
    ("unmask", "seed-share-ids", _deep(50)),
    ("unmask", "stage", None),
]


def _flip_a_share(reply: dict[str, Any]) -> dict[str, Any]:
    data = bytearray(reply["seed-shares"])
    data[-5] ^= 0xFF
    return {**reply, "seed-shares": bytes(data)}


def _drive(bad_stage: str, mutate: Any) -> tuple[ServerSession, Any, dict[int, np.ndarray]]:
    """A full round in which site BAD replies ``mutate(reply)`` at ``bad_stage``."""
    from privacy.secagg import SiteSession

    config = make_config(NODES)
    cohort = cohort_of(NODES)
    server = ServerSession(config=config, registry=cohort.registry)
    inputs = random_inputs(config, seed=1)
    sites: dict[int, SiteSession] = {}
    steps = [
        ("advertise-keys", server.advertise_requests, server.receive_advertisement),
        ("share-keys", server.share_keys_requests, server.receive_shares),
        ("masked-input", server.masked_input_requests, server.receive_masked_input),
        ("consistency-check", server.consistency_requests, server.receive_consistency),
        ("unmask", server.unmask_requests, server.receive_unmask),
    ]
    for stage, make, receive in steps:
        for node, request in make().items():
            if stage == "advertise-keys":
                sites[node] = SiteSession.from_request(
                    request,
                    node_id=node,
                    identity_key=cohort.identities[node],
                    registry=cohort.registry,
                )
            site = sites[node]
            if stage == "masked-input":
                reply = site.masked_input(request, vector=inputs[node])
            else:
                reply = getattr(site, stage.replace("-", "_"))(request)
            if node == BAD and stage == bad_stage:
                reply = mutate(reply)
                assert receive(node, reply) is False
            else:
                assert receive(node, reply) is True
    return server, server.finish(), inputs


@pytest.mark.parametrize(
    "stage,key,value", MALFORMED, ids=[f"{s}:{k}:{type(v).__name__}" for s, k, v in MALFORMED]
)
def test_a_malformed_reply_drops_one_site_with_a_reason(stage: str, key: str, value: Any) -> None:
    server, result, inputs = _drive(stage, lambda reply: {**reply, key: value})
    ((node, where, reason),) = server.rejections
    assert (node, where) == (BAD, stage) and reason
    honest = [v for v in NODES if v in result.contributors]
    if stage in ("consistency-check", "unmask"):  # its input is in the sum, unmasked anyway
        assert BAD in result.contributors
    else:
        assert BAD not in result.contributors
    np.testing.assert_array_equal(result.vector, ring_sum([inputs[v] for v in honest], 32, 16))


def test_a_wrong_share_at_unmask_drops_the_liar_and_any_t_valid_shares_finish() -> None:
    server, result, inputs = _drive("unmask", _flip_a_share)
    assert "does not match the commitment" in server.rejections[-1][2]
    assert set(result.contributors) == set(NODES)
    np.testing.assert_array_equal(result.vector, ring_sum(list(inputs.values()), 32, 16))


def test_a_reply_that_is_not_a_mapping_or_from_a_bad_node_id_is_rejected() -> None:
    config = make_config(NODES)
    server = ServerSession(config=config, registry=cohort_of(NODES).registry)
    server.advertise_requests()
    for node, reply in ((1, None), (1, [1, 2]), ("1", {}), (None, {}), (2**70, {})):
        assert server.receive_advertisement(node, reply) is False  # type: ignore[arg-type]
    assert len(server.rejections) == 5
