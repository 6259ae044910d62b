"""Prometheus metrics of a deployed run, served in the text exposition format (``/metrics``).

The ServerApp runs in a process of its own (started by the SuperLink); the coordinator
command follows the run from what the ServerApp writes: its log lines (the round in
progress) and ``RUN_DIR`` (its metrics and participation rows, one per completed round,
read with :class:`protocol.run_folder.RunFolder`). :class:`RunMetrics` holds the numbers;
:func:`serve_metrics` exposes them with ``http.server`` on a loopback port (no extra
dependency).
"""

from __future__ import annotations

import http.server
import logging
import math
import threading
from pathlib import Path
from typing import Any

from protocol.run_folder import RunFolder
from protocol.run_rows import MetricsRow, ParticipationRow

__all__ = ["RunMetrics", "dropped_sites", "serve_metrics"]

logger = logging.getLogger(__name__)

_HELP = {
    "confide_current_round": ("gauge", "Round in progress (the last completed one when idle)."),
    "confide_completed_rounds": ("gauge", "Rounds completed and checkpointed."),
    "confide_planned_rounds": ("gauge", "Rounds planned for the run."),
    "confide_sites_sampled": ("gauge", "Sites sampled in the last completed round."),
    "confide_sites_reporting": ("gauge", "Sites whose update entered the last aggregate."),
    "confide_sites_dropped": ("gauge", "Sampled sites that failed or timed out in the last round."),
    "confide_sites_declined": ("gauge", "Sampled sites that declined the last round."),
    "confide_round_duration_seconds": ("gauge", "Wall time of the last completed round."),
    "confide_bytes_received_total": ("counter", "Payload bytes received from sites."),
    "confide_eval_loss": ("gauge", "Weighted held-out loss after the last round with an "
                          "evaluation (NaN before any)."),
    "confide_example_level_epsilon": ("gauge", "Epsilon each site reported (its ledger total)."),
    "confide_run_completed": ("gauge", "1 once the run has completed."),
}


def dropped_sites(part: ParticipationRow | None) -> int:
    """Count sampled sites that failed, timed out or dropped out of secure aggregation.

    Each site counts once.
    """
    if part is None:
        return 0
    return len(set(part.failed) | set(part.dropped or ()))


def _skip(message: str) -> None:
    logger.debug("RUN_DIR line skipped: %s", message)  # e.g. a line of an older run


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class RunMetrics:
    """The numbers behind ``/metrics``, refreshed from RUN_DIR and the log."""

    def __init__(self, run_dir: Path, planned_rounds: int) -> None:
        self.folder = RunFolder(run_dir)
        self.planned = planned_rounds
        self.current_round = 0
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._eps: dict[str, float] = {}
        self.completed = False

    def set_round(self, round_num: int) -> None:
        """Record that round ``round_num`` is under way (the current round never goes back)."""
        with self._lock:
            self.current_round = max(self.current_round, round_num)

    def refresh(self) -> list[tuple[MetricsRow, ParticipationRow | None]]:
        """Re-read RUN_DIR; return the rounds not seen before (for logging)."""
        metrics = self.folder.read_metrics(_skip)
        part = {p.round: p for p in self.folder.read_participation(_skip)}
        with self._lock:
            seen = int(self._values.get("confide_completed_rounds", -1))
            new = [m for m in metrics if m.round > seen]
            if not metrics:
                return []
            last = metrics[-1]
            p = part.get(last.round)
            self._values.update({
                "confide_completed_rounds": float(last.round),
                "confide_planned_rounds": float(self.planned),
                "confide_sites_sampled": float(len(p.sampled) if p else 0),
                "confide_sites_reporting": float(len(p.contributed) if p else 0),
                "confide_sites_dropped": float(dropped_sites(p)),
                "confide_sites_declined": float(len(p.declined) if p else 0),
                "confide_round_duration_seconds": float(last.round_time_s or 0.0),
                "confide_bytes_received_total": float(sum(m.bytes_received or 0
                                                          for m in metrics)),
                "confide_eval_loss": next((float(m.eval_loss) for m in reversed(metrics)
                                           if m.eval_loss is not None), math.nan),
            })
            for m in metrics:
                self._eps.update({k: float(v) for k, v in (m.epsilon or {}).items()})
            self.current_round = max(self.current_round, last.round)
        return [(m, part.get(m.round)) for m in new]

    def exposition(self) -> str:
        """Render the metrics in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            values = dict(self._values)
            values["confide_current_round"] = float(self.current_round)
            values["confide_planned_rounds"] = float(self.planned)
            values["confide_run_completed"] = 1.0 if self.completed else 0.0
            eps = dict(self._eps)
        lines: list[str] = []
        for name, (kind, text) in _HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if name == "confide_example_level_epsilon":
                lines += [f'{name}{{site="{_label(s)}"}} {v!r}' for s, v in sorted(eps.items())]
            else:
                value = values.get(name, 0.0)
                lines.append(f"{name} {'NaN' if math.isnan(value) else repr(value)}")
        return "\n".join(lines) + "\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    metrics: RunMetrics

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served")
            return
        body = self.metrics.exposition().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature
        return


def serve_metrics(metrics: RunMetrics, *, port: int,
                  host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """Serve ``/metrics`` from a daemon thread; ``shutdown()`` the returned server to stop."""
    handler = type("Handler", (_Handler,), {"metrics": metrics})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="confide-metrics", daemon=True).start()
    logger.info("Prometheus metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server
