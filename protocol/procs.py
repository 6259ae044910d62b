"""The Flower processes of a run: how every Confide process starts, tags and stops them.

The coordinator (``server.deploy``: a SuperLink and ``flwr run``), the site agent
(``client.agent``: a SuperNode) and the simulation runner (``simulations.runner``) each start
Flower's executables and must stop everything those start, detached sessions included. They
share one contract for it, defined here: the executables are found next to the interpreter,
every process of a run carries :data:`RUN_TOKEN_ENV` in its environment (so a run can find
and stop all of them, and a test can check that none is left), Flower's telemetry, update
check and runtime dependency installation are off, and values handed to ``--run-config`` /
``--node-config`` are written as TOML (:func:`toml_value`).

Why here: ``server`` and ``client`` both need it and may not import each other; ``privacy``
is about protecting data; so the lowest layer both import, ``protocol``, holds it. It uses
only the standard library and psutil (no other Confide package).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["RUN_TOKEN_ENV", "ProcessError", "find_bin", "flower_env", "free_port",
           "interrupt_on_terminate", "kill_tree",
           "tagged_pids", "toml_value"]

#: Environment variable that tags every process of one run (its value: the run's token).
RUN_TOKEN_ENV = "CONFIDE_SIM_TOKEN"


class ProcessError(RuntimeError):
    """A helper process cannot be found or configured."""


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1."""
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


def flower_env(token: str) -> dict[str, str]:
    """Copy this process's environment for a Flower executable of the run tagged ``token``.

    Flower's executables next to this interpreter come first on ``PATH``; telemetry, the
    update check and runtime dependency installation (which would fetch another torch) are
    off. Callers add what is theirs (``FLWR_HOME``, Hugging Face settings).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update({
        RUN_TOKEN_ENV: token, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    return env


def tagged_pids(token: str) -> set[int]:
    """PIDs of processes whose environment carries ``token`` (Linux /proc; else empty)."""
    needle = f"{RUN_TOKEN_ENV}={token}".encode()
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
    pids = _descendants(proc.pid) | tagged_pids(token) | {proc.pid}
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
        pids = {p for p in pids | tagged_pids(token) if _alive(p)}
        if not pids:
            return
    _signal_all(pids | tagged_pids(token), signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return False


@contextlib.contextmanager
def interrupt_on_terminate() -> Iterator[None]:
    """Within the block, SIGTERM (and SIGINT) raise :class:`KeyboardInterrupt`.

    So a command stopped by ``kill``, a CI timeout or Ctrl-C unwinds through its ``finally``
    blocks and stops the processes it started. SIGINT is set to Python's default handler
    too: a background job of a non-interactive shell starts with SIGINT ignored, and Python
    then never raises on it. Only the main thread can set handlers; elsewhere this does
    nothing. The previous handlers come back at the end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
