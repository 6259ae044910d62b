"""Where the coordinator's time goes in a round: wall time per stage, and how much of it waited.

:class:`StageClock` times the stages of each round (``with clock.stage(round, "unmask"):``)
and, through :meth:`StageClock.waited`, the part of a stage spent waiting for the sites'
replies (an exchange: push, then pull until every reply is in). A stage's time minus its wait
is the coordinator's own work (building requests, checking replies, summing, unmasking,
writing the record): the figure that must grow no faster than the number of sites. The
round's metrics row records both mappings (``stage_time_s``, ``stage_wait_s``).

Only durations are kept: nothing per site.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

__all__ = ["StageClock", "stage_timer"]


class StageClock:
    """Per-round, per-stage wall time and the waiting inside it (seconds, summed on repeats)."""

    def __init__(self) -> None:
        self._times: dict[int, dict[str, float]] = {}
        self._waits: dict[int, dict[str, float]] = {}
        #: the stages open now, innermost last: a wait is booked to the innermost one
        self._open: list[tuple[int, str]] = []

    @contextlib.contextmanager
    def stage(self, round_num: int, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` of ``round_num`` (nested stages each count)."""
        self._open.append((round_num, name))
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._open.pop()
            times = self._times.setdefault(round_num, {})
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0

    def waited(self, round_num: int, seconds: float) -> None:
        """Book ``seconds`` of waiting for replies to the innermost open stage of the round.

        Outside any stage of ``round_num`` the wait is booked to a stage named ``other``.
        """
        name = next((s for r, s in reversed(self._open) if r == round_num), "other")
        waits = self._waits.setdefault(round_num, {})
        waits[name] = waits.get(name, 0.0) + seconds

    def pop(self, round_num: int) -> tuple[dict[str, float], dict[str, float]]:
        """Return and forget ``(stage times, stage waits)`` of ``round_num``."""
        return self._times.pop(round_num, {}), self._waits.pop(round_num, {})


def stage_timer(clock: StageClock | None,
                round_num: int) -> Callable[[str], AbstractContextManager[None]]:
    """``timed(name)``: a stage of ``round_num`` on ``clock``; a no-op without a clock."""
    if clock is None:
        return lambda name: contextlib.nullcontext()
    return lambda name: clock.stage(round_num, name)
