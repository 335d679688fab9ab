"""Frozen weights stored at the autocast dtype compute exactly what autocast computed; the slow-CPU warning."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

import alignment.core.precision as precision
from alignment.core.precision import (
    autocast_dtype,
    head_weight,
    store_frozen_weights_in,
    tied_head_copy,
    warn_if_slow_on_cpu,
)
from tests.helpers import tiny_llama_config


def tiny_llama(tied: bool) -> torch.nn.Module:
    return LlamaForCausalLM(tiny_llama_config(128, tie_word_embeddings=tied))


def tiny_gpt2() -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=64))


def lora_model(base: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    for name, param in model.named_parameters():  # a trained-looking adapter, so its path is not a zero
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model.eval()  # no dropout: both passes must see the same function


def logits_and_lora_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits.float()
    logits.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


# Frozen linear parameters by hand: Llama layer q 64x64 + k, v 32x64 + o 64x64 + gate, up 128x64 + down 64x128
# = 36,864 (no biases), x2 layers, + an untied LM head 128x64; GPT-2 layer c_attn 64x192+192 + c_proj 64x64+64
# + c_fc 64x128+128 + mlp c_proj 128x64+64 = 33,216, x2 (its LM head is tied to the embeddings).
@pytest.mark.parametrize(
    ("make_base", "frozen_linear"),
    [(lambda: tiny_llama(tied=True), 73_728), (lambda: tiny_llama(tied=False), 81_920), (tiny_gpt2, 66_432)],
)
def test_frozen_base_in_bf16_gives_autocasts_logits_and_gradients_exactly(make_base, frozen_linear):
    torch.manual_seed(0)
    model = lora_model(make_base())
    ids = torch.randint(0, 128, (2, 12))
    before_logits, before_grads = logits_and_lora_grads(model, ids)
    converted = store_frozen_weights_in(model, torch.bfloat16)

    after_logits, after_grads = logits_and_lora_grads(model, ids)
    assert torch.equal(after_logits, before_logits)
    assert after_grads.keys() == before_grads.keys()
    for name, grad in after_grads.items():
        assert torch.equal(grad, before_grads[name]), name
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert all(dtypes[name] == torch.float32 for name in dtypes if "lora_" in name)  # adapters stay fp32
    assert all(dtypes[name] == torch.float32 for name in dtypes if "norm" in name or "ln_" in name)
    embeddings = model.get_input_embeddings().weight
    assert embeddings.dtype == torch.float32
    lm_head = model.get_output_embeddings().weight
    tied = lm_head is embeddings
    assert lm_head.dtype == (torch.float32 if tied else torch.bfloat16)
    assert converted == frozen_linear


@pytest.mark.parametrize("make_base", [lambda: tiny_llama(tied=True), tiny_gpt2])
def test_tied_head_copy_gives_autocasts_logits_exactly_and_the_tie_comes_back(make_base):
    torch.manual_seed(0)
    model = lora_model(make_base())
    store_frozen_weights_in(model, torch.bfloat16)
    base = model.get_base_model()
    ids = torch.randint(0, 128, (2, 12))
    copy = tied_head_copy(base, torch.bfloat16)
    assert copy is not None and copy.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast_each_call = model(input_ids=ids).logits
        with head_weight(base.get_output_embeddings(), copy):
            assert base.get_output_embeddings().weight.dtype == torch.bfloat16
            with_copy = model(input_ids=ids).logits
    assert torch.equal(with_copy, cast_each_call)
    with pytest.raises(RuntimeError), head_weight(base.get_output_embeddings(), copy):
        raise RuntimeError("a failed generation")
    embeddings = base.get_input_embeddings().weight
    assert base.get_output_embeddings().weight is embeddings and embeddings.dtype == torch.float32


def test_no_head_copy_for_untied_trained_or_already_low_precision_heads():
    assert tied_head_copy(tiny_llama(tied=False), torch.bfloat16) is None  # converted in place instead
    assert tied_head_copy(tiny_llama(tied=True), torch.bfloat16) is None  # full fine-tuning trains the rows
    frozen = tiny_llama(tied=True).requires_grad_(False)
    assert tied_head_copy(frozen, torch.bfloat16) is not None
    assert tied_head_copy(frozen.to(torch.bfloat16), torch.bfloat16) is None


def test_trained_and_quantized_weights_are_left_alone():
    torch.manual_seed(0)
    model = tiny_llama(tied=True)  # full fine-tuning: every weight trains
    assert store_frozen_weights_in(model, torch.bfloat16) == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    class QuantizedLinear(torch.nn.Linear):  # bitsandbytes layers subclass nn.Linear
        pass

    layer = QuantizedLinear(4, 4).requires_grad_(False)
    assert store_frozen_weights_in(torch.nn.Sequential(layer), torch.bfloat16) == 0


def test_autocast_dtype_reads_accelerates_setting():
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("no") is None


def test_bf16_on_a_cpu_without_native_bf16_warns_and_names_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_fast", lambda dtype: False)
    with caplog.at_level(logging.WARNING, logger="alignment.core.precision"):
        assert warn_if_slow_on_cpu("bf16", torch.device("cpu"))
    assert "without native bf16" in caplog.text and "bf16: false" in caplog.text
    assert not warn_if_slow_on_cpu("no", torch.device("cpu"))
    assert not warn_if_slow_on_cpu("bf16", torch.device("cuda"))
    monkeypatch.setattr(precision, "cpu_has_fast", lambda dtype: True)
    assert not warn_if_slow_on_cpu("bf16", torch.device("cpu"))


@pytest.mark.parametrize("gpu_has_bf16", [True, False])
@pytest.mark.parametrize("cpu_has_amx", [True, False])
def test_bf16_auto_is_yes_on_a_gpu_with_bf16_and_on_a_cpu_with_amx(monkeypatch, gpu_has_bf16, cpu_has_amx):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: cpu_has_amx)
    assert precision.resolve_bf16("auto") is cpu_has_amx  # a CPU: bf16 only where AMX makes it pay
    assert precision.resolve_bf16(True) is True and precision.resolve_bf16(False) is False  # an explicit choice stays
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: gpu_has_bf16)
    assert precision.resolve_bf16("auto") is gpu_has_bf16
    assert precision.resolve_bf16("auto", cpu=True) is cpu_has_amx  # a run forced onto the CPU
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: no AMX assumed
    assert precision.resolve_bf16("auto", cpu=True) is False


def test_flat_rows_are_rounded_only_under_low_precision_autocast_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.flat_row_multiple("bf16", cpu) == precision.flat_row_multiple("fp16", cpu) == 64
    assert precision.flat_row_multiple("no", cpu) == precision.flat_row_multiple("bf16", cuda) == 1


def test_stages_in_one_process_each_get_their_own_precision():
    """The pipeline runs its stages in one process: a bf16 stage neither leaks into the next nor is refused after an
    fp32 one (accelerate keeps one setting per process)."""
    from alignment.core.run import make_accelerator

    settings = [make_accelerator(bf16=choice).mixed_precision for choice in (False, True, False, True)]
    assert settings == ["no", "bf16", "no", "bf16"]
