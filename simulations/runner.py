"""Run the Confide ServerApp / ClientApp in Flower's simulation engine, leaving nothing behind.

A child ``flower-superlink --simulation`` is started on a free loopback port with a private
``FLWR_HOME``; ``flwr run APP <connection> --stream`` submits the app (a FAB built from the
installed code) with the run configuration; the SuperLink's process group is stopped at
the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from protocol.config import RunConfig

__all__ = ["SimulationError", "free_port", "run_simulation", "stage_app", "toml_value"]

logger = logging.getLogger(__name__)

_PACKAGES = ("server", "client", "protocol", "privacy")


class SimulationError(RuntimeError):
    """The simulation could not start or did not complete."""


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
    raise SimulationError(f"cannot pass {value!r} in the run config")


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise SimulationError(f"`{name}` not found next to {sys.executable} or on PATH")
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


def _kill_tree(proc: subprocess.Popen[Any], token: str, timeout: float = 20.0) -> None:
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


@contextlib.contextmanager
def _superlink(workdir: Path, env: dict[str, str], token: str) -> Iterator[int]:
    port, fleet = free_port(), free_port()
    log = (workdir / "superlink.log").open("wb")
    proc = subprocess.Popen(
        [_bin("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
         "--port", str(port), "--fleet-api-address", f"127.0.0.1:{fleet}",
         "--disable-runtime-dependency-installation"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(workdir),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SimulationError(
                    f"flower-superlink exited with {proc.returncode}: "
                    + (workdir / "superlink.log").read_text(errors="replace")[-2000:])
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                raise SimulationError("flower-superlink did not open its port within 60 s")
            time.sleep(0.2)
        yield port
    finally:
        _kill_tree(proc, token)
        log.close()


def run_simulation(
    cfg: RunConfig, *, num_sites: int, cpus_per_site: int = 1, quiet: bool = False,
    timeout: float | None = None,
) -> int:
    """Run ``cfg`` with ``num_sites`` virtual sites; return ``flwr run``'s exit code.

    Streams the ServerApp's log lines to stdout unless ``quiet``.
    """
    with tempfile.TemporaryDirectory(prefix="confide-sim-") as tmp:
        work = Path(tmp)
        app_dir = stage_app(work / "app", cfg.to_mapping())
        home = work / "flwr-home"
        home.mkdir()
        # every process the run starts carries this token in its environment, so the run
        # can find and stop them all (a caller may set it to check that afterwards)
        token = os.environ.get("CONFIDE_SIM_TOKEN") or uuid.uuid4().hex
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update({
            "CONFIDE_SIM_TOKEN": token,
            "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
            "TOKENIZERS_PARALLELISM": "false",
            "RAY_DEDUP_LOGS": "0",
            # the FAB holds only code: let the app find the installed project's files
            "CONFIDE_EMBEDDED_MODEL": env.get("CONFIDE_EMBEDDED_MODEL", ""),
        })
        if not env["CONFIDE_EMBEDDED_MODEL"]:
            env.pop("CONFIDE_EMBEDDED_MODEL")
        with _superlink(work, env, token) as port:
            (home / "config.toml").write_text(
                '[superlink]\ndefault = "confide"\n\n[superlink.confide]\n'
                f'address = "127.0.0.1:{port}"\ninsecure = true\n', encoding="utf-8")
            args = [_bin("flwr"), "run", str(app_dir), "confide", "--stream",
                    "--federation-config",
                    f"num-supernodes={num_sites} client-resources-num-cpus={cpus_per_site}"]
            # the whole configuration travels as the staged app's [tool.flwr.app.config]
            proc = subprocess.Popen(args, env=env, cwd=str(work), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)
            start = time.monotonic()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if not quiet:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    if timeout is not None and time.monotonic() - start > timeout:
                        raise SimulationError(f"simulation did not finish within {timeout:.0f} s")
                return proc.wait()
            finally:
                _kill_tree(proc, token, timeout=5)
