"""The rules both deployment files follow: ``server.toml`` and every site's ``site.toml``.

A file is TOML; each table is read through a :class:`Table`, whose typed reads refuse
unknown keys, wrong types, out-of-range values and missing files with an error that names
the file, the table, the key and the value; relative paths are taken relative to the
file's own directory. The files themselves are defined by their owners:
:mod:`server.deploy_config` (the coordinator's) and :mod:`client.deploy_config` (a site's).

Why here: the coordinator's and the sites' files are one contract for their operators (the
same grammar, the same error wording), and ``server`` and ``client`` may not import each
other; ``protocol`` is the lowest layer both import.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocol.console import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli (a Flower dependency) is the same parser
    import tomli as tomllib

__all__ = ["DeployConfigError", "Table", "no_other_tables", "read_toml"]


class DeployConfigError(UsageError):
    """A deployment configuration file is unreadable or invalid (exit status 2)."""


def read_toml(path: Path) -> dict[str, Any]:
    """Read the TOML document in ``path``; an unreadable file or bad TOML is a DeployConfigError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DeployConfigError(f"cannot read configuration file {str(path)!r}: "
                                f"{exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeployConfigError(f"{path}: not valid TOML: {exc}") from None


class Table:
    """Typed reads from one TOML table; every error names the file, table, key and value.

    Each read marks its key used; :meth:`finish` refuses the keys nobody read.
    """

    def __init__(self, path: Path, name: str, doc: Mapping[str, Any], *,
                 required: bool = True) -> None:
        self.path, self.name = path, name
        value = doc.get(name)
        if value is None:
            if required:
                raise DeployConfigError(f"{path}: missing table [{name}]")
            value = {}
        if not isinstance(value, dict):
            raise DeployConfigError(f"{path}: `{name}` must be a table [{name}], got {value!r}")
        self.data: dict[str, Any] = value
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        """``FILE: [TABLE] `KEY``` for an error message."""
        return f"{self.path}: [{self.name}] `{key}`"

    def error(self, key: str, rule: str) -> DeployConfigError:
        """Build the error for ``key``'s value breaking ``rule`` ("must be ...")."""
        value = self.data.get(key)
        return DeployConfigError(f"{self.where(key)} {rule}, got {value!r}", field=key,
                                 value=value)

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise DeployConfigError(f"{self.path}: [{self.name}] is missing `{key}`")
            return default
        return self.data[key]

    def text(self, key: str, default: str | None = None) -> str:
        """Read a string (``default`` None: required)."""
        value = self._get(key, default if default is not None else _REQUIRED)
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def integer(self, key: str, default: int, *, lo: int, hi: int) -> int:
        """Read an integer in ``[lo, hi]`` (bools refused)."""
        value = self._get(key, default)
        if type(value) is not int:
            raise self.error(key, "must be an integer")
        if not lo <= value <= hi:
            raise self.error(key, f"must be in [{lo}, {hi}]")
        return value

    def number(self, key: str, default: float, *, lo: float = 0.0,
               hi: float = float("inf")) -> float:
        """Read a number in ``[lo, hi]`` (an integer is taken as a float; bools refused)."""
        value = self._get(key, default)
        if type(value) not in (int, float):
            raise self.error(key, "must be a number")
        if not value >= lo:
            raise self.error(key, f"must be >= {lo:g}")
        if not value <= hi:
            raise self.error(key, f"must be <= {hi:g}")
        return float(value)

    def file(self, key: str, default: str | None = None, *, is_dir: bool = False,
             exists: bool = True) -> Path:
        """Read a path, relative to the file's directory; ``exists``: it must exist."""
        text = self.text(key, default)
        if not text.strip():
            raise self.error(key, "must be a path")
        p = Path(text).expanduser()
        p = p if p.is_absolute() else (self.path.parent / p)
        p = p.resolve()
        if exists and not p.exists():
            raise DeployConfigError(f"{self.where(key)}: file not found: {str(p)!r}")
        if exists and is_dir and not p.is_dir():
            raise DeployConfigError(f"{self.where(key)}: not a directory: {str(p)!r}")
        return p

    def finish(self) -> None:
        """Refuse the first key of the table that no read asked for."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            key = unknown[0]
            known = ", ".join(sorted(self.used))
            raise DeployConfigError(f"{self.path}: unknown key `{key}` in [{self.name}] (value "
                                    f"{self.data[key]!r}); known keys: {known}")


_REQUIRED = object()


def no_other_tables(path: Path, doc: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse a top-level table or key of ``doc`` that is not one of ``allowed``."""
    for key, value in doc.items():
        if key not in allowed:
            kind = "table" if isinstance(value, dict) else "key"
            raise DeployConfigError(f"{path}: unknown top-level {kind} `{key}` (value {value!r}); "
                                    f"allowed tables: {', '.join(f'[{a}]' for a in allowed)}")
