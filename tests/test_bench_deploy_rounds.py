"""The deployment bench end to end on the embedded model: per-message kinds, real rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.bench_round import main

pytestmark = pytest.mark.slow


def test_the_deployment_bench_measures_real_secure_rounds_with_work_ahead_on_and_off(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    assert main(["--deployment", "--loops", "on", "--repeats", "1", "--secure-rounds", "3",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["messages_per_round"] == {"query.hello": 2, "train+evaluate": 1}
    rounds = doc["secure_rounds"]
    assert set(rounds) == {"work_ahead", "no_work_ahead"}
    for name, measured in rounds.items():
        assert measured["work_ahead"] is (name == "work_ahead")
        assert [p["round"] for p in measured["per_round"]] == [2, 3]
        for p in measured["per_round"]:
            assert set(p["work_s"]) == {"bank", "clinic", "law"}
            assert 0 < p["slowest_work_s"] < p["round_s"]
            assert p["fixed_overhead_s"] == pytest.approx(p["round_s"] - p["slowest_work_s"])
