"""Run the Confide ServerApp / ClientApp in Flower's simulation engine, leaving nothing behind.

A child ``flower-superlink --simulation`` is started on a free loopback port with a private
``FLWR_HOME``; ``flwr run APP <connection> --stream`` submits the app (a FAB built from the
installed code) with the run configuration; the SuperLink's process group is stopped at
the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from protocol.config import RunConfig
from protocol.procs import (
    RUN_TOKEN_ENV,
    ProcessError,
    find_bin,
    flower_env,
    free_port,
    interrupt_on_terminate,
    kill_tree,
)
from server.fab import stage_app
from server.progress import RunProgress, quiet_env

__all__ = ["SimulationError", "report_unreleased", "run_simulation"]

logger = logging.getLogger(__name__)


class SimulationError(ProcessError):
    """The simulation could not start or did not complete."""


@contextlib.contextmanager
def _superlink(workdir: Path, env: dict[str, str], token: str) -> Iterator[int]:
    port, fleet = free_port(), free_port()
    log = (workdir / "superlink.log").open("wb")
    proc = subprocess.Popen(
        [find_bin("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
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
        kill_tree(proc, token)
        log.close()


def _gpus_per_site(cfg: RunConfig, num_sites: int) -> float:
    """Each virtual site's share of this machine's GPUs (``client-resources-num-gpus``).

    Ray hides every GPU from an actor that asks for none (it sets ``CUDA_VISIBLE_DEVICES``
    to ""), so without a share ``device = auto`` would put every virtual site of a GPU
    machine on its CPU. The sites share the GPUs evenly (at most one each); torch is
    imported only where an NVIDIA driver is present.
    """
    if cfg.device == "cpu" or not (Path("/proc/driver/nvidia").exists()
                                   or shutil.which("nvidia-smi")):
        return 0.0
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return 0.0 if count == 0 else math.floor(min(1.0, count / num_sites) * 1e4) / 1e4


def run_simulation(
    cfg: RunConfig, *, num_sites: int, cpus_per_site: int = 1, quiet: bool = False,
    timeout: float | None = None, progress: bool | None = None,
) -> int:
    """Run ``cfg`` with ``num_sites`` virtual sites; return ``flwr run``'s exit code.

    Streams the ServerApp's log lines to stdout unless ``quiet``, with the run's progress
    (:class:`server.progress.RunProgress`: live on a terminal, plain lines else) unless
    ``progress`` is false (default: shown unless ``quiet``).
    """
    show = (not quiet) if progress is None else progress
    # stopped by SIGTERM (kill, a CI timeout), the run still stops all it started
    with interrupt_on_terminate(), tempfile.TemporaryDirectory(prefix="confide-sim-") as tmp:
        work = Path(tmp)
        app_dir = stage_app(work / "app", cfg.to_mapping())
        home = work / "flwr-home"
        home.mkdir()
        # every process the run starts carries this token in its environment, so the run
        # can find and stop them all (a caller may set it to check that afterwards)
        token = os.environ.get(RUN_TOKEN_ENV) or uuid.uuid4().hex
        env = flower_env(token)
        env.update({
            "FLWR_HOME": str(home),
            "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
            "RAY_DEDUP_LOGS": "0",
            # the FAB holds only code: let the app find the installed project's files
            "CONFIDE_EMBEDDED_MODEL": env.get("CONFIDE_EMBEDDED_MODEL", ""),
        })
        if not env["CONFIDE_EMBEDDED_MODEL"]:
            env.pop("CONFIDE_EMBEDDED_MODEL")
        quiet_env(env)
        with _superlink(work, env, token) as port:
            (home / "config.toml").write_text(
                '[superlink]\ndefault = "confide"\n\n[superlink.confide]\n'
                f'address = "127.0.0.1:{port}"\ninsecure = true\n', encoding="utf-8")
            resources = f"num-supernodes={num_sites} client-resources-num-cpus={cpus_per_site}"
            gpus = _gpus_per_site(cfg, num_sites)
            if gpus > 0:
                resources += f" client-resources-num-gpus={gpus}"
            args = [find_bin("flwr"), "run", str(app_dir), "confide", "--stream",
                    "--federation-config", resources]
            # the whole configuration travels as the staged app's [tool.flwr.app.config]
            proc = subprocess.Popen(args, env=env, cwd=str(work), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True)
            start = time.monotonic()
            display = RunProgress(total_rounds=cfg.num_server_rounds, stream=sys.stdout,
                                  echo=not quiet)
            try:
                assert proc.stdout is not None
                with contextlib.ExitStack() as stack:
                    if show:
                        stack.enter_context(display)
                    for line in proc.stdout:
                        if show:
                            display.feed(line)
                        elif not quiet:
                            sys.stdout.write(line)
                            sys.stdout.flush()
                        if timeout is not None and time.monotonic() - start > timeout:
                            raise SimulationError(
                                f"simulation did not finish within {timeout:.0f} s")
                return proc.wait()
            finally:
                kill_tree(proc, token, timeout=5)


def report_unreleased(out_dir: str | Path, *, label: str = "",
                      stream: TextIO | None = None) -> list[str]:
    """Print every planned round of the run in ``out_dir`` that released no aggregate.

    One line per round and attempt with its ``abort_reason`` from ``participation.jsonl``
    (:meth:`protocol.run_folder.RunFolder.unreleased_rounds`), prefixed by ``label``; nothing
    when every round was released. Returns the lines.
    """
    from protocol.run_folder import RunFolder

    lines = RunFolder(out_dir).unreleased_rounds()
    for line in lines:
        print(f"{label}{line}", file=stream or sys.stdout, flush=True)
    return lines
