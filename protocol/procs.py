"""Process helpers shared by the simulation runner, the coordinator and the site agent.

Finding Flower's executables next to the interpreter, free loopback ports, TOML values for
``--run-config``, staging the Flower app directory, and stopping a process with everything
it started (also detached sessions, found by a token in their environment).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ProcessError", "find_bin", "free_port", "kill_tree", "stage_app", "toml_value"]

_PACKAGES = ("server", "client", "protocol", "privacy")


class ProcessError(RuntimeError):
    """A helper process cannot be found or configured."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    """One run-config value as TOML (``--run-config`` parses values as TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ProcessError(f"cannot pass {value!r} in the run config")


def find_bin(name: str) -> str:
    """Path of a console script next to this interpreter, else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ProcessError(f"`{name}` not found next to {sys.executable} or on PATH")
    return found


def stage_app(dest: Path, defaults: Mapping[str, Any]) -> Path:
    """Write a Flower app directory: the code packages plus a generated pyproject.toml.

    Only Python sources travel in the FAB; weights and data are read from the installed
    project by absolute path in the run config.
    """
    root = Path(__file__).resolve().parent.parent
    for pkg in _PACKAGES:
        src = root / pkg
        for py in src.rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            target = dest / pkg / py.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(py, target)
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", 'name = "confide"', 'version = "0.1.0"',
        'description = "Confide federated LoRA fine-tuning"', 'license = "Apache-2.0"',
        "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "confide"', "",
        "[tool.flwr.app.components]", 'serverapp = "server.app:app"',
        'clientapp = "client.app:app"', "", "[tool.flwr.app.config]",
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in sorted(defaults.items())]
    (dest / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def _tagged_pids(token: str) -> set[int]:
    """PIDs of processes whose environment carries ``token`` (Linux /proc; else empty)."""
    needle = f"CONFIDE_SIM_TOKEN={token}".encode()
    found: set[int] = set()
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return found
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes():
                found.add(int(entry.name))
    return found


def _descendants(pid: int) -> set[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with flwr[simulation] (ray)
        return set()
    with contextlib.suppress(psutil.Error):
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    return set()


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(proc: subprocess.Popen[Any], token: str, timeout: float = 20.0) -> None:
    """Stop ``proc`` and everything it started (also detached sessions such as Ray's)."""
    pids = _descendants(proc.pid) | _tagged_pids(token) | {proc.pid}
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
        pids = {p for p in pids | _tagged_pids(token) if _alive(p)}
        if not pids:
            return
    _signal_all(pids | _tagged_pids(token), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return False
