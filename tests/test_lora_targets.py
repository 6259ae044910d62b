"""LoRA target modules default per architecture (``lora-target-modules = "auto"``).

Tiny randomly initialised GPT-2 and Qwen2 checkpoints, built from their configs: the
coordinator's adapter manifest and a site's model resolve ``auto`` to the same modules, the
right modules get LoRA, and one training step runs and moves the adapter.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from client.data import Example, tokenize_examples
from client.model import get_adapter_state, load_site_model, set_adapter_state
from client.train import train_steps
from protocol.adapter import (
    DEFAULT_TARGET_MODULES,
    AdapterError,
    adapter_shapes,
    default_target_modules,
    initial_adapter_state,
    lora_config,
    resolve_target_modules,
)
from protocol.config import ConfigError, RunConfig


def _gpt2(vocab: int, eos: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2,
                                      n_head=4, bos_token_id=eos, eos_token_id=eos))


def _qwen2(vocab: int, eos: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=eos, eos_token_id=eos))


BUILDERS: dict[str, Callable[[int, int], Any]] = {"gpt2": _gpt2, "qwen2": _qwen2}
# model type -> (module name suffixes that must carry LoRA, layers in the tiny config)
EXPECTED = {"gpt2": (("attn.c_attn",), 2), "qwen2": (("self_attn.q_proj", "self_attn.v_proj"), 2)}


def _tiny_checkpoint(kind: str, tokenizer_dir: Path, dest: Path) -> Path:
    """Save a random ``kind`` model from its config, with the tiny test tokenizer."""
    from transformers import AutoTokenizer

    dest.mkdir(parents=True)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, dest / f.name)
    tok = AutoTokenizer.from_pretrained(str(dest))
    torch.manual_seed(0)
    BUILDERS[kind](len(tok), int(tok.eos_token_id)).save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny_arch(request: pytest.FixtureRequest, tiny_model: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    kind = str(request.param)
    return kind, _tiny_checkpoint(kind, tiny_model, tmp_path_factory.mktemp(kind) / "model")


def test_default_targets_per_architecture() -> None:
    assert default_target_modules("llama") == ["q_proj", "v_proj"]
    assert default_target_modules("qwen2") == ["q_proj", "v_proj"]
    assert default_target_modules("mistral") == ["q_proj", "v_proj"]
    assert default_target_modules("gemma") == ["q_proj", "v_proj"]
    assert default_target_modules("phi3") == ["qkv_proj"]
    assert default_target_modules("gpt2") == ["c_attn"]
    assert default_target_modules("gpt_neox") == ["query_key_value"]
    assert all(DEFAULT_TARGET_MODULES.values())


def test_unknown_architecture_asks_for_an_explicit_list() -> None:
    with pytest.raises(AdapterError, match="no default LoRA target modules for model_type "
                                           "'t5'.*set `lora-target-modules`"):
        default_target_modules("t5")


def test_run_config_defaults_to_auto_and_refuses_auto_mixed_with_names() -> None:
    assert RunConfig().lora_target_modules == "auto"
    assert RunConfig().target_modules == ["auto"]
    assert RunConfig(lora_target_modules="c_attn").target_modules == ["c_attn"]
    with pytest.raises(ConfigError, match="`lora-target-modules` must be a comma-separated"):
        RunConfig(lora_target_modules="auto,q_proj")


def test_auto_on_the_llama_checkpoint_keeps_q_and_v(tiny_model: Path) -> None:
    auto = lora_config(r=4, alpha=8, dropout=0.0, target_modules=["auto"],
                       base_model=str(tiny_model))
    explicit = lora_config(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"],
                           base_model=str(tiny_model))
    assert sorted(auto.target_modules) == ["q_proj", "v_proj"]
    assert adapter_shapes(str(tiny_model), auto) == adapter_shapes(str(tiny_model), explicit)


def test_an_explicit_list_wins_over_auto(tiny_arch: tuple[str, Path]) -> None:
    kind, path = tiny_arch
    names = ["c_proj"] if kind == "gpt2" else ["k_proj"]
    cfg = lora_config(r=4, alpha=8, dropout=0.0, target_modules=names, base_model=str(path))
    assert sorted(cfg.target_modules) == names
    assert resolve_target_modules(names, str(path)) == names
    assert all(f".{names[0]}.lora_" in k for k in adapter_shapes(str(path), cfg))


def test_auto_targets_the_right_modules_at_coordinator_and_site(
    tiny_arch: tuple[str, Path],
) -> None:
    kind, path = tiny_arch
    suffixes, layers = EXPECTED[kind]
    cfg = lora_config(r=4, alpha=8, dropout=0.0, target_modules=["auto"], base_model=str(path))
    assert sorted(cfg.target_modules) == sorted(s.rsplit(".", 1)[-1] for s in suffixes)
    assert cfg.fan_in_fan_out is (kind == "gpt2")  # GPT-2's projections are Conv1D
    coordinator = adapter_shapes(str(path), cfg)

    site = load_site_model(str(path), device=torch.device("cpu"), r=4, alpha=8, dropout=0.0,
                           target_modules=["auto"])
    assert site.shapes == coordinator
    adapted = sorted(name for name, module in site.model.named_modules()
                     if hasattr(module, "lora_A") and name.endswith(suffixes))
    assert len(adapted) == layers * len(suffixes)
    assert len(coordinator) == 2 * len(adapted)  # one A and one B per adapted module
    assert all(any(f".{s}.lora_" in k for s in suffixes) for k in coordinator)


def test_one_training_step_moves_the_auto_adapter(tiny_arch: tuple[str, Path]) -> None:
    kind, path = tiny_arch
    site = load_site_model(str(path), device=torch.device("cpu"), r=4, alpha=8, dropout=0.0,
                           target_modules=["auto"])
    set_adapter_state(site, initial_adapter_state(site.shapes, seed=0), aggregation="fedavg")
    data = tokenize_examples([Example(text=f"the patient was seen on day {i} for a follow up.")
                              for i in range(8)], site.tokenizer, max_seq_len=32)
    before = get_adapter_state(site)
    result = train_steps(site.model, data, steps=1, batch_size=4, learning_rate=1e-2,
                         pad_id=int(site.tokenizer.pad_token_id), device=site.device, seed=0)
    after = get_adapter_state(site)
    assert result.steps == 1 and np.isfinite(result.mean_loss)
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert moved and any("lora_B" in k for k in moved)
