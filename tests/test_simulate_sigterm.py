"""``confide simulate`` stopped by SIGTERM (``kill``, a CI timeout) leaves no process behind.

Every process a run starts carries the run's token in its environment
(:data:`protocol.procs.RUN_TOKEN_ENV`); the test sets it, waits until the simulation
engine is up, sends SIGTERM to the command and then looks for any process with the token.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from protocol.procs import RUN_TOKEN_ENV, flower_env, tagged_pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_sigterm_stops_the_superlink_and_the_simulation_engine(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    env = flower_env(token)
    env[RUN_TOKEN_ENV] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "simulate", "--sites", "2", "--rounds", "20",
         "--batch-size", "8", "--local-steps", "1", "--out", str(tmp_path / "run")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any("flwr-simulation" in _cmdline(p) for p in tagged_pids(token)):
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the simulation engine did not start"
            time.sleep(0.5)
        started = {p: _cmdline(p) for p in tagged_pids(token)}
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0].decode(errors="replace")
        assert proc.returncode != 0, out[-2000:]
        deadline = time.monotonic() + 30
        while (left := tagged_pids(token)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p for p in tagged_pids(token) if Path(f"/proc/{p}").exists()}
        assert not left, {p: _cmdline(p) for p in left} | {"started": sorted(started.values())}
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in tagged_pids(token):
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
