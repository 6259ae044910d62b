"""The adapter on the wire and on disk: shared-seed A, frozen-a exactness, save/load, key checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from client.model import get_adapter_state, load_site_model, set_adapter_state
from protocol.adapter import (
    AdapterError,
    adapter_shapes,
    check_state,
    initial_adapter_state,
    is_lora_a,
    load_adapter_dir,
    lora_config,
    save_adapter_dir,
    trainable_keys,
)
from server.aggregate import apply_delta, weighted_mean


@settings(max_examples=40, deadline=None)
@given(
    n_sites=st.integers(1, 6),
    rank=st.integers(1, 8),
    d_in=st.integers(1, 24),
    d_out=st.integers(1, 24),
    seed=st.integers(0, 2**31 - 1),
)
def test_frozen_a_average_of_products_equals_product_of_average(
    n_sites: int, rank: int, d_in: int, d_out: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    a = initial_adapter_state({"m.lora_A.weight": (rank, d_in)}, seed=seed)["m.lora_A.weight"]
    bs = [rng.normal(size=(d_out, rank)).astype(np.float32) for _ in range(n_sites)]
    w = rng.integers(1, 1000, size=n_sites).astype(np.float64)
    avg_of_products = sum(wi * (b.astype(np.float64) @ a) for wi, b in zip(w, bs)) / w.sum()
    avg_b = weighted_mean([{"b": b} for b in bs], list(w))["b"]
    np.testing.assert_allclose(avg_b.astype(np.float64) @ a, avg_of_products, rtol=1e-5, atol=1e-5)


def test_fedavg_mode_is_not_exact_for_products() -> None:
    """Sanity: the property above is specific to a shared A (it fails for averaged A and B)."""
    rng = np.random.default_rng(0)
    a1, a2 = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    b1, b2 = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    assert not np.allclose(((b1 + b2) / 2) @ ((a1 + a2) / 2), (b1 @ a1 + b2 @ a2) / 2)


def test_initial_state_is_deterministic_per_seed_and_b_is_zero() -> None:
    shapes = {"x.lora_A.weight": (4, 16), "x.lora_B.weight": (16, 4)}
    s1, s2 = initial_adapter_state(shapes, seed=3), initial_adapter_state(shapes, seed=3)
    s3 = initial_adapter_state(shapes, seed=4)
    np.testing.assert_array_equal(s1["x.lora_A.weight"], s2["x.lora_A.weight"])
    assert not np.array_equal(s1["x.lora_A.weight"], s3["x.lora_A.weight"])
    assert np.all(np.abs(s1["x.lora_A.weight"]) <= 0.25)
    assert not s1["x.lora_B.weight"].any()
    assert trainable_keys(list(shapes), "frozen-a") == ["x.lora_B.weight"]
    assert trainable_keys(list(shapes), "fedavg") == sorted(shapes)


def test_check_state_refuses_missing_unexpected_wrong_shape_and_nan() -> None:
    shapes = {"a.lora_A.weight": (2, 3)}
    good = {"a.lora_A.weight": np.zeros((2, 3), np.float32)}
    check_state(good, shapes)
    with pytest.raises(AdapterError, match="missing"):
        check_state({}, shapes)
    with pytest.raises(AdapterError, match="unexpected"):
        check_state({**good, "b": np.zeros(1, np.float32)}, shapes)
    with pytest.raises(AdapterError, match="shape"):
        check_state({"a.lora_A.weight": np.zeros((3, 2), np.float32)}, shapes)
    with pytest.raises(AdapterError, match="dtype"):
        check_state({"a.lora_A.weight": np.zeros((2, 3), np.float64)}, shapes)
    with pytest.raises(AdapterError, match="NaN"):
        check_state({"a.lora_A.weight": np.full((2, 3), np.nan, np.float32)}, shapes)


def _site(tiny_model: Path):  # type: ignore[no-untyped-def]
    return load_site_model(str(tiny_model), device=torch.device("cpu"), r=4, alpha=8,
                           dropout=0.0, target_modules=["q_proj", "v_proj"])


def test_meta_device_shapes_match_loaded_model(tiny_model: Path) -> None:
    cfg = lora_config(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"],
                      base_model=str(tiny_model))
    assert adapter_shapes(str(tiny_model), cfg) == _site(tiny_model).shapes


def test_set_adapter_state_checks_keys_and_freezes_a(tiny_model: Path) -> None:
    site = _site(tiny_model)
    state = initial_adapter_state(site.shapes, seed=1)
    set_adapter_state(site, state, aggregation="frozen-a")
    got = get_adapter_state(site)
    for k in state:
        np.testing.assert_array_equal(got[k], state[k])
    trainable = {n for n, p in site.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_B" in n for n in trainable)
    set_adapter_state(site, state, aggregation="fedavg")
    assert any("lora_A" in n for n, p in site.model.named_parameters() if p.requires_grad)
    bad = dict(state)
    bad.pop(sorted(bad)[0])
    with pytest.raises(AdapterError, match="missing"):
        set_adapter_state(site, bad, aggregation="fedavg")
    with pytest.raises(AdapterError, match="unexpected"):
        set_adapter_state(site,
                          {**state, "base_model.extra.lora_B.weight": state[sorted(state)[0]]},
                          aggregation="fedavg")


def test_saved_adapter_loads_with_peft_and_reproduces_outputs(tiny_model: Path,
                                                               tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    site = _site(tiny_model)
    rng = np.random.default_rng(0)
    state = {k: rng.normal(scale=0.1, size=s).astype(np.float32) for k, s in site.shapes.items()}
    set_adapter_state(site, state, aggregation="fedavg")
    cfg = lora_config(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"],
                      base_model=str(tiny_model))
    save_adapter_dir(tmp_path / "adapter", state, cfg)
    save_adapter_dir(tmp_path / "adapter", state, cfg)  # overwrite is atomic and works
    loaded_state, meta = load_adapter_dir(tmp_path / "adapter")
    assert meta["r"] == 4 and sorted(meta["target_modules"]) == ["q_proj", "v_proj"]
    for k in state:
        np.testing.assert_array_equal(loaded_state[k], state[k])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        a = peft_model(input_ids=ids).logits
        b = site.model(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_apply_delta_updates_only_named_tensors() -> None:
    state = {"x.lora_A.weight": np.ones((2, 2), np.float32),
             "x.lora_B.weight": np.zeros((2, 2), np.float32)}
    out = apply_delta(state, {"x.lora_B.weight": np.full((2, 2), 0.5, np.float32)})
    np.testing.assert_array_equal(out["x.lora_A.weight"], state["x.lora_A.weight"])
    np.testing.assert_array_equal(out["x.lora_B.weight"], np.full((2, 2), 0.5))
    assert is_lora_a("x.lora_A.weight") and not is_lora_a("x.lora_B.weight")
    with pytest.raises(AdapterError):
        apply_delta(state, {"y": np.zeros(1, np.float32)})
