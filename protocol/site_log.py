"""A site's own log of its per-round figures, kept in its state directory, never sent.

Under secure aggregation a site's train loss, example count, held-out loss and timings stay
at the site: :func:`append_site_row` appends one JSON line per local round or evaluation to
``<state-dir>/site-metrics.jsonl`` (one ``write`` of a whole line on a file opened for
appending, then ``fsync``: a crash leaves whole lines, at most one torn last line, which
:func:`read_site_rows` skips). In simulation the state directories are
``RUN_DIR/sites/<site>/``, so the summary table reads them from there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.run_rows import SiteEval

if TYPE_CHECKING:
    from protocol.run_folder import RunFolder

__all__ = ["EVALUATE", "SITE_LOG", "TRAIN", "append_site_row", "read_site_rows",
           "site_evaluations"]

SITE_LOG = "site-metrics.jsonl"
TRAIN = "train"
EVALUATE = "evaluate"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_site_row(state_dir: str | os.PathLike[str], *, kind: str, run_id: str,
                    round_num: int, figures: Mapping[str, Any]) -> None:
    """Append one row (``kind`` train or evaluate) to the site's own log."""
    if kind not in (TRAIN, EVALUATE):
        raise ValueError(f"`kind` must be {TRAIN!r} or {EVALUATE!r}, got {kind!r}")
    row = {"kind": kind, "run_id": run_id, "round": round_num,
           **{str(k): _clean(v) for k, v in figures.items()}}
    line = (json.dumps(row, sort_keys=True) + "\n").encode()
    path = Path(state_dir) / SITE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_site_rows(state_dir: str | os.PathLike[str], *, run_id: str | None = None,
                   kind: str | None = None) -> list[dict[str, Any]]:
    """Read the site's rows (of ``run_id`` and ``kind`` when given), in order.

    A torn or malformed line is skipped.
    """
    path = Path(state_dir) / SITE_LOG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or type(row.get("round")) is not int:
            continue
        if run_id is not None and row.get("run_id") != run_id:
            continue
        if kind is not None and row.get("kind") != kind:
            continue
        rows.append(row)
    return rows


def site_evaluations(folder: RunFolder) -> dict[str, dict[int, SiteEval]]:
    """Read each site's own held-out figures per round of the folder's run.

    They come from the site state directories ``RUN_DIR/sites/<site>/`` (simulation); a bad
    row is skipped.
    """
    try:
        run_id: str | None = folder.read_run_info().run_id
    except (OSError, ValueError):
        run_id = None
    out: dict[str, dict[int, SiteEval]] = {}
    if not folder.sites_dir.is_dir():
        return out
    for site_dir in sorted(p for p in folder.sites_dir.iterdir() if p.is_dir()):
        evs: dict[int, SiteEval] = {}
        for row in read_site_rows(site_dir, run_id=run_id, kind=EVALUATE):
            try:
                loss = float(row["eval-loss"])
                evs[row["round"]] = SiteEval.from_json({
                    "eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
                    "num_examples": row["num-examples"], "num_tokens": row["num-tokens"]})
            except (KeyError, TypeError, ValueError):
                continue
        if evs:
            out[site_dir.name] = evs
    return out
