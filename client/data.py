"""A site's local data: read JSONL / plain-text files, split train / held-out, tokenise.

Formats
-------
- ``.jsonl``: one JSON object per line, either ``{"text": ...}`` (loss on every token) or
  ``{"prompt": ..., "response": ...}`` (loss on the response tokens only).
- ``.txt``: examples separated by blank lines (a file without blank lines: one per line).

A site path is a file or a directory; a directory contributes every ``*.jsonl`` and
``*.txt`` file below it, in sorted order.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "DataError",
    "Example",
    "TokenizedExample",
    "collate",
    "load_examples",
    "site_paths",
    "split_examples",
    "tokenize_examples",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_SUFFIXES = (".jsonl", ".txt")


class DataError(ValueError):
    """A data file is missing, empty or malformed (the message names file and line)."""


@dataclass(frozen=True)
class Example:
    """One training example: ``prompt`` gets no loss, ``text`` does."""

    text: str
    prompt: str = ""


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and labels (``-100`` where no loss is taken)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def _data_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"data path does not exist: {path}")
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            raise DataError(f"unsupported data file {path}: expected one of {_SUFFIXES}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
    if not files:
        raise DataError(f"no *.jsonl or *.txt files under data directory {path}")
    return files


def _read_jsonl(path: Path) -> list[Example]:
    out: list[Example] = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, "
                                f"got {type(obj).__name__}")
            if "text" in obj:
                text = obj["text"]
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{path}:{lineno}: `text` must be a non-empty string")
                out.append(Example(text=text))
            elif "prompt" in obj or "response" in obj:
                prompt, response = obj.get("prompt"), obj.get("response")
                if not isinstance(prompt, str) or not isinstance(response, str):
                    raise DataError(
                        f"{path}:{lineno}: `prompt` and `response` must both be strings"
                    )
                if not response.strip():
                    raise DataError(f"{path}:{lineno}: `response` must be non-empty")
                out.append(Example(text=response, prompt=prompt))
            else:
                raise DataError(
                    f"{path}:{lineno}: expected a `text` key or `prompt` and `response` keys, "
                    f"got keys {sorted(obj)}"
                )
    return out


def _read_txt(path: Path) -> list[Example]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if "\n\n" in raw.strip():
        chunks = [c.strip() for c in raw.split("\n\n")]
    else:
        chunks = [c.strip() for c in raw.splitlines()]
    return [Example(text=c) for c in chunks if c]


def load_examples(path: str | Path) -> list[Example]:
    """Read every example from a file or a directory of files."""
    examples: list[Example] = []
    for file in _data_files(Path(path)):
        part = _read_jsonl(file) if file.suffix == ".jsonl" else _read_txt(file)
        if not part:
            raise DataError(f"data file is empty: {file}")
        examples.extend(part)
    return examples


def split_examples(
    examples: Sequence[Example], *, eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Shuffle with a fixed seed and cut off a held-out part (at least one example each)."""
    if len(examples) < 2:
        raise DataError(f"need at least 2 examples to split train / held-out, got {len(examples)}")
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"`eval-fraction` must be in (0, 1), got {eval_fraction!r}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * eval_fraction)))
    held = [examples[i] for i in order[:n_eval]]
    train = [examples[i] for i in order[n_eval:]]
    return train, held


def site_paths(data_dir: str | Path) -> list[Path]:
    """List the site folders (or files) of a simulation data directory, sorted by name."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory does not exist: {root}")
    entries = sorted(
        p for p in root.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or p.suffix in _SUFFIXES)
    )
    sites = [p for p in entries if p.is_file() or any(
        q.suffix in _SUFFIXES for q in p.rglob("*") if q.is_file())]
    if not sites:
        raise DataError(f"no site folders or data files in {root}")
    return sites


def shard_for_partition(
    data_dir: str | Path, partition_id: int, num_partitions: int
) -> tuple[Path, int, int]:
    """Map a virtual site to ``(site path, shard index, shard count)``.

    With N virtual sites and S site folders, site ``i`` reads folder ``i % S``; when N > S
    the folder is shared by ``ceil`` many virtual sites, each taking a disjoint shard.
    """
    sites = site_paths(data_dir)
    path = sites[partition_id % len(sites)]
    sharing = [i for i in range(num_partitions) if i % len(sites) == partition_id % len(sites)]
    return path, sharing.index(partition_id), len(sharing)


def take_shard(examples: Sequence[Example], shard: int, num_shards: int) -> list[Example]:
    """Take a deterministic, disjoint shard of ``examples`` (interleaved)."""
    return [ex for i, ex in enumerate(examples) if i % num_shards == shard]


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, *, max_seq_len: int
) -> list[TokenizedExample]:
    """Tokenise: ``[bos?] prompt response eos``, labels ``-100`` on the prompt part."""
    eos = tokenizer.eos_token_id
    out: list[TokenizedExample] = []
    for ex in examples:
        prompt_ids: list[int] = (
            tokenizer(ex.prompt, add_special_tokens=False)["input_ids"] if ex.prompt else []
        )
        text_ids: list[int] = tokenizer(ex.text, add_special_tokens=False)["input_ids"]
        if ex.prompt and not ex.text.startswith((" ", "\n")):
            text_ids = tokenizer(" " + ex.text, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + text_ids + ([eos] if eos is not None else [])
        labels = [IGNORE_INDEX] * len(prompt_ids) + text_ids + ([eos] if eos is not None else [])
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if all(lbl == IGNORE_INDEX for lbl in labels[1:]):
            continue  # nothing to learn after truncation
        out.append(TokenizedExample(tuple(ids), tuple(labels)))
    return out


def collate(batch: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding gets ``attention_mask`` 0 and label ``-100``."""
    import torch  # lazily: the ClientApp's query stages import this module without torch

    width = max(len(b.input_ids) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, b in enumerate(batch):
        n = len(b.input_ids)
        ids[row, :n] = torch.tensor(b.input_ids)
        labels[row, :n] = torch.tensor(b.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
