"""The coordinator's side of RUN_DIR: per-round adapters, resume and truncation.

Names and rows are the run-folder schema of :mod:`protocol.run_folder`; this adds what only
the coordinator does. Every file is written atomically (temp file, fsync, rename); the state
file is written last in a round, so a crash at any point leaves a consistent last completed
round.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import re
import shutil
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from protocol.adapter import load_adapter_dir, save_adapter_dir
from protocol.io import atomic_write_text
from protocol.run_folder import RunFolder, RunFolderError
from protocol.run_rows import LedgerSummaryRecord, ResumeRecord, RunInfo, RunState

__all__ = ["ResumeError", "RunDir", "RunState", "software_versions"]

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_PACKAGES = ("confide", "flwr", "torch", "peft", "transformers", "opacus", "cryptography",
             "grpcio", "safetensors", "numpy")


class ResumeError(RuntimeError):
    """RUN_DIR cannot be resumed (missing or inconsistent state)."""


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour the run depends on."""
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


class RunDir(RunFolder):
    """The run folder as the coordinator writes it (adapters, resume, truncation)."""

    # writers -----------------------------------------------------------------------------
    def write_run_json(self, *, run_id: str, config: Mapping[str, Any],
                       extra: Mapping[str, Any]) -> None:
        """Write ``run.json``; on resume keep the original and record the resume in it."""
        self.root.mkdir(parents=True, exist_ok=True)
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        versions = software_versions()
        if self.run_path.exists():
            old = self.read_run_info()
            resumed = (*(old.resumed or ()), ResumeRecord(at=created, versions=versions))
            info = dataclasses.replace(old, resumed=resumed)
        else:
            info = RunInfo(run_id=run_id, created=created, config=dict(config),
                           versions=versions, **dict(extra))
        self.write_run_info(info)

    def save_ledger_summary(self, site: str, summary_json: str, signature: str, *,
                            round_num: int, node_id: int) -> None:
        """Keep a site's latest signed ledger summary (checked by the audit, not here)."""
        if not _SAFE_NAME.fullmatch(site):
            logger.warning("round %d: ledger summary from node %d ignored: site name %r is not "
                           "a safe file name", round_num, node_id, site)
            return
        try:
            summary = json.loads(summary_json)
        except json.JSONDecodeError as exc:
            logger.warning("round %d: ledger summary from %s is not JSON (%s); not kept",
                           round_num, site, exc.msg)
            return
        self.write_ledger_summary(LedgerSummaryRecord(
            site=site, node_id=node_id, received_round=round_num, summary=summary,
            signature=signature))

    def keep_enrolment(self, path: str) -> None:
        """Copy the enrolment list into RUN_DIR (the audit checks against it)."""
        dest = self.enrolment_path
        src = Path(path)
        if src.resolve() != dest.resolve():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dest, src.read_text(encoding="utf-8"))

    def save_round(self, round_num: int, state: Mapping[str, np.ndarray], lora_cfg: Any) -> None:
        """Save the global adapter after round ``round_num`` (``rounds/<n>/adapter``)."""
        save_adapter_dir(self.round_adapter(round_num), state, lora_cfg)

    def finalise(self, round_num: int) -> None:
        """Replace ``adapter/`` with a copy of round ``round_num``'s adapter."""
        src = self.round_adapter(round_num)
        tmp = self.root / f".{self.final_adapter.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        if self.final_adapter.exists():
            shutil.rmtree(self.final_adapter)
        tmp.rename(self.final_adapter)

    # readers -----------------------------------------------------------------------------
    def read_state(self) -> RunState:
        """Read ``state.json``; :class:`ResumeError` when missing or malformed."""
        if not self.state_path.is_file():
            raise ResumeError(f"no {self.state_path.name} in {self.root}: nothing to resume")
        try:
            return super().read_state()
        except RunFolderError as exc:
            raise ResumeError(str(exc)) from exc

    def load_round(self, round_num: int) -> dict[str, np.ndarray]:
        """Load the global adapter after round ``round_num``; :class:`ResumeError` if missing."""
        path = self.round_adapter(round_num)
        if not path.is_dir():
            raise ResumeError(f"adapter of completed round {round_num} missing: {path}")
        state, _ = load_adapter_dir(path)
        return state

    def truncate_after(self, round_num: int) -> None:
        """Drop metric / participation lines and adapters of rounds after ``round_num``."""
        self.truncate_rows_after(round_num)
        if self.rounds_dir.is_dir():
            for d in self.rounds_dir.iterdir():
                if d.name.isdigit() and int(d.name) > round_num:
                    shutil.rmtree(d, ignore_errors=True)
