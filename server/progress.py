"""What ``confide simulate`` and ``confide server`` show while a run goes on.

:class:`RunProgress` reads the ServerApp's streamed log lines: it echoes them (less the
third-party lines that say nothing to the user, :func:`is_noise`) and turns the progress
events of :mod:`server.progress_events` and the ``round N/R:`` lines into a status of
round, stage, sites that replied so far, elapsed time and an estimate of the time left.
On a terminal that status is a live line at the bottom (``rich``); elsewhere (CI, a log
file) it is a plain line per change. :func:`quiet_env` sets what keeps the processes a run
starts from printing progress bars and advisory warnings (by library, never globally).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from server.progress_events import parse_event, stage_label

__all__ = ["RunProgress", "is_noise", "quiet_env"]

#: ``round N/R:`` starts the coordinator's line that closes round N (server/rounds.py)
_ROUND_DONE = re.compile(r"\bround (\d+)/(\d+): ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: lines of third-party output that say nothing to the user of a Confide run
_NOISE = re.compile("|".join([
    r"Loading weights",                                  # transformers' per-actor bar
    r"^\s*warnings\.warn\(",                            # the second line of a warning
    r"Since flwr 1\.32, default simulated SuperNodes",  # we always pass num-supernodes
    r"To change federation size, use the following",
    r"flwr federation simulation-config",
    r"^\(\w+ pid=\d+\)\s*$",                            # a Ray actor prefix with no text
    r"^(INFO|WARNING)\s*:\s*$",                         # Flower's empty log lines
]))

#: Python warnings filters for the processes a run starts (``PYTHONWARNINGS`` syntax:
#: action:message-prefix:category:module), each one message of one module
_WARNING_FILTERS = (
    # Ray's tip about a future default for accelerator env vars (we set no GPU for actors)
    "ignore:Tip:FutureWarning:ray._private.worker",
    # transformers' deprecation of an alias that peft / opacus call, not us
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning:transformers.modeling_utils",
)


def quiet_env(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Silence, in ``env``, the bars and advisories of the libraries a run's processes load.

    Hugging Face progress bars off, transformers logs errors only, and the two warnings
    above filtered by module; a filter the user set in ``PYTHONWARNINGS`` stays.
    """
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    user = [f for f in env.get("PYTHONWARNINGS", "").split(",") if f]
    env["PYTHONWARNINGS"] = ",".join([*user, *(f for f in _WARNING_FILTERS if f not in user)])
    return env


def is_noise(line: str) -> bool:
    """Tell whether ``line`` is third-party output that :class:`RunProgress` does not echo."""
    return bool(_NOISE.search(_ANSI.sub("", line).strip()))


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds) + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


@dataclass
class _Status:
    total_rounds: int
    round: int | None = None
    stage: str = "starting"
    sites: int = 0
    replied: int = 0
    round_started: float | None = None
    durations: list[float] = field(default_factory=list)

    def left(self, now: float) -> float | None:
        """Seconds left: the mean time of a training round so far times the rounds to go."""
        if not self.durations or self.round is None:
            return None
        per = sum(self.durations) / len(self.durations)
        done = self.round - 1 if self.round_started is not None else self.round
        rest = max(0, self.total_rounds - done) * per
        if self.round_started is not None:
            rest -= min(per, now - self.round_started)
        return max(0.0, rest)


class RunProgress:
    """Echo a run's log lines and keep a status of it: live on a terminal, plain lines else.

    ``live=None`` chooses by ``stream.isatty()``; ``echo=False`` shows the status only.
    """

    def __init__(self, *, total_rounds: int, stream: TextIO | None = None,
                 live: bool | None = None, echo: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.echo = echo
        self.status = _Status(total_rounds)
        self.start = time.monotonic()
        self._live: Any = None
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._last_plain = ""

    # the status ---------------------------------------------------------------------------
    def line(self, now: float | None = None) -> str:
        """Return the status as one line (what the live display and the plain mode show)."""
        now = time.monotonic() if now is None else now
        st = self.status
        parts = []
        if st.round is None:
            parts.append(f"round -/{st.total_rounds}")
        else:
            parts.append(f"round {st.round}/{st.total_rounds}")
        parts.append(st.stage)
        if st.sites:
            parts.append(f"{st.replied}/{st.sites} sites reported")
        parts.append(f"elapsed {_clock(now - self.start)}")
        left = st.left(now)
        parts.append("left: estimating" if left is None else f"about {_clock(left)} left")
        return " | ".join(parts)

    def _event(self, doc: dict[str, Any], now: float) -> None:
        st = self.status
        rnd = int(doc["round"])
        if st.round is None or rnd != st.round:
            st.round = rnd
            st.round_started = now if rnd > 0 else None
        st.stage = stage_label(str(doc.get("stage", "")))
        st.sites = int(doc.get("sites", 0))
        st.replied = int(doc.get("replied", 0))

    def _round_done(self, rnd: int, total: int, now: float) -> None:
        st = self.status
        st.total_rounds = total
        if rnd > 0 and st.round == rnd and st.round_started is not None:
            st.durations.append(now - st.round_started)
        st.round, st.round_started = rnd, None
        st.stage, st.sites, st.replied = f"round {rnd} done", 0, 0

    # feeding lines ------------------------------------------------------------------------
    def feed(self, line: str) -> None:
        """Take one line of the run's output: update the status, echo what the user needs."""
        now = time.monotonic()
        doc = parse_event(line)
        if doc is not None:
            self._event(doc, now)
        else:
            m = _ROUND_DONE.search(line)
            if m:
                self._round_done(int(m.group(1)), int(m.group(2)), now)
            if self.echo and not is_noise(line):
                self._write(line)
        self._show(now)

    def _write(self, line: str) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.console.print(Text.from_ansi(line.rstrip("\n")), soft_wrap=True)
        else:
            self.stream.write(line if line.endswith("\n") else line + "\n")
            self.stream.flush()

    def _show(self, now: float) -> None:
        if self._live is not None:  # redrawn by rich 4 times a second (_StatusView)
            return
        st = self.status
        key = f"{st.round}|{st.stage}|{st.replied}/{st.sites}"
        if st.round is not None and key != self._last_plain:  # plain: one line per change
            self._last_plain = key
            self.stream.write(f"progress: {self.line(now)}\n")
            self.stream.flush()

    # the live display -----------------------------------------------------------------------
    def __enter__(self) -> RunProgress:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            self._live = Live(_StatusView(self), console=console, refresh_per_second=4,
                              transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
            # our own log lines (logging to this stream) go above the live line too
            for name in ("confide", "server", "client", "protocol", "privacy", "simulations"):
                for h in logging.getLogger(name).handlers:
                    if isinstance(h, logging.StreamHandler) and h.stream is self.stream:
                        self._moved.append((h, h.setStream(_ConsoleWriter(self))))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display; print the last status as a plain line."""
        for h, stream in self._moved:
            h.setStream(stream)
        self._moved.clear()
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()
            self.stream.write(f"progress: {self.line()}\n")
            self.stream.flush()


class _StatusView:
    """The live line: rendered afresh at each refresh, so the elapsed time moves on."""

    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress

    def __rich__(self) -> Any:
        from rich.text import Text

        return Text(self.progress.line(), style="bold")


class _ConsoleWriter:
    """A file-like object a logging handler writes to while the live display runs."""

    def __init__(self, progress: RunProgress) -> None:
        self.progress = progress
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.progress._write(line)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered past the last newline."""
