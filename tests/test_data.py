"""Site data loaders: every format, the split, tokenisation, and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    load_examples,
    shard_for_partition,
    split_examples,
    take_shard,
    tokenize_examples,
)


def test_jsonl_text_and_prompt_response_are_read(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "hello world"}) + "\n\n"
                 + json.dumps({"prompt": "Q?", "response": "A."}) + "\n")
    assert load_examples(f) == [Example("hello world"), Example("A.", prompt="Q?")]


def test_txt_splits_on_blank_lines_else_lines(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("one\ntwo\n\nthree\n")
    (tmp_path / "l.txt").write_text("a\nb\n")
    assert [e.text for e in load_examples(tmp_path / "p.txt")] == ["one\ntwo", "three"]
    assert [e.text for e in load_examples(tmp_path / "l.txt")] == ["a", "b"]


def test_directory_reads_all_files_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("b1\nb2")
    (tmp_path / "a.jsonl").write_text('{"text": "a1"}\n')
    (tmp_path / "ignored.csv").write_text("x")
    assert [e.text for e in load_examples(tmp_path)] == ["a1", "b1", "b2"]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"foo": 1}', "expected a `text` key"),
        ('{"text": ""}', "non-empty string"),
        ('{"text": 3}', "non-empty string"),
        ('{"prompt": "p"}', "must both be strings"),
        ('{"prompt": "p", "response": "  "}', "`response` must be non-empty"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        load_examples(f)
    assert f"{f}:2" in str(err.value) and needle in str(err.value)


def test_empty_and_missing_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_examples(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no \\*.jsonl"):
        load_examples(tmp_path / "d")


def test_non_utf8_txt_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(tmp_path / "bin.txt")


def test_split_is_deterministic_disjoint_and_complete() -> None:
    ex = [Example(str(i)) for i in range(100)]
    t1, h1 = split_examples(ex, eval_fraction=0.1, seed=7)
    t2, h2 = split_examples(ex, eval_fraction=0.1, seed=7)
    assert (t1, h1) == (t2, h2)
    assert len(h1) == 10 and len(t1) == 90
    assert sorted(e.text for e in t1 + h1) == sorted(e.text for e in ex)
    _, h3 = split_examples(ex, eval_fraction=0.1, seed=8)
    assert h3 != h1


def test_shards_partition_sites_disjointly(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "d.txt").write_text("x\ny")
    maps = [shard_for_partition(tmp_path, i, 5) for i in range(5)]
    assert [m[0].name for m in maps] == ["a", "b", "a", "b", "a"]
    assert [(m[1], m[2]) for m in maps] == [(0, 3), (0, 2), (1, 3), (1, 2), (2, 3)]
    items = [Example(str(i)) for i in range(10)]
    shards = [take_shard(items, s, 3) for s in range(3)]
    assert sorted(e.text for s in shards for e in s) == sorted(e.text for e in items)


def test_prompt_tokens_get_no_loss(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    [pr] = tokenize_examples([Example("the loan", prompt="the patient")], tok, max_seq_len=64)
    n_prompt = len(tok("the patient", add_special_tokens=False)["input_ids"])
    assert all(lbl == IGNORE_INDEX for lbl in pr.labels[:n_prompt])
    assert all(lbl != IGNORE_INDEX for lbl in pr.labels[n_prompt:])
    assert pr.input_ids[-1] == tok.eos_token_id
    [tx] = tokenize_examples([Example("the loan of the month")], tok, max_seq_len=3)
    assert len(tx.input_ids) == 3 and list(tx.labels) == list(tx.input_ids)


def test_atomic_writes_get_the_plain_open_mode_or_the_one_asked_for(tmp_path: Path) -> None:
    import os
    import stat

    from protocol.io import atomic_write_bytes, atomic_write_json

    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "report.json", {"a": 1})
        atomic_write_bytes(tmp_path / "identity.key", b"k" * 32, mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "identity.key").stat().st_mode) == 0o600
