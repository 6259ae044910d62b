"""`confide simulate` refuses bad input before starting anything: exit 2, a message naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_RUNNING, RunState
from simulations.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--rounds", "0"], "--rounds must be > 0, got 0"),
        (["--rounds", "two"], "--rounds must be an integer, got 'two'"),
        (["--sites", "-1"], "--sites must be > 0, got -1"),
        (["--learning-rate", "nan"], "--learning-rate must be > 0"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--aggregation", "median"], "invalid choice: 'median'"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, tiny_sites: Path,
    argv: list[str], needle: str,
) -> None:
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "run"), "--model",
                     str(tiny_model), "--data", str(tiny_sites), *argv)
    assert code == 2
    assert needle in err


def test_missing_model_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            tiny_sites: Path) -> None:
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "r"), "--model",
                     str(tmp_path / "no-model"), "--data", str(tiny_sites))
    assert code == 2 and "--model" in err and "does not exist" in err and "no-model" in err


def test_model_dir_without_config(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  tiny_sites: Path) -> None:
    (tmp_path / "m").mkdir()
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "r"), "--model",
                     str(tmp_path / "m"), "--data", str(tiny_sites))
    assert code == 2 and "has no config.json" in err


def test_empty_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                         tiny_model: Path) -> None:
    (tmp_path / "data" / "s1").mkdir(parents=True)
    (tmp_path / "data" / "s1" / "train.jsonl").write_text("")
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "r"), "--model",
                     str(tiny_model), "--data", str(tmp_path / "data"))
    assert code == 2 and "--data" in err and "empty" in err and "train.jsonl" in err


def test_malformed_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                             tiny_model: Path) -> None:
    (tmp_path / "data" / "s1").mkdir(parents=True)
    (tmp_path / "data" / "s1" / "train.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "r"), "--model",
                     str(tiny_model), "--data", str(tmp_path / "data"))
    assert code == 2 and "train.jsonl:2" in err and "expected a `text` key" in err


def test_missing_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                          tiny_model: Path) -> None:
    code, err = _run(capsys, "simulate", "--out", str(tmp_path / "r"), "--model",
                     str(tiny_model), "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "--data" in err and "nowhere" in err


def test_existing_run_is_not_overwritten(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         tiny_model: Path, tiny_sites: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    RunFolder(out).write_state(RunState(run_id="x", completed_round=1, num_rounds=3,
                                        status=RUN_RUNNING))
    code, err = _run(capsys, "simulate", "--out", str(out), "--model", str(tiny_model),
                     "--data", str(tiny_sites))
    assert code == 2 and "already holds a run" in err
    assert RunFolder(out).read_state().completed_round == 1


def test_console_script_reports_bad_input_on_stderr(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "confide"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "simulations.cli"]
    proc = subprocess.run([*cmd, "simulate", "--rounds", "0", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--rounds must be > 0, got 0" in proc.stderr
