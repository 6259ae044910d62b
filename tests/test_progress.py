"""The run's progress: events per exchange, the status line, plain lines off a terminal."""

from __future__ import annotations

import io
import logging
import os
import pty
import subprocess
import sys
from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from server.progress import RunProgress, is_noise, quiet_env
from server.progress_events import ProgressGrid, parse_event
from tests._loopback import server_identity
from tests.conftest import REPO

_LOG_LINES = [
    "14:53:33 INFO round 0/2: eval loss 5.4235 (perplexity 226.66)\n",
    '14:53:34 INFO progress {"replied": 0, "round": 1, "sites": 3, "stage": "train"}\n',
    "\x1b[36m(ClientAppActor pid=30822)\x1b[0m \n",
    "Loading weights: 100%|██████████| 38/38 [00:00<00:00, 5891.09it/s]\n",
    "  warnings.warn(\n",
    "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed\n",
    '14:53:36 INFO progress {"replied": 2, "round": 1, "sites": 3, "stage": "train"}\n',
    "14:53:39 INFO round 1/2: 3/3 sites contributed, eval loss 5.3996 (perplexity 221.32), 6.1 s\n",
]


class _EchoGrid:
    """Replies to every message at once (what the round driver's grid does, in process)."""

    def __init__(self) -> None:
        self.pushed: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        return [Message(RecordDict(), reply_to=m) for m in list(messages)[:2]]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id  # as Flower's grids do on push
            self.pushed[m.metadata.message_id] = m
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """One reply per pull: the display sees them come in one by one."""
        mid = next(iter(message_ids))
        return [Message(RecordDict(), reply_to=self.pushed.pop(mid))]


def _messages(kind: str, round_num: int) -> list[Message]:
    return [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=kind,
                    group_id=str(round_num)) for n in (1, 2, 3)]


def test_progress_grid_logs_sites_asked_and_replied_per_stage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = ProgressGrid(_EchoGrid())  # type: ignore[arg-type]
    with server_identity(), caplog.at_level(logging.INFO, logger="server.progress_events"):
        replies = list(grid.send_and_receive(_messages("train", 2), timeout=5))
    events = [parse_event(" " + r.getMessage()) for r in caplog.records]
    assert len(replies) == 2
    assert events == [{"round": 2, "stage": "train", "sites": 3, "replied": 0},
                      {"round": 2, "stage": "train", "sites": 3, "replied": 2}]
    assert list(grid.get_node_ids()) == [1, 2, 3]


def test_progress_grid_counts_replies_as_an_own_poll_loop_pulls_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = ProgressGrid(_EchoGrid())  # type: ignore[arg-type]
    with server_identity(), caplog.at_level(logging.INFO, logger="server.progress_events"):
        ids = set(grid.push_messages(_messages("query.secagg_share", 1)))
        while ids:
            ids -= {r.metadata.reply_to_message_id for r in grid.pull_messages(sorted(ids))}
    events = [parse_event(" " + r.getMessage()) for r in caplog.records]
    assert [e["replied"] for e in events if e] == [0, 1, 2, 3]
    assert {(e["round"], e["stage"], e["sites"]) for e in events if e} == {
        (1, "query.secagg_share", 3)}


def test_parse_event_ignores_other_lines() -> None:
    assert parse_event("14:00:00 INFO round 1/3: 3/3 sites contributed") is None
    assert parse_event("14:00:00 INFO progress {not json") is None
    assert parse_event('x progress {"round": 1, "stage": "train"}') == {
        "round": 1, "stage": "train"}


def test_plain_mode_prints_status_lines_and_drops_third_party_noise() -> None:
    out = io.StringIO()  # not a terminal
    with RunProgress(total_rounds=2, stream=out) as progress:
        for line in _LOG_LINES:
            progress.feed(line)
    text = out.getvalue()

    assert progress.live is False
    assert "\x1b[" not in text.replace("\x1b[36m", "")  # no cursor movement, no redraws
    assert "round 0/2: eval loss" in text and "round 1/2: 3/3 sites contributed" in text
    assert "progress: round 1/2 | train | 2/3 sites reported | elapsed" in text
    assert "Loading weights" not in text and "warnings.warn" not in text
    assert "Since flwr 1.32" not in text and "pid=30822" not in text
    assert '"replied"' not in text  # events become status lines, not raw JSON
    assert text.rstrip().splitlines()[-1].startswith("progress: round 1/2 | round 1 done")
    assert "about 0:" in text.splitlines()[-1]  # one round measured: an estimate for the next


@pytest.mark.parametrize("noise, keep", [
    ("Loading weights:   0%|          | 0/38", "14:53:39 INFO round 1/2: 3/3 sites"),
    ("\x1b[92mINFO \x1b[0m:      ", "WARNING round 1: site bank declined: budget"),
])
def test_noise_filter_keeps_the_runs_own_lines(noise: str, keep: str) -> None:
    assert is_noise(noise)
    assert not is_noise(keep)


def test_quiet_env_targets_libraries_and_keeps_the_users_filters() -> None:
    env = quiet_env({"PYTHONWARNINGS": "error::DeprecationWarning"})
    filters = env["PYTHONWARNINGS"].split(",")
    assert filters[0] == "error::DeprecationWarning"
    assert all(f.split(":")[3] for f in filters[1:])  # each filter names its module
    assert env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and env["TRANSFORMERS_VERBOSITY"] == "error"


_PROBE = ("from server.progress import RunProgress\n"
          "p = RunProgress(total_rounds=3)\n"
          "with p:\n"
          "    p.feed('12:00:00 INFO progress {\"round\": 1, \"stage\": \"train\", "
          "\"sites\": 3, \"replied\": 1}\\n')\n"
          "print('live' if p.live else 'plain')\n")


def test_plain_line_mode_is_used_when_stdout_is_not_a_terminal() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.splitlines()[-1] == "plain"
    assert "progress: round 1/3 | train | 1/3 sites reported" in done.stdout


def test_live_display_is_used_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _PROBE], cwd=REPO, stdout=follower,
                            stderr=subprocess.STDOUT)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert text.splitlines()[-1].strip() == "live"
    assert "1/3 sites reported" in text
