"""The site privacy ledger: hash chain, atomic appends, corruption detection, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import privacy.ledger as ledger_mod
from privacy.accounting import Mechanism, epsilon, independent_epsilon
from privacy.ledger import GENESIS_HASH, LEDGER_FILENAME, LedgerError, PrivacyLedger
from protocol.wire import Reason

ROOT = Path(__file__).resolve().parent.parent
DELTA = 1e-5


def _record(ledger: PrivacyLedger, run_id: str, rnd: int, q: float = 0.02, sigma: float = 1.0,
            steps: int = 20) -> None:
    history = [*ledger.history(), Mechanism(q, sigma, steps)]
    ledger.record_round(run_id=run_id, round=rnd, steps=steps, sample_rate=q,
                        noise_multiplier=sigma, max_grad_norm=1.0, accountant="rdp",
                        delta=DELTA, epsilon_after=epsilon(history, delta=DELTA))


def _three_rounds(state: Path) -> PrivacyLedger:
    ledger = PrivacyLedger(state)
    for rnd in (1, 2, 3):
        _record(ledger, "run-a", rnd)
    return ledger


def test_new_ledger_is_empty_and_writes_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "state")
    assert len(ledger) == 0 and ledger.history() == [] and ledger.head() == GENESIS_HASH
    assert not (tmp_path / "state").exists()


def test_entries_form_a_sha256_hash_chain(tmp_path: Path) -> None:
    ledger = _three_rounds(tmp_path)
    lines = (tmp_path / LEDGER_FILENAME).read_text().splitlines()
    assert len(lines) == 3
    prev = GENESIS_HASH
    for seq, line in enumerate(lines):
        entry = json.loads(line)
        assert entry["seq"] == seq and entry["prev_hash"] == prev
        assert entry["hash"] == ledger.entries[seq].compute_hash()
        assert set(entry) >= {"run_id", "round", "steps", "sample_rate", "noise_multiplier",
                              "max_grad_norm", "accountant", "delta", "epsilon_after",
                              "timestamp", "prev_hash", "hash"}
        prev = entry["hash"]
    assert ledger.head() == prev == PrivacyLedger(tmp_path).head()


def test_restart_continues_epsilon_from_the_ledger(tmp_path: Path) -> None:
    first = _three_rounds(tmp_path)
    reopened = PrivacyLedger(tmp_path)
    assert reopened.history() == first.history() == [Mechanism(0.02, 1.0, 20)] * 3
    assert reopened.epsilon(delta=DELTA, accountant="rdp") == pytest.approx(
        first.entries[-1].epsilon_after)
    _record(reopened, "run-a", 4)
    assert reopened.entries[-1].epsilon_after > first.entries[-1].epsilon_after


def test_two_runs_compose(tmp_path: Path) -> None:
    ledger = _three_rounds(tmp_path)
    eps_run_a = ledger.entries[-1].epsilon_after
    second = PrivacyLedger(tmp_path)
    _record(second, "run-b", 1, q=0.05, sigma=1.5, steps=10)
    _record(second, "run-b", 2, q=0.05, sigma=1.5, steps=10)
    assert second.history(exclude_run="run-b") == [Mechanism(0.02, 1.0, 20)] * 3
    alone = epsilon([(0.05, 1.5, 20)], delta=DELTA)
    total = second.entries[-1].epsilon_after
    assert total > eps_run_a and total > alone
    assert total == pytest.approx(epsilon([(0.02, 1.0, 60), (0.05, 1.5, 20)], delta=DELTA))


def test_recorded_epsilon_recomputes_from_recorded_parameters(tmp_path: Path) -> None:
    ledger = _three_rounds(tmp_path)
    _record(ledger, "run-b", 1, q=0.1, sigma=0.9, steps=7)
    for i, entry in enumerate(PrivacyLedger(tmp_path).entries):
        upto = [e.mechanism for e in ledger.entries[: i + 1]]
        again = independent_epsilon(upto, delta=entry.delta, accountant=entry.accountant)
        assert again == pytest.approx(entry.epsilon_after, rel=0.01)


def test_declined_rounds_are_logged_but_not_composed(tmp_path: Path) -> None:
    ledger = _three_rounds(tmp_path)
    spent = ledger.entries[-1].epsilon_after
    entry = ledger.record_decline(run_id="run-a", round=4, reason=Reason.BUDGET_EXHAUSTED,
                                  accountant="rdp", delta=DELTA, epsilon_after=spent,
                                  sample_rate=0.02, noise_multiplier=1.0)
    assert entry.status == "declined" and entry.steps == 0 and not entry.is_composition
    reopened = PrivacyLedger(tmp_path)
    assert len(reopened) == 4 and len(reopened.history()) == 3
    assert reopened.entries[-1].reason == Reason.BUDGET_EXHAUSTED


def test_truncated_last_line_is_an_error_naming_the_line_and_nothing_is_overwritten(
        tmp_path: Path) -> None:
    _three_rounds(tmp_path)
    path = tmp_path / LEDGER_FILENAME
    damaged = path.read_bytes()[:-40]
    path.write_bytes(damaged)
    with pytest.raises(LedgerError, match=rf"{LEDGER_FILENAME}:3: .*truncated"):
        PrivacyLedger(tmp_path)
    assert path.read_bytes() == damaged


def test_missing_final_newline_is_a_truncated_line(tmp_path: Path) -> None:
    _three_rounds(tmp_path)
    path = tmp_path / LEDGER_FILENAME
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(LedgerError, match=r":3: truncated line"):
        PrivacyLedger(tmp_path)


def test_tampered_entry_is_an_error_naming_its_line(tmp_path: Path) -> None:
    _three_rounds(tmp_path)
    path = tmp_path / LEDGER_FILENAME
    lines = path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["epsilon_after"] = 0.001  # pretend less was spent
    lines[1] = json.dumps(entry) + "\n"
    path.write_text("".join(lines))
    before = path.read_bytes()
    with pytest.raises(LedgerError, match=rf"{LEDGER_FILENAME}:2: entry was modified") as info:
        PrivacyLedger(tmp_path)
    assert info.value.line == 2 and info.value.path == path
    assert path.read_bytes() == before


def test_rehashed_tampered_entry_breaks_the_chain_at_the_next_line(tmp_path: Path) -> None:
    ledger = _three_rounds(tmp_path)
    path = tmp_path / LEDGER_FILENAME
    lines = path.read_text().splitlines(keepends=True)
    forged = ledger_mod.LedgerEntry(**{**ledger.entries[1].body(), "noise_multiplier": 5.0,
                                       "hash": ""})
    forged = ledger_mod.LedgerEntry(**{**forged.body(), "hash": forged.compute_hash()})
    lines[1] = ledger_mod.canonical_json(forged.__dict__).decode() + "\n"
    path.write_text("".join(lines))
    with pytest.raises(LedgerError, match=r":3: hash chain broken"):
        PrivacyLedger(tmp_path)


def test_removed_middle_line_is_detected(tmp_path: Path) -> None:
    _three_rounds(tmp_path)
    path = tmp_path / LEDGER_FILENAME
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2])
    with pytest.raises(LedgerError, match=r":2: `seq` is 2, expected 1"):
        PrivacyLedger(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json at all", "malformed"),
        ("[1, 2]", "expected a JSON object"),
        ('{"seq": 0}', "fields differ"),
    ],
)
def test_malformed_line_is_an_error_naming_the_line(tmp_path: Path, line: str,
                                                    message: str) -> None:
    _three_rounds(tmp_path)
    path = tmp_path / LEDGER_FILENAME
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = line + "\n"
    path.write_text("".join(lines))
    with pytest.raises(LedgerError, match=rf":3: .*{message}"):
        PrivacyLedger(tmp_path)


def test_failed_write_leaves_the_previous_ledger_intact(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _three_rounds(tmp_path)
    path = tmp_path / LEDGER_FILENAME
    before = path.read_bytes()

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)  # fails after the temp file is written
    with pytest.raises(OSError, match="disk gone"):
        _record(ledger, "run-a", 4)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [LEDGER_FILENAME, LEDGER_FILENAME + ".lock"])
    assert len(ledger) == 3 and len(PrivacyLedger(tmp_path)) == 3


def test_appends_go_through_an_atomic_whole_file_write(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[tuple[Path, bytes]] = []
    real = ledger_mod.atomic_write_bytes

    def spy(path: Path, data: bytes) -> None:
        writes.append((Path(path), data))
        real(path, data)

    monkeypatch.setattr(ledger_mod, "atomic_write_bytes", spy)
    _three_rounds(tmp_path)
    assert [len(d.splitlines()) for _, d in writes] == [1, 2, 3]
    assert writes[2][1].startswith(writes[1][1])


def test_a_second_writer_appends_after_the_first(tmp_path: Path) -> None:
    a, b = PrivacyLedger(tmp_path), PrivacyLedger(tmp_path)
    _record(a, "run-a", 1)
    _record(b, "run-a", 2)  # b re-reads and re-verifies before appending
    assert [e.round for e in PrivacyLedger(tmp_path).entries] == [1, 2]


def test_bad_entry_is_refused_before_writing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    with pytest.raises(ValueError, match="sample_rate"):
        ledger.record_round(run_id="r", round=1, steps=5, sample_rate=1.5, noise_multiplier=1.0,
                            max_grad_norm=1.0, accountant="rdp", delta=DELTA, epsilon_after=0.1)
    with pytest.raises(ValueError, match="epsilon_after"):
        ledger.record_round(run_id="r", round=1, steps=5, sample_rate=0.1, noise_multiplier=0.0,
                            max_grad_norm=1.0, accountant="rdp", delta=DELTA,
                            epsilon_after=float("inf"))
    assert not (tmp_path / LEDGER_FILENAME).exists()


_SITE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from privacy.accounting import epsilon
    from privacy.ledger import PrivacyLedger
    ledger = PrivacyLedger({state!r})
    rnd = len(ledger) + 1
    hist = [*ledger.history(), (0.02, 1.0, 20)]
    ledger.record_round(run_id="run-a", round=rnd, steps=20, sample_rate=0.02,
                        noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp", delta=1e-5,
                        epsilon_after=epsilon(hist, delta=1e-5))
    print(ledger.entries[-1].epsilon_after, flush=True)
    time.sleep(60)  # waiting for the next round when it is killed
""")


def test_killed_site_process_continues_epsilon_after_restart(tmp_path: Path) -> None:
    script = _SITE.format(root=str(ROOT), state=str(tmp_path))
    eps = []
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        eps.append(float(proc.stdout.readline()))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert eps[1] > eps[0]
    assert eps[1] == pytest.approx(epsilon([(0.02, 1.0, 40)], delta=1e-5))
    assert [e.round for e in PrivacyLedger(tmp_path).entries] == [1, 2]
