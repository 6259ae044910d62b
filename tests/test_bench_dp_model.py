"""bench_dp --model: a checkpoint directory (as the named real model resolves to) is benchmarked
with its architecture's LoRA targets, under the site's compute settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.bench_dp import main, run_one


@pytest.mark.parametrize("mode", ["none", "hooks"])
def test_a_checkpoint_directory_runs_under_each_mode(tiny_model: Path, mode: str) -> None:
    row = run_one(str(tiny_model), mode, steps=1, batch=2, seq=8, device="cpu", warmup=0,
                  gradient_checkpointing=True)
    assert row["model"] == str(tiny_model) and row["mode"] == mode
    assert row["steps_per_s"] > 0 and row["gradient_checkpointing"] is True
    assert row["precision"] == "fp32"


def test_an_unknown_model_is_refused_naming_it(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "nope")])
    assert exit_.value.code == 2
    assert "nope" in capsys.readouterr().err
