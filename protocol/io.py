"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "replace_dir",
]


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename) to stable storage, where the OS allows it."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """Return the process umask, read without changing it (Linux), else the usual 022."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *,
                       mode: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync and rename.

    The file gets ``mode`` (e.g. ``0o600`` for a secret) from the start, before any byte is
    written; by default the mode a plain ``open()`` would give (``0o666`` less the umask).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished directory ``tmp`` at ``target`` (a sibling), replacing what is there.

    ``target`` is renamed aside first and removed only once ``tmp`` took its place, so a
    crash leaves either the old or the new directory under ``target``'s name (and at worst a
    leftover ``.<name>.old``); the parent directory is fsynced.
    """
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fsync_dir(target.parent)
