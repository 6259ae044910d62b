"""A site's compute settings (client.compute): refusals, precedence, and DP under each, on CPU.

Gradient checkpointing and bf16 autocast run here on the CPU, with Opacus DP-SGD and LoRA, on
the embedded model and a tiny random GPT-2: checkpointing leaves a seeded DP round
bit-identical, and under bf16 the LoRA layers, their per-sample gradients and the noise stay
fp32. The CUDA-only parts (bf16 on a GPU, peak memory, 4-bit weights) are in test_gpu.py.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from client.compute import Compute, resolve_compute, site_compute
from client.data import Example, tokenize_examples
from client.deploy_config import load_site_config
from client.model import get_adapter_state, load_site_model, set_adapter_state
from client.train import dp_train
from privacy.budget import RoundPlan, plan_round
from privacy.dp_sgd import make_private
from privacy.policy import SitePrivacyPolicy
from protocol.config import ConfigError, RunConfig
from protocol.console import UsageError
from protocol.deploy_config import DeployConfigError
from protocol.model_ref import ModelError
from simulations.flags import compute_overrides
from tests.conftest import EMBEDDED, has_embedded

CPU = torch.device("cpu")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


# refusals and resolution ----------------------------------------------------------------------
@NO_CUDA
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_4bit_base_weights_are_refused_on_a_cpu_naming_the_key_and_value(device: str) -> None:
    with pytest.raises(ModelError, match=r"`base-quantization` is '4bit' but the device is cpu"
                                         r".*need CUDA"):
        resolve_compute(device=device, base_quantization="4bit")


def test_4bit_without_bitsandbytes_is_refused_naming_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # stand in for a CUDA machine without bitsandbytes: only the two environment probes change
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes"
                        else real_find_spec(name, *a))
    with pytest.raises(ModelError, match=r"`base-quantization` is '4bit' but the bitsandbytes "
                                         r"package is not installed"):
        resolve_compute(device="cuda", base_quantization="4bit")


def test_bf16_on_a_gpu_without_bfloat16_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(ModelError, match=r"`precision` is 'bf16' but the CUDA device 'Tesla T4' "
                                         r"does not support bfloat16"):
        resolve_compute(device="cuda", precision="bf16")
    assert resolve_compute(device="cuda", precision="auto").autocast is None  # auto: fp32 there


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp16"}, r"`precision` must be one of \('auto', 'fp32', 'bf16'\), got 'fp16'"),
    ({"base_quantization": "8bit"}, r"`base-quantization` must be one of .*got '8bit'"),
    ({"gradient_checkpointing": "yes"}, r"`gradient-checkpointing` must be true or false"),
    ({"device": "tpu"}, r"`device` must be one of .*got 'tpu'"),
])
def test_bad_compute_values_are_refused_naming_the_key(kwargs: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_compute(**kwargs)


@NO_CUDA
def test_auto_is_fp32_on_a_cpu_and_bf16_can_be_asked_for() -> None:
    assert resolve_compute() == Compute(CPU)
    assert resolve_compute(precision="bf16").autocast is torch.bfloat16
    assert "bf16 autocast" in resolve_compute(precision="bf16").describe()


def test_a_sites_node_config_wins_over_the_run_config() -> None:
    cfg = RunConfig(device="cpu", precision="bf16", gradient_checkpointing=True)
    assert site_compute(cfg, {}) == Compute(CPU, torch.bfloat16, True)
    assert site_compute(cfg, {"precision": "fp32", "gradient-checkpointing": False}) == (
        Compute(CPU))


@pytest.mark.parametrize("changes, message", [
    ({"precision": "half"}, r"`precision` must be one of"),
    ({"base_quantization": "4-bit"}, r"`base-quantization` must be one of"),
    ({"gradient_checkpointing": 1}, r"`gradient-checkpointing` must be true or false, got 1"),
    ({"device": "cpu", "base_quantization": "4bit"},
     r"`base-quantization` must be 'none' when device is 'cpu'"),
])
def test_run_config_refuses_bad_compute_keys(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_run_config_compute_defaults() -> None:
    cfg = RunConfig()
    assert (cfg.device, cfg.precision, cfg.gradient_checkpointing, cfg.base_quantization) == (
        "auto", "auto", False, "none")


# confide simulate's flags -----------------------------------------------------------------------
def _flags(**given: Any) -> argparse.Namespace:
    base = {"device": None, "precision": None, "gradient_checkpointing": None,
            "base_quantization": None}
    return argparse.Namespace(**{**base, **given})


def test_simulate_flags_become_run_config_keys() -> None:
    assert compute_overrides(_flags()) == {}
    assert compute_overrides(_flags(device="cpu", precision="fp32",
                                    gradient_checkpointing="on")) == {
        "device": "cpu", "precision": "fp32", "gradient-checkpointing": True}


@NO_CUDA
def test_simulate_refuses_4bit_on_this_cpu_naming_the_flag() -> None:
    with pytest.raises(UsageError, match=r"--base-quantization: `base-quantization` is '4bit'") \
            as err:
        compute_overrides(_flags(base_quantization="4bit"))
    assert err.value.field == "--base-quantization" and err.value.value == "4bit"


@NO_CUDA
def test_confide_simulate_exits_2_on_4bit_without_cuda(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path,
        tiny_sites: Path) -> None:
    from simulations.cli import main

    code = main(["simulate", "--out", str(tmp_path / "run"), "--model", str(tiny_model),
                 "--data", str(tiny_sites), "--base-quantization", "4bit"])
    err = capsys.readouterr().err
    assert code == 2 and "--base-quantization" in err and "'4bit'" in err and "CUDA" in err
    assert not (tmp_path / "run").exists()


# site.toml ------------------------------------------------------------------------------------
def _site_toml(tmp_path: Path, extra: str) -> Path:
    from tests._deploy import make_deployment

    path = make_deployment(tmp_path).site_cfgs["bank"]
    body = path.read_text()
    assert 'device = "auto"' in body
    path.write_text(body.replace('device = "auto"', 'device = "auto"\n' + extra, 1))
    return path


def test_site_toml_compute_keys_reach_the_node_config(tmp_path: Path) -> None:
    path = _site_toml(tmp_path, 'precision = "fp32"\ngradient-checkpointing = true')
    node = load_site_config(path).node_config()
    assert (node["precision"], node["gradient-checkpointing"], node["base-quantization"]) == (
        "fp32", True, "none")
    assert site_compute(RunConfig(), node).gradient_checkpointing is True


@pytest.mark.parametrize("extra, message", [
    ('precision = "fp16"', r"\[site\] `precision` must be one of .*got 'fp16'"),
    ('gradient-checkpointing = "yes"', r"\[site\] `gradient-checkpointing` must be true or false"),
    ('base-quantization = "8bit"', r"\[site\] `base-quantization` must be one of"),
    pytest.param('base-quantization = "4bit"',
                 r"\[site\] `base-quantization` is '4bit' but the device is cpu", marks=NO_CUDA),
])
def test_site_toml_refuses_bad_compute_keys_naming_file_and_key(
        tmp_path: Path, extra: str, message: str) -> None:
    path = _site_toml(tmp_path, extra)
    with pytest.raises(DeployConfigError, match=message) as err:
        load_site_config(path)
    assert str(path) in str(err.value)


def test_site_toml_refuses_4bit_with_device_cpu_even_unchecked(tmp_path: Path) -> None:
    path = _site_toml(tmp_path, 'base-quantization = "4bit"')
    path.write_text(path.read_text().replace('device = "auto"', 'device = "cpu"', 1))
    with pytest.raises(DeployConfigError, match=r"`base-quantization` must be 'none' when "
                                                r"`device` is 'cpu'"):
        load_site_config(path, check_files=False)


# DP-SGD under gradient checkpointing and bf16, on CPU ------------------------------------------
def _gpt2_dir(tiny_model: Path, dest: Path) -> Path:
    import shutil

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    dest.mkdir(parents=True)
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, dest / f.name)
    tok = AutoTokenizer.from_pretrained(str(dest))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2,
                               n_head=4, bos_token_id=tok.eos_token_id,
                               eos_token_id=tok.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0,
                               attn_pdrop=0.0)).save_pretrained(str(dest))  # deterministic
    return dest


@pytest.fixture(scope="module", params=["embedded", "gpt2"])
def arch(request: pytest.FixtureRequest, tiny_model: Path,
         tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "embedded":
        if not has_embedded():
            pytest.skip("the embedded model is not installed")
        return str(EMBEDDED)
    return str(_gpt2_dir(tiny_model, tmp_path_factory.mktemp("gpt2") / "model"))


def _site(ref: str, compute: Compute) -> Any:
    site = load_site_model(ref, compute=compute, r=4, alpha=8, dropout=0.0,
                           target_modules=["auto"])
    rng = np.random.default_rng(3)  # non-zero A and B: every LoRA tensor gets a gradient
    state = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in site.shapes.items()}
    set_adapter_state(site, state, aggregation="fedavg")
    return site


def _examples(site: Any, n: int = 12) -> list[Any]:
    texts = [f"the patient was seen on day {i} for a follow up of the loan." for i in range(n)]
    return tokenize_examples([Example(text=t) for t in texts], site.tokenizer, max_seq_len=24)


def _per_sample_grads(site: Any, data: list[Any]) -> list[torch.Tensor]:
    from client.data import collate

    site.model.train()  # Opacus validates a model in training mode; checkpointing needs it too
    params = [p for p in site.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    private = make_private(site.model, opt, data, sample_rate=0.5, noise_multiplier=0.0,
                           max_grad_norm=1e6, generator=torch.Generator().manual_seed(0),
                           collate_fn=lambda b: collate(b, int(site.tokenizer.pad_token_id)))
    try:
        private.optimizer.zero_grad(set_to_none=True)
        batch = private.make_batch([0, 1, 2, 3, 4])
        out = private.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        private.loss(out.logits, batch["labels"]).backward()
        return [p.grad_sample.detach().clone() for p in private.trainable_parameters]
    finally:
        private.close()


def _first_lora_layer(model: Any) -> Any:
    """The first LoRA-carrying module: inside a block, so a checkpoint recomputes it."""
    from peft.tuners.lora import LoraLayer

    return next(m for m in model.modules() if isinstance(m, LoraLayer))


def _dp_round(site: Any, data: list[Any]) -> dict[str, np.ndarray]:
    policy = SitePrivacyPolicy(budget_epsilon=8.0, delta=1e-3, max_grad_norm=0.1)
    plan = plan_round(policy, history=[], num_examples=len(data), batch_size=4, local_steps=3,
                      planned_rounds=1)
    assert isinstance(plan, RoundPlan)
    loss = dp_train(site, SimpleNamespace(train=data), plan=plan, policy=policy,
                    learning_rate=1e-2, pad_id=int(site.tokenizer.pad_token_id), seed=7)
    assert np.isfinite(loss)
    return get_adapter_state(site)


def test_gradient_checkpointing_recomputes_and_leaves_per_sample_grads_bit_identical(
        arch: str) -> None:
    plain, ckpt = _site(arch, Compute(CPU)), _site(arch, Compute(CPU, gradient_checkpointing=True))
    data = _examples(plain)
    calls = {"plain": 0, "ckpt": 0}
    for name, site in (("plain", plain), ("ckpt", ckpt)):
        def count(*_: Any, _name: str = name) -> None:
            calls[_name] += 1
        hook = _first_lora_layer(site.model).register_forward_pre_hook(count)
        try:
            grads = _per_sample_grads(site, data)
        finally:
            hook.remove()
        if name == "plain":
            expected = grads
    assert calls == {"plain": 1, "ckpt": 2}  # checkpointing is on: the layer ran again
    assert len(grads) == len(expected) and all(g.abs().sum() > 0 for g in expected)
    assert all(torch.equal(a, b) for a, b in zip(expected, grads, strict=True))


def test_a_seeded_dp_round_with_checkpointing_ends_with_the_same_adapter(arch: str) -> None:
    plain, ckpt = _site(arch, Compute(CPU)), _site(arch, Compute(CPU, gradient_checkpointing=True))
    data = _examples(plain)
    before = get_adapter_state(plain)
    a, b = _dp_round(plain, data), _dp_round(ckpt, data)
    assert any(not np.array_equal(before[k], a[k]) for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bf16_autocast_runs_the_base_in_bf16_and_keeps_lora_grads_and_noise_fp32(
        arch: str) -> None:
    fp32, bf16 = _site(arch, Compute(CPU)), _site(arch, Compute(CPU, autocast=torch.bfloat16))
    data = _examples(fp32)
    seen: dict[str, torch.dtype] = {}

    def record(name: str) -> Any:
        def hook(_m: Any, _i: Any, out: torch.Tensor) -> None:
            seen[name] = out.dtype
        return hook

    layer = _first_lora_layer(bf16.model)
    hooks = [layer.base_layer.register_forward_hook(record("base")),
             next(iter(layer.lora_B.values())).register_forward_hook(record("lora"))]
    try:
        grads = _per_sample_grads(bf16, data)
    finally:
        for h in hooks:
            h.remove()
    expected = _per_sample_grads(fp32, data)
    assert seen == {"base": torch.bfloat16, "lora": torch.float32}
    assert all(g.dtype == torch.float32 for g in grads)
    for a, b in zip(expected, grads, strict=True):  # bf16 rounding of the base model only
        assert float((a - b).norm() / a.norm()) < 0.1
    state = _dp_round(bf16, data)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in state.values())


def test_a_cpu_run_asks_ray_for_no_gpu() -> None:
    from simulations.runner import _gpus_per_site

    assert _gpus_per_site(RunConfig(device="cpu"), 3) == 0.0
    if not torch.cuda.is_available():
        assert _gpus_per_site(RunConfig(), 3) == 0.0
    else:  # each virtual site gets its share, or Ray hides the GPU from it
        assert 0.0 < _gpus_per_site(RunConfig(), 3) <= 1.0
