"""The stage machine: only the protocol's transitions pass, on both sides."""

from __future__ import annotations

import itertools

import pytest

from privacy.secagg import SiteSession, Stage, StageError, check_transition, is_valid_transition
from privacy.secagg.stages import parse_stage
from protocol import wire
from tests.test_secagg_harness import cohort_of, make_config, run_round

VALID = {
    (Stage.SETUP, Stage.ADVERTISE_KEYS),
    (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS),
    (Stage.SHARE_KEYS, Stage.MASKED_INPUT),
    (Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK),
    (Stage.CONSISTENCY_CHECK, Stage.UNMASK),
    (Stage.UNMASK, Stage.DONE),
    *((s, Stage.ABORTED) for s in Stage if s not in (Stage.DONE, Stage.ABORTED)),
}


@pytest.mark.parametrize("current,nxt", list(itertools.product(Stage, Stage)))
def test_only_protocol_transitions_pass(current: Stage, nxt: Stage) -> None:
    assert is_valid_transition(current, nxt) == ((current, nxt) in VALID)
    if (current, nxt) in VALID:
        check_transition(current, nxt)
    else:
        with pytest.raises(StageError, match=nxt.value):
            check_transition(current, nxt)


def test_terminal_stages_have_no_successor() -> None:
    for terminal in (Stage.DONE, Stage.ABORTED):
        assert not any(is_valid_transition(terminal, s) for s in Stage)


def test_parse_stage_rejects_unknown_names() -> None:
    assert parse_stage(wire.Stage.UNMASK) is Stage.UNMASK
    for bad in ("UNMASK", "", None, 3, b"unmask"):
        with pytest.raises(StageError):
            parse_stage(bad)


SITE_METHODS = wire.SECAGG_STAGES
_NEXT = {
    wire.Stage.ADVERTISE_KEYS: "share_keys_requests",
    wire.Stage.SHARE_KEYS: "masked_input_requests",
    wire.Stage.MASKED_INPUT: "consistency_requests",
    wire.Stage.CONSISTENCY_CHECK: "unmask_requests",
}


@pytest.mark.parametrize("completed", range(len(SITE_METHODS) + 1))
@pytest.mark.parametrize("attempt", SITE_METHODS)
def test_site_accepts_only_the_next_stage_request(completed: int, attempt: str) -> None:
    """A site that completed the first ``completed`` stages takes only the next request."""
    config = make_config([1, 2, 3, 4])
    other = run_round(config)  # a complete round: requests for every stage, to replay
    if completed == 0:
        site = SiteSession.from_request(
            other.requests[wire.Stage.ADVERTISE_KEYS][1],
            node_id=1,
            identity_key=other_identity(config),
            registry=cohort_of(config.cohort).registry,
        )
        genuine = {wire.Stage.ADVERTISE_KEYS: other.requests[wire.Stage.ADVERTISE_KEYS][1]}
    elif completed < len(SITE_METHODS):
        run = run_round(config, stop_after=SITE_METHODS[completed - 1])
        site = run.sites[1]
        nxt = SITE_METHODS[completed]
        genuine = {nxt: getattr(run.server, _NEXT[SITE_METHODS[completed - 1]])()[1]}
    else:
        site, genuine = other.sites[1], {}
    request = genuine.get(attempt, other.requests[attempt][1])
    call = getattr(site, attempt.replace("-", "_"))
    kwargs = {"vector": other.inputs[1]} if attempt == wire.Stage.MASKED_INPUT else {}
    if attempt in genuine:
        call(request, **kwargs)
        assert site.stage in (Stage(attempt), Stage.DONE)
    else:
        before = site.stage
        with pytest.raises(StageError):
            call(request, **kwargs)
        assert site.stage == before


def other_identity(config):  # type: ignore[no-untyped-def]
    return cohort_of(config.cohort).identities[1]
