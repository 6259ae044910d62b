"""The GPU path on CUDA: a bf16 DP step, peak memory with and without checkpointing, QLoRA.

Marked ``gpu`` (left out of the default run, like ``slow``) and skipped without CUDA. Run
them with ``python -m pytest -q -m gpu tests/test_gpu.py`` or ``simulations/gpu_check.sh``,
which also times a real-model round; each test prints its figures (``-s`` shows them).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from client.compute import Compute, resolve_compute
from client.data import Example, tokenize_examples
from client.model import get_adapter_state, load_site_model, set_adapter_state
from client.train import dp_train
from privacy.budget import RoundPlan, plan_round
from privacy.policy import SitePrivacyPolicy
from tests.conftest import EMBEDDED, has_embedded

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _site(ref: str, compute: Compute) -> Any:
    site = load_site_model(ref, compute=compute, r=8, alpha=16, dropout=0.0,
                           target_modules=["auto"])
    rng = np.random.default_rng(0)
    set_adapter_state(site, {k: (0.05 * rng.standard_normal(s)).astype(np.float32)
                             for k, s in site.shapes.items()}, aggregation="fedavg")
    return site


def _data(site: Any, n: int, seq: int) -> list[Any]:
    words = "the patient was seen for follow up of blood pressure and the loan balance".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(seq)) for i in range(n)]
    return tokenize_examples([Example(text=t) for t in texts], site.tokenizer, max_seq_len=seq)


def _dp_round(site: Any, data: list[Any], *, batch: int, steps: int) -> float:
    policy = SitePrivacyPolicy(budget_epsilon=8.0, delta=1e-5, max_grad_norm=0.1)
    plan = plan_round(policy, history=[], num_examples=len(data), batch_size=batch,
                      local_steps=steps, planned_rounds=1)
    assert isinstance(plan, RoundPlan)
    return dp_train(site, SimpleNamespace(train=data), plan=plan, policy=policy,
                    learning_rate=1e-2, pad_id=int(site.tokenizer.pad_token_id), seed=None)


def _peak_mb(fn: Any) -> tuple[float, float]:
    """Return (seconds, peak MB above the memory allocated before) of ``fn()`` on CUDA."""
    import time

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - before) / 2**20


@pytest.fixture(scope="module")
def model_ref() -> str:
    if not has_embedded():
        pytest.skip("the embedded model is not installed")
    return str(EMBEDDED)


def test_auto_picks_cuda_and_bf16_where_supported() -> None:
    compute = resolve_compute()
    assert compute.device.type == "cuda"
    assert compute.autocast is (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


def test_a_bf16_dp_step_on_cuda_moves_the_adapter_in_fp32(model_ref: str) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    site = _site(model_ref, resolve_compute(device="cuda", precision="bf16"))
    data = _data(site, 256, 128)
    before = get_adapter_state(site)
    seconds, peak = _peak_mb(lambda: _dp_round(site, data, batch=32, steps=4))
    after = get_adapter_state(site)
    print(f"\nbf16 DP round (4 steps, batch 32 x 128): {seconds:.2f} s, peak {peak:.0f} MB")
    assert all(p.dtype == torch.float32 for n, p in site.model.named_parameters() if "lora_" in n)
    assert any(not np.array_equal(before[k], after[k]) for k in after)
    assert all(np.isfinite(v).all() for v in after.values())


def test_gradient_checkpointing_lowers_peak_memory_of_a_dp_step(model_ref: str) -> None:
    results = {}
    for ckpt in (False, True):
        site = _site(model_ref, resolve_compute(device="cuda", gradient_checkpointing=ckpt))
        data = _data(site, 512, 256)
        _dp_round(site, data, batch=64, steps=1)  # warm-up: kernels, allocator
        results[ckpt] = _peak_mb(lambda s=site, d=data: _dp_round(s, d, batch=64, steps=2))
        del site
        torch.cuda.empty_cache()
    (t0, m0), (t1, m1) = results[False], results[True]
    print(f"\nDP round (2 steps, batch 64 x 256): no checkpointing {t0:.2f} s {m0:.0f} MB; "
          f"checkpointing {t1:.2f} s {m1:.0f} MB")
    assert m1 < m0


def test_qlora_loads_4bit_base_weights_and_trains_the_adapter_with_dp(model_ref: str) -> None:
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    site = _site(model_ref, resolve_compute(device="cuda", base_quantization="4bit"))
    four_bit = [n for n, m in site.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no 4-bit base layer"
    assert all(p.dtype == torch.float32 and p.device.type == "cuda"
               for n, p in site.model.named_parameters() if "lora_" in n)
    data = _data(site, 256, 128)
    before = get_adapter_state(site)
    seconds, peak = _peak_mb(lambda: _dp_round(site, data, batch=32, steps=4))
    after = get_adapter_state(site)
    print(f"\nQLoRA DP round (4 steps, batch 32 x 128): {seconds:.2f} s, peak {peak:.0f} MB; "
          f"{len(four_bit)} 4-bit layers")
    assert set(after) == set(site.shapes)
    assert any(not np.array_equal(before[k], after[k]) for k in after)
