"""The site's privacy ledger: an append-only, hash-chained JSON-lines record of every round.

One file, ``<state_dir>/privacy-ledger.jsonl``; one JSON object per line::

    {"seq": 0, "run_id": "run-a", "round": 1, "status": "trained", "reason": null,
     "steps": 10, "sample_rate": 0.016, "noise_multiplier": 1.1, "max_grad_norm": 1.0,
     "accountant": "rdp", "delta": 1e-05, "epsilon_after": 0.42,
     "timestamp": "2026-01-01T00:00:00+00:00",
     "prev_hash": "000...0", "hash": "9f2c..."}

* ``status`` is ``trained`` (a composition entry: ``steps`` >= 1 DP-SGD steps at
  ``sample_rate`` q and ``noise_multiplier`` σ) or ``declined`` (``steps`` 0, ``reason``
  says why, e.g. ``budget-exhausted``; q and σ hold what was asked, or null). Declined
  entries are kept for the audit trail but never composed.
* ``epsilon_after`` is the site's total ε over all its entries (every run) after this one,
  at ``delta`` with ``accountant``.
* ``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces, ASCII) of the entry
  without ``hash``; ``prev_hash`` is the previous entry's ``hash`` (64 zeros for the first).
  :meth:`PrivacyLedger.head` is the last hash; reporting it off-site (e.g. in round metrics)
  lets an audit detect a ledger whose tail was later cut off, which a chain alone cannot.
* ``noise_source`` (trained entries written since the noise-source change; optional):
  ``csprng`` (noise and Poisson coins from ``os.urandom``) or ``seeded`` (a generator keyed
  by the site's secret seed; see :mod:`privacy.noise_source`). Older lines have no such key
  and hash exactly as before; the audit shows their source as unrecorded and flags them,
  as it flags every ``seeded`` round.

Every append rewrites the whole file atomically (temp file, fsync, rename), so a crash
leaves the old ledger or the new one. Opening verifies the whole chain; any malformed,
truncated or tampered line raises :class:`LedgerError` naming the file and line, and the
file is left untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from privacy.accounting import Mechanism
from privacy.noise_source import NOISE_SOURCES
from protocol.io import atomic_write_bytes

__all__ = [
    "GENESIS_HASH",
    "LEDGER_FILENAME",
    "OPTIONAL_FIELDS",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "canonical_json",
    "entry_problem",
    "link_problems",
]

logger = logging.getLogger(__name__)

LEDGER_FILENAME = "privacy-ledger.jsonl"
GENESIS_HASH = "0" * 64
_STATUSES = ("trained", "declined")


class LedgerError(ValueError):
    """The ledger file is malformed, truncated or tampered with (names file and line)."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"privacy ledger {where}: {message}")
        self.path = path
        self.line = line


def canonical_json(obj: Any) -> bytes:
    """Return the bytes hashed for an entry: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger line (see the module docstring for the meaning of each field)."""

    seq: int
    run_id: str
    round: int
    status: str
    reason: str | None
    steps: int
    sample_rate: float | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    accountant: str
    delta: float
    epsilon_after: float
    timestamp: str
    prev_hash: str
    hash: str
    noise_source: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Return the entry as its ledger line holds it: an unset optional field is left out."""
        out = asdict(self)
        for name in OPTIONAL_FIELDS:
            if out[name] is None:
                del out[name]
        return out

    def body(self) -> dict[str, Any]:
        """Return the fields covered by ``hash`` (all but ``hash``)."""
        out = self.to_record()
        del out["hash"]
        return out

    def compute_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`body`."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    @property
    def is_composition(self) -> bool:
        """Whether this entry spent privacy (a trained round with steps)."""
        return self.status == "trained" and self.steps > 0

    @property
    def mechanism(self) -> Mechanism:
        """``(sample_rate, noise_multiplier, steps)`` of a trained entry."""
        if not self.is_composition or self.sample_rate is None or self.noise_multiplier is None:
            raise ValueError(f"ledger entry {self.seq} is not a composition entry")
        return Mechanism(self.sample_rate, self.noise_multiplier, self.steps)


#: Fields a line may leave out (absent in ledgers written before they existed).
OPTIONAL_FIELDS: tuple[str, ...] = ("noise_source",)
_FIELDS = tuple(f.name for f in fields(LedgerEntry) if f.name not in OPTIONAL_FIELDS)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _entry_problem(d: dict[str, Any]) -> str | None:
    """Return what is wrong with a parsed entry's field types / ranges (None when fine)."""
    keys = set(d)
    if not set(_FIELDS) <= keys <= set(_FIELDS) | set(OPTIONAL_FIELDS):
        missing = sorted(set(_FIELDS) - keys)
        extra = sorted(keys - set(_FIELDS) - set(OPTIONAL_FIELDS))
        return f"fields differ from the ledger format (missing {missing}, unexpected {extra})"
    if d.get("noise_source") not in (None, *NOISE_SOURCES):  # null: unrecorded, as absent
        return f"`noise_source` must be one of {NOISE_SOURCES}, got {d['noise_source']!r}"
    for name in ("seq", "round", "steps"):
        if type(d[name]) is not int or d[name] < 0:
            return f"`{name}` must be an int >= 0, got {d[name]!r}"
    for name in ("run_id", "accountant", "timestamp", "prev_hash", "hash"):
        if not isinstance(d[name], str):
            return f"`{name}` must be a string, got {d[name]!r}"
    if d["status"] not in _STATUSES:
        return f"`status` must be one of {_STATUSES}, got {d['status']!r}"
    if d["reason"] is not None and not isinstance(d["reason"], str):
        return f"`reason` must be a string or null, got {d['reason']!r}"
    for name in ("delta", "epsilon_after"):
        if not _is_num(d[name]):
            return f"`{name}` must be a finite number, got {d[name]!r}"
    for name in ("sample_rate", "noise_multiplier", "max_grad_norm"):
        if d[name] is not None and not _is_num(d[name]):
            return f"`{name}` must be a finite number or null, got {d[name]!r}"
    if d["status"] == "trained":
        q, sigma = d["sample_rate"], d["noise_multiplier"]
        if d["steps"] < 1 or q is None or sigma is None or not 0 < q <= 1 or sigma < 0:
            return "a trained entry needs steps >= 1, 0 < sample_rate <= 1, noise_multiplier >= 0"
    elif d["steps"] != 0:
        return f"a declined entry must have steps 0, got {d['steps']!r}"
    return None


def link_problems(entry: LedgerEntry, index: int, prev_hash: str) -> list[str]:
    """Return what breaks the chain at ``entry``, the ``index``-th (from 0) after ``prev_hash``.

    The one chain rule every reader applies: the site's ledger, the audit's salvaging reader
    and the signed summaries.
    """
    problems = []
    if entry.seq != index:
        problems.append(f"`seq` is {entry.seq}, expected {index} "
                        "(a line was removed or reordered)")
    if entry.prev_hash != prev_hash:
        problems.append("hash chain broken: `prev_hash` does not match the previous entry's hash")
    if entry.compute_hash() != entry.hash:
        problems.append("entry was modified: its hash does not match its content")
    return problems


entry_problem = _entry_problem  # field types and ranges of one parsed entry (None when fine)


def _parse(path: Path, raw: bytes) -> list[LedgerEntry]:
    """Verify and parse the whole file; raise :class:`LedgerError` at the first bad line."""
    if not raw:
        return []
    lines = raw.split(b"\n")
    if lines[-1] != b"":
        raise LedgerError(path, len(lines), "truncated line (no newline at the end of the file)")
    entries: list[LedgerEntry] = []
    prev = GENESIS_HASH
    for lineno, line in enumerate(lines[:-1], start=1):
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(path, lineno, f"malformed or truncated line ({exc})") from None
        if not isinstance(obj, dict):
            raise LedgerError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        problem = _entry_problem(obj)
        if problem is not None:
            raise LedgerError(path, lineno, problem)
        entry = LedgerEntry(**obj)
        broken = link_problems(entry, lineno - 1, prev)
        if broken:
            raise LedgerError(path, lineno, broken[0])
        entries.append(entry)
        prev = entry.hash
    return entries


class PrivacyLedger:
    """The append-only privacy ledger of one site.

    Parameters
    ----------
    state_dir : str or os.PathLike
        The site's state directory; the ledger is ``state_dir / LEDGER_FILENAME``. The
        directory and file are created on the first write.

    Raises
    ------
    LedgerError
        If the existing file fails verification (nothing is written then or later).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / LEDGER_FILENAME
        self._raw = self.path.read_bytes() if self.path.exists() else b""
        self._entries = _parse(self.path, self._raw)
        logger.debug("opened privacy ledger %s (%d entries)", self.path, len(self._entries))

    # ---- reading ---------------------------------------------------------------------

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """All entries, oldest first."""
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def head(self) -> str:
        """Hash of the last entry (``GENESIS_HASH`` for an empty ledger)."""
        return self._entries[-1].hash if self._entries else GENESIS_HASH

    def history(self, *, exclude_run: str | None = None) -> list[Mechanism]:
        """Return the accountant history: ``(q, σ, steps)`` of every trained entry.

        Parameters
        ----------
        exclude_run : str, optional
            Leave out this run's entries (the history *before* a run, used to calibrate σ
            once per run).
        """
        return [e.mechanism for e in self._entries
                if e.is_composition and e.run_id != exclude_run]

    def epsilon(self, *, delta: float, accountant: str) -> float:
        """ε of the whole history at ``delta`` with ``accountant``."""
        from privacy.accounting import epsilon

        return epsilon(self.history(), delta=delta, accountant=accountant)

    # ---- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock between processes sharing the state directory (POSIX)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _append(self, fields_: dict[str, Any]) -> LedgerEntry:
        with self._locked():
            raw = self.path.read_bytes() if self.path.exists() else b""
            if raw != self._raw:  # another process appended since we read: re-verify
                self._entries = _parse(self.path, raw)
                self._raw = raw
            body = {"seq": len(self._entries), "prev_hash": self.head(), **fields_}
            body = {k: v for k, v in body.items() if not (k in OPTIONAL_FIELDS and v is None)}
            problem = _entry_problem({**body, "hash": ""})
            if problem is not None:
                raise ValueError(f"refusing to write a bad ledger entry: {problem}")
            digest = hashlib.sha256(canonical_json(body)).hexdigest()
            entry = LedgerEntry(**body, hash=digest)
            new_raw = raw + canonical_json(entry.to_record()) + b"\n"
            atomic_write_bytes(self.path, new_raw)
            self._raw = new_raw
            self._entries.append(entry)
        logger.info("privacy ledger: run %s round %d %s (eps after %.4g)", entry.run_id,
                    entry.round, entry.status, entry.epsilon_after)
        return entry

    def record_round(
        self,
        *,
        run_id: str,
        round: int,  # noqa: A002 - the ledger field name
        steps: int,
        sample_rate: float,
        noise_multiplier: float,
        max_grad_norm: float,
        accountant: str,
        delta: float,
        epsilon_after: float,
        timestamp: str | None = None,
        noise_source: str | None = None,
    ) -> LedgerEntry:
        """Append a trained round (a composition entry). Call it before the update leaves.

        ``noise_source`` (``csprng`` / ``seeded``) is how the round's noise was drawn; a
        caller that does not know leaves it out and the audit shows it as unrecorded.
        """
        return self._append({
            "run_id": str(run_id), "round": round, "status": "trained", "reason": None,
            "steps": steps, "sample_rate": float(sample_rate),
            "noise_multiplier": float(noise_multiplier), "max_grad_norm": float(max_grad_norm),
            "accountant": accountant, "delta": float(delta),
            "epsilon_after": float(epsilon_after), "timestamp": timestamp or _now(),
            "noise_source": noise_source,
        })

    def record_decline(
        self,
        *,
        run_id: str,
        round: int,  # noqa: A002 - the ledger field name
        reason: str,
        accountant: str,
        delta: float,
        epsilon_after: float,
        sample_rate: float | None = None,
        noise_multiplier: float | None = None,
        max_grad_norm: float | None = None,
        timestamp: str | None = None,
    ) -> LedgerEntry:
        """Append a declined round (``steps`` 0, not composed); ``epsilon_after`` = ε so far."""
        return self._append({
            "run_id": str(run_id), "round": round, "status": "declined", "reason": str(reason),
            "steps": 0,
            "sample_rate": None if sample_rate is None else float(sample_rate),
            "noise_multiplier": None if noise_multiplier is None else float(noise_multiplier),
            "max_grad_norm": None if max_grad_norm is None else float(max_grad_norm),
            "accountant": accountant, "delta": float(delta),
            "epsilon_after": float(epsilon_after), "timestamp": timestamp or _now(),
        })


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
