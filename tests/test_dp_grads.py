"""Correctness guard for DP-SGD on LoRA (opacus#820) and the DP training wiring.

Per-example gradients of the LoRA parameters computed through Opacus must equal those of
single-example backward passes, and the clipped, aggregated gradient (noise 0) must equal
the one computed by hand from them -- for a GPT-2-style and a Llama-style model, and for
the embedded checkpoint when it is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from privacy.dp_sgd import (
    PoissonSampler,
    dp_train_steps,
    make_private,
    secure_gaussian,
    sequence_losses,
)
from privacy.policy import PolicyError

VOCAB = 97


def _lora(model: Any, targets: list[str], **extra: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=targets, **extra))
    with torch.no_grad():  # B starts at 0; give it values so every LoRA grad is non-trivial
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    return peft_model


def gpt2_model() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    return _lora(GPT2LMHeadModel(cfg), ["c_attn"], fan_in_fan_out=True)


def llama_model() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32, bos_token_id=0, eos_token_id=0)
    return _lora(LlamaForCausalLM(cfg), ["q_proj", "v_proj"])


def embedded_model() -> Any:
    from protocol.model_ref import ModelError, embedded_model_dir

    try:
        path = embedded_model_dir()
    except ModelError:
        pytest.skip("the embedded checkpoint (client/embedded) is not built yet")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return _lora(base, ["q_proj", "v_proj"])


MODELS: dict[str, Callable[[], Any]] = {
    "gpt2": gpt2_model, "llama": llama_model, "embedded": embedded_model,
}


def _batch(vocab: int, batch: int = 5, seq: int = 12) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[3, 5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[2, :4] = -100  # a prompt that carries no loss
    return ids, mask, labels


def _trainable(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _single_example_grads(model: Any, ids: torch.Tensor, mask: torch.Tensor,
                          labels: torch.Tensor) -> list[list[torch.Tensor]]:
    params = _trainable(model)
    grads = []
    for i in range(ids.shape[0]):
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1])
        sequence_losses(out.logits, labels[i:i + 1]).sum().backward()
        grads.append([p.grad.detach().clone() for p in params])
    model.zero_grad(set_to_none=True)
    return grads


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_batch(request: pytest.FixtureRequest) -> tuple[Any, tuple[torch.Tensor, ...],
                                                             list[list[torch.Tensor]]]:
    model = MODELS[request.param]()
    model.train()
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = _batch(vocab)
    return model, batch, _single_example_grads(model, *batch)


def test_only_lora_parameters_train(model_and_batch: Any) -> None:
    model, _, _ = model_and_batch
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_opacus_per_example_lora_grads_equal_single_example_backward(
        model_and_batch: Any) -> None:
    model, (ids, mask, labels), reference = model_and_batch
    params = _trainable(model)
    opt = torch.optim.SGD(params, lr=0.0)
    private = make_private(model, opt, (ids, mask, labels), sample_rate=0.5,
                           noise_multiplier=0.0, max_grad_norm=1.0)
    try:
        private.optimizer.zero_grad(set_to_none=True)
        out = private.module(input_ids=ids, attention_mask=mask)
        private.loss(out.logits, labels).backward()
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert all(getattr(p, "grad_sample", None) is None and p.grad is None for p in frozen)
        for j, p in enumerate(params):
            assert p.grad_sample.shape == (ids.shape[0], *p.shape)
            for i in range(ids.shape[0]):
                torch.testing.assert_close(p.grad_sample[i], reference[i][j],
                                           rtol=1e-4, atol=1e-6)
    finally:
        private.close()


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_clipped_aggregated_grads_match_hand_computation(model_and_batch: Any,
                                                         mode: str) -> None:
    model, (ids, mask, labels), reference = model_and_batch
    params = _trainable(model)
    norms = [math.sqrt(sum(float((g**2).sum()) for g in per)) for per in reference]
    clip = sorted(norms)[len(norms) // 2]  # clips about half of the examples
    q = 0.5
    expected = [
        sum(min(1.0, clip / (norms[i] + 1e-6)) * reference[i][j] for i in range(len(norms)))
        / (q * ids.shape[0])
        for j in range(len(params))
    ]
    private = make_private(model, torch.optim.SGD(params, lr=0.0), (ids, mask, labels),
                           sample_rate=q, noise_multiplier=0.0, max_grad_norm=clip,
                           grad_sample_mode=mode)
    try:
        private.optimizer.zero_grad(set_to_none=True)
        out = private.module(input_ids=ids, attention_mask=mask)
        private.loss(out.logits, labels).backward()
        private.optimizer.pre_step()  # clip, add noise (0), scale by 1 / (q n)
        for j, p in enumerate(params):
            torch.testing.assert_close(p.grad, expected[j], rtol=1e-4, atol=1e-7)
    finally:
        private.close()


def test_sequence_loss_is_a_per_sequence_mean_over_labelled_tokens() -> None:
    logits = torch.randn(3, 5, 7)
    labels = torch.tensor([[1, 2, 3, 4, 5], [1, 2, -100, -100, -100], [6, -100, -100, -100, -100]])
    losses = sequence_losses(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    first = -sum(float(logp[0, t, labels[0, t + 1]]) for t in range(4)) / 4
    second = -float(logp[1, 0, 2])
    assert losses.shape == (3,)
    assert float(losses[0]) == pytest.approx(first, rel=1e-5)
    assert float(losses[1]) == pytest.approx(second, rel=1e-5)
    assert float(losses[2]) == 0.0  # nothing to predict


def _noise_only_update(secure: bool, mode: str) -> tuple[float, float]:
    model = llama_model()
    params = _trainable(model)
    before = torch.cat([p.detach().flatten().clone() for p in params])
    n, q, sigma, clip = 200, 0.05, 2.0, 0.5
    ids = torch.randint(0, VOCAB, (n, 8))
    private = make_private(model, torch.optim.SGD(params, lr=1.0), (ids,), sample_rate=q,
                           noise_multiplier=sigma, max_grad_norm=clip, secure_mode=secure,
                           grad_sample_mode=mode)
    assert private.step([]) is None  # an empty Poisson batch still takes a (noise) step
    private.close()
    delta = torch.cat([p.detach().flatten() for p in params]) - before
    return float(delta.std()), sigma * clip / (q * n)


@pytest.mark.parametrize(("secure", "mode"), [(False, "hooks"), (True, "hooks"),
                                             (False, "ghost"), (True, "ghost")])
def test_empty_batch_step_adds_noise_of_std_sigma_c_over_qn(secure: bool, mode: str) -> None:
    measured, expected = _noise_only_update(secure, mode)
    assert measured == pytest.approx(expected, rel=0.1)


def test_secure_gaussian_has_the_requested_moments() -> None:
    x = secure_gaussian(3.0, torch.empty(200_000))
    assert abs(float(x.mean())) < 0.05
    assert float(x.std()) == pytest.approx(3.0, rel=0.02)
    assert torch.equal(secure_gaussian(0.0, torch.ones(4)), torch.zeros(4))


@pytest.mark.parametrize("secure", [False, True])
def test_poisson_sampler_draws_at_the_given_rate(secure: bool) -> None:
    sampler = PoissonSampler(1000, sample_rate=0.02, secure=secure,
                             generator=None if secure else torch.Generator().manual_seed(0))
    sizes = [len(sampler.draw()) for _ in range(300)]
    assert sum(sizes) / len(sizes) == pytest.approx(20.0, rel=0.1)
    assert len(set(sizes)) > 3  # variable batch sizes, as Poisson sampling gives


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_training_without_noise_lowers_the_loss_and_close_restores_the_model(mode: str) -> None:
    model = llama_model()
    params = _trainable(model)
    ids = torch.randint(0, VOCAB, (8, 10), generator=torch.Generator().manual_seed(3))
    private = make_private(model, torch.optim.Adam(params, lr=3e-2), (ids,), sample_rate=1.0,
                           noise_multiplier=0.0, max_grad_norm=10.0, grad_sample_mode=mode)
    first = dp_train_steps(private, steps=1)
    last = dp_train_steps(private, steps=15)
    plain = private.close()
    assert last < first
    assert plain is model
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    with torch.no_grad():
        after = float(sequence_losses(model(input_ids=ids).logits, ids).mean())
    assert after < first
    # a fresh wrapper on the same model (a new round) works again
    again = make_private(model, torch.optim.SGD(params, lr=0.0), (ids,), sample_rate=0.5,
                         noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
    assert math.isfinite(dp_train_steps(again, steps=2))
    again.close()


def test_seeded_generator_makes_training_reproducible() -> None:
    def run() -> torch.Tensor:
        model = llama_model()
        ids = torch.randint(0, VOCAB, (20, 8), generator=torch.Generator().manual_seed(0))
        private = make_private(model, torch.optim.SGD(_trainable(model), lr=0.1), (ids,),
                               sample_rate=0.2, noise_multiplier=1.0, max_grad_norm=1.0,
                               generator=torch.Generator().manual_seed(42))
        dp_train_steps(private, steps=3)
        private.close()
        return torch.cat([p.detach().flatten() for p in _trainable(model)])

    assert torch.equal(run(), run())


def test_examples_with_collate_fn_are_accepted() -> None:
    model = llama_model()
    examples = [list(range(1, 3 + i)) for i in range(6)]

    def collate(batch: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(b) for b in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, b in enumerate(batch):
            ids[row, :len(b)] = torch.tensor(b)
            mask[row, :len(b)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": ids.masked_fill(mask == 0, -100)}

    private = make_private(model, torch.optim.SGD(_trainable(model), lr=0.1), examples,
                           sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0,
                           collate_fn=collate, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(dp_train_steps(private, steps=3))
    assert private.steps_taken == 3
    private.close()


def test_bad_wiring_is_refused() -> None:
    model = llama_model()
    ids = torch.randint(0, VOCAB, (4, 6))
    everything = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="exactly the model's trainable parameters"):
        make_private(model, everything, (ids,), sample_rate=0.5, noise_multiplier=1.0,
                     max_grad_norm=1.0)
    opt = torch.optim.SGD(_trainable(model), lr=0.1)
    open_one = make_private(model, opt, (ids,), sample_rate=0.5, noise_multiplier=1.0,
                            max_grad_norm=1.0)
    with pytest.raises(ValueError, match="still wrapped"):
        make_private(model, opt, (ids,), sample_rate=0.5, noise_multiplier=1.0,
                     max_grad_norm=1.0)
    open_one.close()
    with pytest.raises(PolicyError, match="`sample_rate`"):
        make_private(model, opt, (ids,), sample_rate=0.0, noise_multiplier=1.0,
                     max_grad_norm=1.0)
    with pytest.raises(PolicyError, match="`max_grad_norm`"):
        make_private(model, opt, (ids,), sample_rate=0.5, noise_multiplier=1.0,
                     max_grad_norm=0.0)
    with pytest.raises(PolicyError, match="`grad_sample_mode`"):
        make_private(model, opt, (ids,), sample_rate=0.5, noise_multiplier=1.0,
                     max_grad_norm=1.0, grad_sample_mode="ew")
    with pytest.raises(PolicyError, match="secure mode"):
        make_private(model, opt, (ids,), sample_rate=0.5, noise_multiplier=1.0,
                     max_grad_norm=1.0, secure_mode=True, generator=torch.Generator())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_example_grads_on_cuda_match_cpu_reference() -> None:
    model = llama_model()
    ids, mask, labels = _batch(VOCAB)
    reference = _single_example_grads(model, ids, mask, labels)
    model.to("cuda")
    params = _trainable(model)
    private = make_private(model, torch.optim.SGD(params, lr=0.0), (ids, mask, labels),
                           sample_rate=0.5, noise_multiplier=0.0, max_grad_norm=1.0,
                           generator=torch.Generator().manual_seed(0))
    out = private.module(input_ids=ids.cuda(), attention_mask=mask.cuda())
    private.loss(out.logits, labels.cuda()).backward()
    for j, p in enumerate(params):
        for i in range(ids.shape[0]):
            torch.testing.assert_close(p.grad_sample[i].cpu(), reference[i][j],
                                       rtol=1e-3, atol=1e-5)
    assert math.isfinite(dp_train_steps(private, steps=2))
    private.close()
