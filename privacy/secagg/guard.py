"""A site's persistent record of what it did in each round, so that no attempt is replayed.

A coordinator that runs one round twice (two attempts, e.g. {A, B, X} and {A, B}) and
subtracts the sums learns X's input, since training is seeded by (seed, round, site). Per-
message work runs in a fresh process, so the record lives in a file in the site's state
directory, written atomically (temporary file, fsync, rename) *before* the masked input
or the shares leave. The rules, per (run, round):

- at most one masked input, whatever the attempt (so every sum of that round that the
  coordinator can unmask holds this site's input in at most one of them);
- unmask help only for the attempt this site sent its masked input in, and only once.

A refused re-run is a normal outcome: the site declines that round and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from privacy.secagg.errors import SecAggError

__all__ = ["GUARD_FILE", "RoundGuard"]

logger = logging.getLogger(__name__)

GUARD_FILE = "secagg-rounds.json"
_VERSION = 1
_U64 = (1 << 64) - 1


def _check(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= _U64:
        raise ValueError(f"`{name}` must be an int in [0, 2^64), got {value!r}")
    return value


class RoundGuard:
    """Claims, per (run, round), of a site's masked input and unmask help.

    Parameters
    ----------
    state_dir : path
        The site's state directory; the record is ``state_dir / GUARD_FILE``.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / GUARD_FILE

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": _VERSION, "rounds": {}}
        except (OSError, ValueError) as exc:
            # never start afresh over a damaged record: that would allow a replay
            raise SecAggError(f"round record {self.path} is unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            raise SecAggError(f"round record {self.path} has an unknown format")
        if not isinstance(doc.get("rounds"), dict):
            raise SecAggError(f"round record {self.path} is malformed")
        return doc

    def _store(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".secagg-rounds.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _key(run_id: int, round: int) -> str:
        return f"{_check('run_id', run_id)}/{_check('round', round)}"

    def record(self, run_id: int, round: int) -> dict[str, int]:
        """Return what this site did in ``(run_id, round)``: ``{"masked-input": attempt, ...}``."""
        entry = self._load()["rounds"].get(self._key(run_id, round), {})
        return dict(entry) if isinstance(entry, dict) else {}

    def claim_masked_input(self, run_id: int, round: int, attempt: int) -> None:
        """Record that this site sends its masked input for this attempt.

        Raises
        ------
        SecAggError
            If it already sent one for any attempt of ``(run_id, round)``.
        """
        _check("attempt", attempt)
        doc = self._load()
        key = self._key(run_id, round)
        entry = doc["rounds"].setdefault(key, {})
        if "masked-input" in entry:
            raise SecAggError(
                f"this site already sent a masked input for run {run_id} round {round} "
                f"(attempt {entry['masked-input']}); it never sends two"
            )
        entry["masked-input"] = attempt
        self._store(doc)
        logger.debug(
            "claimed the masked input of run %d round %d attempt %d", run_id, round, attempt
        )

    def claim_unmask(self, run_id: int, round: int, attempt: int) -> None:
        """Record that this site reveals its unmask shares for this attempt.

        Raises
        ------
        SecAggError
            If this site sent no masked input in this attempt, or already helped unmask
            an attempt of ``(run_id, round)``.
        """
        _check("attempt", attempt)
        doc = self._load()
        key = self._key(run_id, round)
        entry = doc["rounds"].setdefault(key, {})
        if entry.get("masked-input") != attempt:
            raise SecAggError(
                f"this site sent no masked input in attempt {attempt} of run {run_id} "
                f"round {round}; it unmasks only the attempt it contributed to"
            )
        if "unmask" in entry:
            raise SecAggError(
                f"this site already helped unmask run {run_id} round {round} "
                f"(attempt {entry['unmask']})"
            )
        entry["unmask"] = attempt
        self._store(doc)
