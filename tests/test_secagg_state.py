"""Site sessions survive between Flower messages as dicts of bytes; wipe() forgets secrets;
round configs are validated, canonical and refuse unknown keys.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from privacy.secagg import SecAggConfig, SecAggError, SiteSession, Stage, StageError
from protocol import wire
from tests.test_secagg_harness import cohort_of, make_config, ring_sum, run_round

NODES = [5, 6, 7, 8]
SECRET_KEYS = ("enc-sk", "mask-sk", "seed", "own-seed-share")


def _restore(site: SiteSession) -> SiteSession:
    cohort = cohort_of(NODES)
    state = site.to_state()
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in state.items())
    return SiteSession.from_state(
        dict(state), identity_key=cohort.identities[site.node_id], registry=cohort.registry
    )


class _Persisting:
    """Stands in for Flower: each message rebuilds the site from its stored state."""

    def __init__(self, site: SiteSession) -> None:
        self.site = site

    def __getattr__(self, name: str) -> Any:
        restored = _restore(self.site)
        method = getattr(restored, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            out = method(*args, **kwargs)
            self.site = restored
            return out

        return call if callable(method) else method


def test_round_completes_when_sites_are_restored_from_state_before_every_message() -> None:
    config = make_config(NODES, vector_length=33)
    stages = wire.SECAGG_STAGES
    run = run_round(config, stop_after=wire.Stage.ADVERTISE_KEYS)
    wrapped = {v: _Persisting(s) for v, s in run.sites.items()}
    server = run.server
    for stage, (make, receive) in zip(
        stages[1:],
        [
            (server.share_keys_requests, server.receive_shares),
            (server.masked_input_requests, server.receive_masked_input),
            (server.consistency_requests, server.receive_consistency),
            (server.unmask_requests, server.receive_unmask),
        ],
        strict=True,
    ):
        for v, request in make().items():
            call = getattr(wrapped[v], stage.replace("-", "_"))
            kwargs = {"vector": run.inputs[v]} if stage == wire.Stage.MASKED_INPUT else {}
            assert receive(v, call(request, **kwargs))
    result = server.finish()
    np.testing.assert_array_equal(result.vector, ring_sum(list(run.inputs.values()), 32, 33))
    for w in wrapped.values():
        assert w.site.stage is Stage.DONE
        assert not any(k in w.site.to_state() for k in SECRET_KEYS)


def test_secrets_are_dropped_as_soon_as_they_are_no_longer_needed() -> None:
    config = make_config(NODES)
    run = run_round(config, stop_after=wire.Stage.SHARE_KEYS)
    state = run.sites[5].to_state()
    assert all(k in state for k in SECRET_KEYS)
    request = run.server.masked_input_requests()[5]
    run.sites[5].masked_input(request, vector=run.inputs[5])
    state = run.sites[5].to_state()
    assert not any(k in state for k in ("enc-sk", "mask-sk", "seed"))
    assert "own-seed-share" in state and state["held"] != b"{}"


def test_wipe_mid_round_aborts_the_session() -> None:
    run = run_round(make_config(NODES), stop_after=wire.Stage.SHARE_KEYS)
    site = run.sites[6]
    site.wipe()
    assert site.stage is Stage.ABORTED
    state = site.to_state()
    assert not any(k in state for k in SECRET_KEYS) and state["held"] == b"{}"
    with pytest.raises(StageError):
        site.masked_input(run.server.masked_input_requests()[6], vector=run.inputs[6])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: {**s, "version": b"9"},
        lambda s: {k: v for k, v in s.items() if k != "config"},
        lambda s: {**s, "stage": b"sideways"},
        lambda s: {**s, "held": b"not json"},
        lambda s: {**s, "seed": b"short", "enc-sk": b"x"},
    ],
)
def test_malformed_state_is_refused(mutate: Any) -> None:
    run = run_round(make_config(NODES), stop_after=wire.Stage.ADVERTISE_KEYS)
    cohort = cohort_of(NODES)
    with pytest.raises(SecAggError):
        SiteSession.from_state(
            mutate(run.sites[5].to_state()),
            identity_key=cohort.identities[5],
            registry=cohort.registry,
        )


def test_site_construction_checks_its_arguments() -> None:
    config = make_config(NODES)
    cohort = cohort_of(NODES)
    with pytest.raises(ValueError, match="node_id"):
        SiteSession(config=config, node_id=99, identity_key=cohort.identities[5], registry={})
    with pytest.raises(ValueError, match="identity_key"):
        SiteSession(config=config, node_id=5, identity_key=b"k", registry={})  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="config"):
        SiteSession.from_request(
            {"stage": wire.Stage.ADVERTISE_KEYS}, node_id=5, identity_key=cohort.identities[5],
            registry={},
        )


# ----------------------------------------------------------------------------- config


def test_config_payload_round_trip_and_digest_covers_every_field() -> None:
    config = make_config(NODES)
    assert SecAggConfig.from_payload(config.to_payload()) == config
    changes = {
        "run_id": 12,
        "round": 3,
        "cohort": (5, 6, 7, 9),
        "threshold": 4,
        "graph_seed": os.urandom(32),
        "modulus_bits": 33,
        "vector_length": 17,
    }
    digests = {config.digest()}
    for field, value in changes.items():
        digests.add(SecAggConfig(**{**config.__dict__, field: value}).digest())
    assert len(digests) == len(changes) + 1
    assert "4 sites" in config.summary() and "threshold 3" in config.summary()


def test_config_refuses_unknown_and_missing_keys() -> None:
    payload = make_config(NODES).to_payload()
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        SecAggConfig.from_payload({**payload, "colour": 1})
    with pytest.raises(ValueError, match="missing key 'threshold'"):
        SecAggConfig.from_payload({k: v for k, v in payload.items() if k != "threshold"})


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("run_id", -1, "run_id"),
        ("round", True, "round"),
        ("cohort", (3, 2, 1), "sorted"),
        ("cohort", [1, 2, 3], "cohort"),
        ("cohort", (1, 2), "cohort_size"),
        ("threshold", 1, "threshold"),
        ("threshold", 5, "threshold"),
        ("degree", 4, "degree"),
        ("graph_seed", b"short", "graph_seed"),
        ("modulus_bits", 65, "modulus_bits"),
        ("modulus_bits", 1, "modulus_bits"),
        ("vector_length", 0, "vector_length"),
    ],
)
def test_config_fields_are_validated_by_name(field: str, value: Any, match: str) -> None:
    config = make_config(NODES)
    with pytest.raises(ValueError, match=match):
        SecAggConfig(**{**config.__dict__, field: value})
