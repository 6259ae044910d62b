"""RUN_DIR: run.json, metrics.jsonl, participation.jsonl, per-round adapters, resume state.

Every file is written atomically (temp file, fsync, rename); the state file is written last
in a round, so a crash at any point leaves a consistent last completed round.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from protocol.adapter import load_adapter_dir, save_adapter_dir
from protocol.io import atomic_write_json, atomic_write_text

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


@dataclass(frozen=True)
class RunState:
    """The last completed round of a run."""

    run_id: str
    completed_round: int
    num_rounds: int
    status: str  # "running" | "completed" | "failed"
    stopped_early: str = ""


class RunDir:
    """Owns the files of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # paths -------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def participation_path(self) -> Path:
        return self.root / "participation.jsonl"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def round_adapter(self, round_num: int) -> Path:
        return self.root / "rounds" / str(round_num) / "adapter"

    @property
    def final_adapter(self) -> Path:
        return self.root / "adapter"

    # writers -----------------------------------------------------------------------------
    def write_run_json(self, *, run_id: str, config: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        doc = {
            "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": dict(config),
            "versions": software_versions(),
            **dict(extra),
        }
        path = self.root / "run.json"
        if path.exists():  # resumed: keep the original, record the resume
            old = json.loads(path.read_text(encoding="utf-8"))
            old.setdefault("resumed", []).append({"at": doc["created"], "versions": doc["versions"]})
            doc = old
        atomic_write_json(path, doc)

    def _append_jsonl(self, path: Path, record: Mapping[str, Any]) -> None:
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        line = json.dumps(record, sort_keys=True, allow_nan=False)
        atomic_write_text(path, existing + line + "\n")

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        self._append_jsonl(self.metrics_path, record)

    def append_participation(self, record: Mapping[str, Any]) -> None:
        self._append_jsonl(self.participation_path, record)

    @property
    def ledger_summaries(self) -> Path:
        return self.root / "ledger-summaries"

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
        atomic_write_json(self.ledger_summaries / f"{site}.json", {
            "site": site, "node_id": node_id, "received_round": round_num,
            "summary": summary, "signature": signature})

    def keep_enrolment(self, path: str) -> None:
        """Copy the enrolment list into RUN_DIR/enrolment.json (the audit checks against it)."""
        dest = self.root / "enrolment.json"
        src = Path(path)
        if src.resolve() != dest.resolve():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dest, src.read_text(encoding="utf-8"))

    def save_round(self, round_num: int, state: Mapping[str, np.ndarray], lora_cfg: Any) -> None:
        save_adapter_dir(self.round_adapter(round_num), state, lora_cfg)

    def finalise(self, round_num: int) -> None:
        src = self.round_adapter(round_num)
        tmp = self.root / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        if self.final_adapter.exists():
            shutil.rmtree(self.final_adapter)
        tmp.rename(self.final_adapter)

    def write_state(self, state: RunState) -> None:
        atomic_write_json(self.state_path, {
            "run_id": state.run_id,
            "completed_round": state.completed_round,
            "num_rounds": state.num_rounds,
            "status": state.status,
            "stopped_early": state.stopped_early,
        })

    # readers -----------------------------------------------------------------------------
    def read_state(self) -> RunState:
        if not self.state_path.is_file():
            raise ResumeError(f"no state.json in {self.root}: nothing to resume")
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            return RunState(str(doc["run_id"]), int(doc["completed_round"]),
                            int(doc["num_rounds"]), str(doc["status"]),
                            str(doc.get("stopped_early", "")))
        except (KeyError, ValueError, TypeError) as exc:
            raise ResumeError(f"{self.state_path} is malformed: {exc}") from exc

    def load_round(self, round_num: int) -> dict[str, np.ndarray]:
        path = self.round_adapter(round_num)
        if not path.is_dir():
            raise ResumeError(f"adapter of completed round {round_num} missing: {path}")
        state, _ = load_adapter_dir(path)
        return state

    def truncate_after(self, round_num: int) -> None:
        """Drop metric / participation lines of rounds after ``round_num`` (an unfinished round)."""
        for path in (self.metrics_path, self.participation_path):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and int(json.loads(line)["round"]) <= round_num:
                    kept.append(line)
            atomic_write_text(path, "".join(k + "\n" for k in kept))
        rounds = self.root / "rounds"
        if rounds.is_dir():
            for d in rounds.iterdir():
                if d.name.isdigit() and int(d.name) > round_num:
                    shutil.rmtree(d, ignore_errors=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.metrics_path)

    def read_participation(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.participation_path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
