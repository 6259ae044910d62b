"""The secure-aggregation stage machine shared by the site and the server."""

from __future__ import annotations

from enum import Enum

from privacy.secagg.errors import StageError
from protocol import wire

__all__ = ["TRANSITIONS", "Stage", "check_transition", "is_valid_transition"]


class Stage(str, Enum):
    """Stages of one secure-aggregation round, in protocol order.

    ``SETUP`` is the state of a freshly created session; ``DONE`` and ``ABORTED`` are
    terminal. The values are :class:`protocol.wire.Stage`'s: the kebab-case name that
    travels in the ``"stage"`` payload key. ``CONSISTENCY_CHECK`` (Bonawitz et al. 2017) sits
    between the masked input and the unmask: every contributor signs the contributor set
    before anyone reveals a share.
    """

    SETUP = wire.Stage.SETUP
    ADVERTISE_KEYS = wire.Stage.ADVERTISE_KEYS
    SHARE_KEYS = wire.Stage.SHARE_KEYS
    MASKED_INPUT = wire.Stage.MASKED_INPUT
    CONSISTENCY_CHECK = wire.Stage.CONSISTENCY_CHECK
    UNMASK = wire.Stage.UNMASK
    DONE = wire.Stage.DONE
    ABORTED = wire.Stage.ABORTED


_ORDER = (
    Stage.SETUP,
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
    Stage.DONE,
)

#: Allowed transitions: each non-terminal stage may go to the next one or to ``ABORTED``.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    **{
        current: frozenset({nxt, Stage.ABORTED})
        for current, nxt in zip(_ORDER[:-1], _ORDER[1:], strict=True)
    },
    Stage.DONE: frozenset(),
    Stage.ABORTED: frozenset(),
}


def is_valid_transition(current: Stage, nxt: Stage) -> bool:
    """Return whether a session in ``current`` may move to ``nxt``."""
    return nxt in TRANSITIONS[Stage(current)]


def check_transition(current: Stage, nxt: Stage) -> None:
    """Raise unless a session in ``current`` may move to ``nxt``.

    Raises
    ------
    StageError
        If the transition is not one of :data:`TRANSITIONS`.
    """
    if not is_valid_transition(current, nxt):
        raise StageError(
            f"stage {Stage(nxt).value!r} may not follow stage {Stage(current).value!r}"
        )


def parse_stage(value: object) -> Stage:
    """Parse the ``"stage"`` payload value.

    Raises
    ------
    StageError
        If ``value`` is not the name of a stage.
    """
    if not isinstance(value, str):
        raise StageError(f"`stage` must be a str, got {type(value).__name__}")
    try:
        return Stage(value)
    except ValueError:
        raise StageError(
            f"`stage` must be one of {[s.value for s in Stage]}, got {value!r}"
        ) from None
