"""What every Confide command shows its operator: exit statuses, the error line, log lines.

The ``confide`` subcommands are defined by the packages that own them (``server``, ``client``,
``privacy.audit``, ``simulations``) and dispatched by :mod:`simulations.cli`. They keep one
contract with the person at the terminal, defined here once:

- exit statuses: :data:`EXIT_OK`, :data:`EXIT_FAILED`, :data:`EXIT_BAD_INPUT` (a flag, a file
  or a directory refused, before anything is written), :data:`EXIT_INTERRUPTED`;
- bad input is a :class:`UsageError` that carries the field (flag or key) and the value; it
  and every other refusal print as one line, ``confide COMMAND: error: MESSAGE``
  (:func:`fail`);
- log lines: one timestamped line per event (:func:`log_events`), written by the commands
  and by the Flower app processes they start, whose streamed output the coordinator reads.

Why here: ``privacy.audit``, ``server`` and ``client`` all define subcommands and may not
import each other (or, for privacy, anything above it); ``protocol`` is the lowest layer they
all import. Standard library only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "PROJECT_LOGGERS",
    "UsageError",
    "configure_logging",
    "fail",
    "log_events",
]

EXIT_OK = 0
#: the command ran and failed (a run that did not complete, an audit with red flags)
EXIT_FAILED = 1
#: bad input: the message names the flag, key or path, and its value
EXIT_BAD_INPUT = 2
#: Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130

#: the loggers of the project's packages (``confide.*``: the deployment commands' own)
PROJECT_LOGGERS: tuple[str, ...] = ("confide", "server", "client", "protocol", "privacy")

_EVENT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_EVENT_DATE_FORMAT = "%H:%M:%S"
_WARNING_FORMAT = "%(levelname)s %(name)s: %(message)s"


class UsageError(ValueError):
    """Bad input from the user: a flag, a configuration key, a file or a directory.

    The message names the field and the value; ``field`` and ``value`` carry them (``None``
    where the input as a whole is refused, e.g. a directory that already holds a run).
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


def fail(command: str, message: object, code: int = EXIT_BAD_INPUT) -> int:
    """Print ``confide COMMAND: error: MESSAGE`` on stderr; return ``code`` (exit status)."""
    print(f"confide {command}: error: {message}", file=sys.stderr, flush=True)
    return code


def log_events(stream: TextIO, names: Sequence[str] = PROJECT_LOGGERS, *,
               replace: bool = True) -> None:
    """One timestamped line per event (INFO and up) on ``stream`` from the loggers ``names``.

    ``replace`` drops the loggers' handlers first (a command sets up its own output); without
    it only a logger that has no handler yet gets one (a Flower app process, whose entry
    point may run more than once).
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_EVENT_FORMAT, _EVENT_DATE_FORMAT))
    for name in names:
        logger = logging.getLogger(name)
        if replace:
            logger.handlers[:] = [handler]
        elif logger.handlers:
            continue
        else:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def configure_logging(*, events: bool) -> None:
    """Set up ``confide``'s logging: warnings on stderr; ``events``: every event on stdout.

    Long-running commands (``server``, ``client``) pass ``events``; the others show only
    warnings, with the logger's name.
    """
    logging.basicConfig(level=logging.WARNING, format=_WARNING_FORMAT)
    if events:
        log_events(sys.stdout)
