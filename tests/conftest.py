"""Shared fixtures: a tiny random Llama checkpoint and tiny site data, built offline."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = REPO / "client" / "embedded"

_WORDS = (
    "the patient was seen for follow up of blood pressure and started on a new dose "
    "account holder asked about the transfer fee and the loan balance of the month "
    "the parties agree that this contract shall be governed by the law of the state"
).split()


def _sentences(rng: random.Random, n: int, words: list[str]) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 18))) + "." for _ in range(n)]


def build_tiny_model(dest: Path) -> Path:
    """Build a tiny random LlamaForCausalLM with a byte-level BPE tokenizer (seconds)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_sentences(rng, 500, _WORDS), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(dest))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(dest))
    return dest


def build_tiny_sites(dest: Path, n_per_site: int = 60) -> Path:
    """Three small sites in the three formats (text JSONL, prompt/response JSONL, txt)."""
    rng = random.Random(1)
    a, b, c = _WORDS[:16], _WORDS[16:30], _WORDS[30:]
    (dest / "alpha").mkdir(parents=True, exist_ok=True)
    (dest / "beta").mkdir(parents=True, exist_ok=True)
    (dest / "gamma").mkdir(parents=True, exist_ok=True)
    with (dest / "alpha" / "train.jsonl").open("w") as fh:
        for s in _sentences(rng, n_per_site, a):
            fh.write(json.dumps({"text": s}) + "\n")
    with (dest / "beta" / "train.jsonl").open("w") as fh:
        for s in _sentences(rng, n_per_site, b):
            fh.write(json.dumps({"prompt": "Q: " + s[:20], "response": s}) + "\n")
    (dest / "gamma" / "notes.txt").write_text("\n\n".join(_sentences(rng, n_per_site, c)))
    return dest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sites(tmp_path_factory.mktemp("tiny-sites"))


@pytest.fixture()
def flwr_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home


def has_embedded() -> bool:
    return (EMBEDDED / "config.json").is_file() and any(EMBEDDED.glob("*.safetensors"))
