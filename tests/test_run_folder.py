"""Run-folder schema: typed rows round-trip byte for byte, old folders read, bad fields named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.run_folder import RunFolder, RunFolderError
from protocol.run_rows import (
    RUN_RUNNING,
    MetricsRow,
    ParticipationRow,
    RowError,
    RunInfo,
    RunState,
    SiteEval,
)
from server.rundir import ResumeError, RunDir

#: Lines as the coordinator wrote them before the schema existed (a plain and a secure round).
METRICS_LINE = (
    '{"bytes_received": 1200, "contributed": ["alpha"], "declined": {"beta": '
    '"budget-exhausted"}, "dropped": [], "epsilon": {"alpha": 1.25}, "eval_loss": 2.5, '
    '"eval_perplexity": 12.18, "released": true, "round": 1, "round_time_s": 3.5, "sites": '
    '{"alpha": {"eval_loss": 2.5, "eval_perplexity": 12.18, "num_examples": 8, "num_tokens": '
    '80}}, "train_loss": {"alpha": 2.75}}')
PARTICIPATION_LINE = (
    '{"contributed": ["alpha", "gamma"], "declined": {}, "decoding_error_bound": {"l2": 1e-06, '
    '"per_coordinate": 1e-08}, "degree": 2, "dropped": ["beta"], "epsilon": {"alpha": 1.0}, '
    '"failed": {}, "modulus_bits": 32, "released": true, "round": 2, "sampled": ["alpha", '
    '"beta", "gamma"], "secure_aggregation": true, "threshold": 2}')


def test_rows_written_before_the_schema_round_trip_byte_for_byte(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.append_metrics(MetricsRow.from_json(json.loads(METRICS_LINE)))
    folder.append_participation(ParticipationRow.from_json(json.loads(PARTICIPATION_LINE)))

    assert folder.metrics_path.read_text() == METRICS_LINE + "\n"
    assert folder.participation_path.read_text() == PARTICIPATION_LINE + "\n"
    (row,) = folder.read_metrics()
    assert row.sites["alpha"] == SiteEval(eval_loss=2.5, eval_perplexity=12.18, num_examples=8,
                                          num_tokens=80)
    assert folder.read_participation()[0].dropped == ("beta",)


def test_an_old_folder_without_later_fields_still_reads(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.state_path.write_text(json.dumps({"run_id": "a", "completed_round": 1,
                                             "num_rounds": 2, "status": "running"}))
    folder.metrics_path.write_text('{"round": 0, "eval_loss": 3.0, "eval_perplexity": 20.1, '
                                   '"sites": {}, "round_time_s": 1.0}\n')

    assert folder.read_state() == RunState("a", 1, 2, RUN_RUNNING, stopped_early="")
    (row,) = folder.read_metrics()
    assert row.bytes_received is None and "bytes_received" not in row.to_json()


@pytest.mark.parametrize(("change", "message"), [
    ({"eval_loss": "low"}, "metrics row: `eval_loss` must be a number, got 'low'"),
    ({"released": 1}, "metrics row: `released` must be true or false, got 1"),
    ({"round": True}, "metrics row: `round` must be an integer >= 0, got True"),
    ({"contributed": "alpha"}, "`contributed` must be a list of site names, got 'alpha'"),
    ({"extra": 1}, "metrics row: unknown key `extra`"),
    ({"sites": {"alpha": {"eval_loss": 1.0}}}, "site evaluation: `eval_perplexity` is missing"),
])
def test_a_bad_row_names_the_field_and_the_value(change: dict[str, object], message: str
                                                  ) -> None:
    with pytest.raises(RowError, match=message.replace("[", r"\[").replace("(", r"\(")):
        MetricsRow.from_json({**json.loads(METRICS_LINE), **change})


def test_reader_names_the_file_and_line_or_hands_each_bad_line_to_the_caller(tmp_path: Path
                                                                             ) -> None:
    folder = RunFolder(tmp_path)
    folder.metrics_path.write_text(METRICS_LINE + '\n{"round": 2, "eval_loss": "x"}\n{oops\n')
    with pytest.raises(RunFolderError, match="metrics.jsonl:2: metrics row: `sites` "
                                             "is missing"):
        folder.read_metrics()
    skipped: list[str] = []
    assert [r.round for r in folder.read_metrics(skipped.append)] == [1]
    assert skipped[1].startswith("metrics.jsonl:3 is malformed")
    assert [r["round"] for r in folder.read_raw_rows(folder.metrics_path, skipped.append)] == [
        1, 2]


def test_resume_keeps_run_info_records_the_resume_and_truncates_rows(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    extra = {"mode": "simulation", "model_resolved": "m", "adapter_tensors": 2,
             "adapter_parameters": 64}
    rd.write_run_json(run_id="r1", config={"num-server-rounds": 2}, extra=extra)
    rd.write_run_json(run_id="ignored", config={}, extra=extra)
    info = rd.read_run_info()
    assert isinstance(info, RunInfo) and info.run_id == "r1" and info.config
    assert info.resumed is not None and len(info.resumed) == 1
    rd.append_metrics(MetricsRow(round=0, eval_loss=3.0, eval_perplexity=20.1, sites={}))
    rd.metrics_path.write_text(rd.metrics_path.read_text() + METRICS_LINE + "\n")
    rd.truncate_after(0)
    assert [r.round for r in rd.read_metrics()] == [0]
    with pytest.raises(ResumeError, match="nothing to resume"):
        rd.read_state()
    rd.state_path.write_text('{"run_id": "r1", "completed_round": -1, "num_rounds": 2, '
                             '"status": "running"}')
    with pytest.raises(ResumeError, match="`completed_round` must be an integer >= 0, got -1"):
        rd.read_state()


def test_rows_written_before_dp_levels_were_named_apart_still_read(tmp_path):
    from protocol.run_rows import ParticipationRow, upgrade_keys

    old = {"round": 1, "sampled": ["a"], "contributed": ["a"], "declined": {}, "failed": {},
           "site_dp": {"mode": "distributed", "released": True}}
    row = ParticipationRow.from_json(old)
    assert row.site_level_dp == {"mode": "distributed", "released": True}
    assert upgrade_keys({"site-dp": True, "site-dp-epsilon": 8.0, "site-dp-policy": "{}",
                         "dp": True}) == {"site-level-dp": True, "site-level-dp-epsilon": 8.0,
                                          "dp-policy": "{}", "dp": True}
