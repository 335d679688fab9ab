"""Each configs/models/*.yaml recipe loads its model family with its LoRA targets and takes an SFT step.

Nothing is downloaded: every recipe gets a tiny random model (2 layers, hidden 64) built from its
family's config class and saved with a tokenizer to a temporary directory, which replaces the recipe's
``model_name_or_path``. Instruct-model recipes get the embedded default's tokenizer (it ships a chat
template, like the real ones); recipes that set ``chat_template`` (base models: GPT-2, Pythia) get a
GPT-2-style byte-level BPE tokenizer with ``<|endoftext|>`` as bos/eos/unk and no pad token or template,
so the ChatML tokens, the pad token and the embedding resize all happen as they would on the real model.
The Gemma recipe (``chat_template: gemma``) gets the same BPE with Gemma's special tokens already in the
vocabulary (``<bos>``, ``<eos>``, ``<pad>``, ``<start_of_turn>``, ``<end_of_turn>``) and no template, as the base
model's GGUF tokenizer has them.
Recipes are combined with configs/sft.yaml's keys, as the documented ``alignment sft`` command does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
)

from alignment.core.config import Config
from alignment.core.config_parsing import build_config, load_yaml
from alignment.data.chat_template import template_turn_tokens
from tests.conftest import REPO_ROOT, assert_params_changed, trainable_snapshot

MODEL_RECIPES = sorted((REPO_ROOT / "configs" / "models").glob("*.yaml"))
EIGHT_BIT_RECIPE = "qwen2.5-0.5b"  # the one recipe also loaded in 8-bit (bitsandbytes runs int8 on the CPU)
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
# Two short demonstrations (one multi-turn with a system prompt): the 49k-row lm_head dominates the CPU time.
DEMONSTRATIONS = [
    MESSAGES,
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6."},
    ],
    [  # long enough that the two short ones share a packed row of its length
        {"role": "user", "content": "Describe a harbour at dawn."},
        {"role": "assistant", "content": "Gulls circle above the quiet water while the fishing boats " * 8},
    ],
]


def tiny_family_config(model_id: str, tokenizer) -> PretrainedConfig:
    """The recipe's architecture at 2 layers / hidden 64, chosen from its Hub id."""
    name = model_id.lower()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    vocab = len(tokenizer)
    if "gpt2" in name:
        return GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=1024, **ids)
    if "pythia" in name or "neox" in name:
        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
            tie_word_embeddings=False,  # Pythia's embed_out is its own matrix
            **ids,
        )
    llama_like = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,  # as in Llama-3.2-1B, Qwen2.5-0.5B and SmolLM2
        **ids,
    }
    if "qwen2" in name:
        return Qwen2Config(**llama_like)
    if "gemma3" in name or "gemma-3" in name:
        # Gemma 3's pattern at 2 layers: a sliding-window layer (window 4, shorter than the test's sequences)
        # and a full-attention one; head_dim is its own setting in Gemma.
        gemma = {k: v for k, v in llama_like.items() if k != "max_position_embeddings"}
        return Gemma3TextConfig(
            **gemma,
            head_dim=16,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
        )
    if "llama" in name or "smollm" in name:
        return LlamaConfig(**llama_like)
    pytest.fail(f"no tiny config for the family of {model_id}: add its config class to tiny_family_config()")


def demonstrations():
    from data_schemas.records import Demonstration, make_messages

    return [Demonstration(make_messages(messages, "messages")).validate() for messages in DEMONSTRATIONS]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a few shared cores, every tiny matmul waits for the intra-op thread pool (~20 ms instead of 0.1 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def instruct_tokenizer(embedded_dir):
    """The embedded default's tokenizer as shipped (ChatML template, pad == eos), not yet fixed by load_tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


@pytest.fixture(scope="module")
def base_model_tokenizer():
    """GPT-2 / Pythia style: byte-level BPE, ``<|endoftext|>`` as bos/eos/unk, no pad token, no chat template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = [m["content"] for messages in DEMONSTRATIONS for m in messages] * 2
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"])
    end = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=end, eos_token=end, unk_token=end)
    assert tokenizer.pad_token is None and not tokenizer.chat_template
    return tokenizer


@pytest.fixture(scope="module")
def gemma_base_tokenizer():
    """Gemma base style: its special tokens in the vocabulary, ``<bos>``/``<eos>``/``<pad>``, no chat template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    texts = [m["content"] for messages in DEMONSTRATIONS for m in messages] * 2
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=2, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    assert not tokenizer.chat_template
    return tokenizer


@pytest.fixture(scope="module")
def recipe_model_dir(tmp_path_factory, instruct_tokenizer, base_model_tokenizer, gemma_base_tokenizer):
    """``recipe path -> directory`` with a tiny random model of the recipe's family and its tokenizer."""
    built: dict[Path, Path] = {}

    def build(path: Path) -> Path:
        if path not in built:
            data, _ = load_yaml(path)
            tokenizer = {"chatml": base_model_tokenizer, "gemma": gemma_base_tokenizer}.get(
                data.get("chat_template"), instruct_tokenizer
            )
            out = tmp_path_factory.mktemp(path.stem)
            torch.manual_seed(0)
            config = tiny_family_config(data["model_name_or_path"], tokenizer)
            AutoModelForCausalLM.from_config(config).save_pretrained(out)
            tokenizer.save_pretrained(out)
            built[path] = out
        return built[path]

    return build


def recipe_config(path: Path, model_dir: Path, load_in_8bit: bool = False) -> Config:
    """configs/sft.yaml + the model recipe (as the documented command gives them), on the tiny model, on the CPU."""
    from alignment.sft import CONFIG_TYPES

    sft_data, _ = load_yaml(REPO_ROOT / "configs" / "sft.yaml")
    model_data, _ = load_yaml(path)
    overrides = {"model_name_or_path": str(model_dir), "load_in_8bit": load_in_8bit, "load_in_4bit": False}
    return build_config(CONFIG_TYPES, {**sft_data, **model_data, **overrides})


def lora_modules(model) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A")}


def sft_batch(cfg: Config, tokenizer, padding_free: bool, flat_rows: bool = False):
    from alignment.sft import sft_loop_spec, tokenize_demonstrations

    examples, rejected, _ = tokenize_demonstrations(tokenizer, demonstrations(), cfg.train.max_length, cfg.sft.train_on)
    assert len(examples) == 3, f"demonstrations rejected: {dict(rejected)}"
    spec = sft_loop_spec(tokenizer, padding_free, flat_rows=flat_rows)
    return spec, spec.collate_fn(examples), examples


def assert_padding_free_loss_equals_padded_loss(model, cfg: Config, tokenizer) -> None:
    """Packed rows restart ``position_ids`` per example; the family's attention must keep the examples apart.

    Rows ("rows"): transformers turns the restarts into a block-diagonal mask. One flat row ("flat"):
    the loader switched the family to ``sdpa_varlen``, which attends within the given boundaries.
    """
    from alignment.modeling.attention import supports_flat_packing

    assert supports_flat_packing(model), "every recipe family should run varlen SDPA"
    losses = {}
    model.eval()
    with torch.no_grad():
        for layout in ("padded", "rows", "flat"):
            spec, batch, _ = sft_batch(cfg, tokenizer, layout != "padded", flat_rows=layout == "flat")
            if layout != "padded":  # a row holds two examples, so the mask between them is what is tested
                assert max(int((row == 0).sum()) for row in batch["position_ids"]) >= 2
            loss_sum, _ = spec.loss_fn(model, batch)
            losses[layout] = float(loss_sum / spec.count_fn(batch))
    model.train()
    assert losses["rows"] == pytest.approx(losses["padded"], rel=1e-5), losses
    assert losses["flat"] == pytest.approx(losses["padded"], rel=1e-5), losses


CASES = [pytest.param(p, False, id=p.stem) for p in MODEL_RECIPES] + [
    pytest.param(p, True, id=f"{p.stem}-8bit") for p in MODEL_RECIPES if p.stem == EIGHT_BIT_RECIPE
]


def test_every_recipe_is_covered():
    assert len(MODEL_RECIPES) >= 5 and any(p.stem == EIGHT_BIT_RECIPE for p in MODEL_RECIPES)


@pytest.mark.parametrize(("path", "load_in_8bit"), CASES)
def test_recipe_lora_targets_match_and_an_sft_step_trains_them(path, load_in_8bit, recipe_model_dir):
    from alignment.modeling.load import load_causal_lm
    from alignment.modeling.tokenizer import load_tokenizer

    cfg = recipe_config(path, recipe_model_dir(path), load_in_8bit)
    tokenizer = load_tokenizer(cfg.model, require_chat_template=True)
    model = load_causal_lm(cfg.model, cfg.lora, cfg.quant, tokenizer=tokenizer, device="cpu")
    embedding = model.get_input_embeddings()
    embedding = getattr(embedding, "original_module", embedding)  # peft's trainable-tokens wrapper, when there is one
    assert embedding.num_embeddings >= len(tokenizer)

    targets = cfg.lora.lora_target_modules
    adapted = lora_modules(model)
    unmatched = [t for t in targets if not any(name.rsplit(".", 1)[-1] == t for name in adapted)]
    assert not unmatched, f"{path.name}: lora_target_modules {unmatched} match no module of the family"
    assert {name.rsplit(".", 1)[-1] for name in adapted} == set(targets)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "trainable_tokens_delta" in name for name in trainable), trainable[:5]
    # Only base models given a template train embedding rows: ChatML's added tokens, Gemma's unused turn tokens.
    assert any("trainable_tokens_delta" in name for name in trainable) == bool(cfg.model.chat_template)
    if load_in_8bit:
        assert {type(m.base_layer).__name__ for m in adapted.values()} == {"Linear8bitLt"}

    spec, batch, _ = sft_batch(cfg, tokenizer, cfg.sft.padding_free)
    if not load_in_8bit:  # configs/sft.yaml packs batches: the family's attention must keep the examples apart
        assert_padding_free_loss_equals_padded_loss(model, cfg, tokenizer)
    before = trainable_snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_sum, _ = spec.loss_fn(model, batch)
    loss = loss_sum / spec.count_fn(batch)
    assert torch.isfinite(loss), loss
    loss.backward()
    optimizer.step()
    assert_params_changed(before, model, "lora_B")  # B starts at zero, so A gets no gradient on step one


TEMPLATE_RECIPES = [p for p in MODEL_RECIPES if load_yaml(p)[0].get("chat_template")]
# What each built-in template renders for one user turn, and the token that ends an assistant turn.
TEMPLATE_FORMS = {
    "chatml": ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"),
    "gemma": ("<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>"),
}


@pytest.mark.parametrize("path", TEMPLATE_RECIPES, ids=lambda p: p.stem)
def test_base_model_recipe_gets_a_working_chat_template_and_learns_to_end_its_turn(path, recipe_model_dir):
    """A base model ships no template: the recipe's one renders turns, and SFT learns the token that ends them.

    ChatML adds its two tokens and makes <|im_end|> the EOS; Gemma's tokens are already in its vocabulary, and its
    <end_of_turn> is not the EOS, so the one stop rule must find it in the template.
    """
    from alignment.core.config import ModelConfig
    from alignment.modeling.sources import ModelLoadError
    from alignment.modeling.tokenizer import load_tokenizer, stop_token_ids

    model_dir = recipe_model_dir(path)
    with pytest.raises(ModelLoadError, match="chat_template"):  # why the recipe sets it
        load_tokenizer(ModelConfig(model_name_or_path=str(model_dir)), require_chat_template=True)

    cfg = recipe_config(path, model_dir)
    expected_prompt, end_token = TEMPLATE_FORMS[cfg.model.chat_template]
    tokenizer = load_tokenizer(cfg.model, require_chat_template=True)
    prompt = tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == expected_prompt
    full = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert full.startswith(prompt) and full.endswith(f"Hello! How can I help?{end_token}\n")
    assert tokenizer.tokenize(end_token) == [end_token], f"{end_token} must be one token"
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    assert end_id in stop_token_ids(tokenizer)
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id, end_id)
    if cfg.model.chat_template == "chatml":
        assert tokenizer.eos_token == "<|im_end|>" and tokenizer.tokenize("<|im_start|>") == ["<|im_start|>"]
    else:  # nothing added: the vocabulary (and so the embedding) keeps its size
        from transformers import AutoTokenizer

        assert end_id != tokenizer.eos_token_id and len(tokenizer) == len(AutoTokenizer.from_pretrained(model_dir))

    # The turn tokens' embedding rows are trained (a base model never used them; lora.trainable_token_targets).
    from alignment.modeling.load import load_causal_lm
    from alignment.modeling.lora import trainable_token_targets

    model = load_causal_lm(cfg.model, dataclasses.replace(cfg.lora, use_lora=False), cfg.quant, tokenizer=tokenizer)
    trained_ids = next(iter(trainable_token_targets(model, "CAUSAL_LM").values()))  # the input embedding's rows
    assert end_id in trained_ids and tokenizer.bos_token_id not in trained_ids

    # SFT learns every assistant turn up to and including its end token (the system message rides along).
    _, _, examples = sft_batch(cfg, tokenizer, padding_free=True)
    assert [len(e.target_spans) for e in examples] == [1, 2, 1]
    for example in examples:
        for start, end in example.target_spans:
            assert example.labels[end - 1] == end_id, tokenizer.decode(example.input_ids[start:end])


def token_rows(model, ids: list[int]) -> dict[str, torch.Tensor]:
    """The effective input and output embedding rows of ``ids`` (peft's trainable tokens applied)."""
    with torch.no_grad():
        inputs = model.get_input_embeddings()(torch.tensor([ids]))[0]
        outputs = model.get_output_embeddings()(torch.eye(inputs.shape[-1]))[:, ids].T
    return {"input": inputs.clone(), "output": outputs.clone()}


@pytest.mark.parametrize("path", TEMPLATE_RECIPES, ids=lambda p: p.stem)
def test_turn_token_rows_are_trained_under_lora_and_survive_save_load_merge_and_ppo(path, recipe_model_dir, tmp_path):
    """ChatML's added <|im_start|>/<|im_end|> start as the same mean row, and Gemma's <end_of_turn> row was never
    trained in pretraining; LoRA alone would never train either."""
    from peft import PeftModel

    from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
    from alignment.modeling.export import merge_and_export
    from alignment.modeling.load import load_causal_lm
    from alignment.modeling.stage_dir import save_stage_model
    from alignment.modeling.tokenizer import load_tokenizer
    from alignment.ppo.adapters import POLICY, SFT, copy_adapter, use_adapter

    cfg = recipe_config(path, recipe_model_dir(path))
    tokenizer = load_tokenizer(cfg.model, require_chat_template=True)
    model = load_causal_lm(cfg.model, cfg.lora, cfg.quant, tokenizer=tokenizer, device="cpu", dropout=False)
    chat_ids = tokenizer.convert_tokens_to_ids(template_turn_tokens(tokenizer))
    assert len(chat_ids) == 2, template_turn_tokens(tokenizer)  # the turn's start and end tokens
    before = token_rows(model, chat_ids)
    pad_before = token_rows(model, [tokenizer.pad_token_id])
    if cfg.model.chat_template == "chatml":
        for side in ("input", "output"):
            assert torch.equal(before[side][0], before[side][1]), "new rows start equal (the mean embedding)"

    spec, batch, _ = sft_batch(cfg, tokenizer, padding_free=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss_sum, _ = spec.loss_fn(model, batch)
        (loss_sum / spec.count_fn(batch)).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = token_rows(model, chat_ids)
    for side in ("input", "output"):  # the output rows are tied to the input (GPT-2) or their own (Pythia)
        assert not torch.equal(after[side][0], after[side][1]), f"{side} rows of the turn tokens did not train apart"
        assert not torch.equal(after[side][1], before[side][1]), f"{side} row of the end-of-turn token did not train"
    pad_after = token_rows(model, [tokenizer.pad_token_id])
    assert all(torch.equal(pad_before[side], pad_after[side]) for side in pad_before), "the pad row is not trained"

    model.eval()
    ids = torch.tensor([tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    stage_dir = tmp_path / "sft"
    save_stage_model(model, tokenizer, stage_dir, cfg.model)

    stage_cfg = ModelConfig(model_name_or_path=str(stage_dir))
    stage_tokenizer = load_tokenizer(stage_cfg)
    reloaded = load_causal_lm(stage_cfg, LoraConfig(use_lora=False), QuantConfig(), trainable=False, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    merge_and_export(reloaded, stage_tokenizer, tmp_path / "merged")
    merged = load_causal_lm(
        ModelConfig(model_name_or_path=str(tmp_path / "merged")),
        LoraConfig(use_lora=False),
        QuantConfig(),
        trainable=False,
        device="cpu",
    )
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)

    # PPO's layout: the SFT adapter as the frozen reference, the policy an exact (trainable) copy of it.
    base = load_causal_lm(
        ModelConfig(model_name_or_path=str(recipe_model_dir(path)), chat_template=cfg.model.chat_template),
        LoraConfig(use_lora=False),
        QuantConfig(),
        trainable=False,
        device="cpu",
        tokenizer=stage_tokenizer,
    )
    ppo_model = PeftModel.from_pretrained(base, str(stage_dir / "adapter"), adapter_name=SFT, is_trainable=False)
    copy_adapter(ppo_model, SFT, POLICY, trainable=True)
    assert any("trainable_tokens_delta" in n for n, p in ppo_model.named_parameters() if p.requires_grad)
    with torch.no_grad(), use_adapter(ppo_model, POLICY):
        torch.testing.assert_close(ppo_model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", TEMPLATE_RECIPES, ids=lambda p: p.stem)
def test_base_model_recipe_runs_sft_reward_and_ppo_with_its_turn_token_rows(path, recipe_model_dir, tmp_path):
    """The three stages chained on a base family given a template: PPO's adapters carry the trained turn rows."""
    from safetensors.torch import load_file

    import alignment.ppo as ppo
    from alignment import reward, sft
    from alignment.core.tracking import read_log
    from alignment.ppo.policy import build_actor_critic

    common = {
        "model_name_or_path": str(recipe_model_dir(path)),
        "chat_template": load_yaml(path)[0]["chat_template"],
        "lora_target_modules": load_yaml(path)[0]["lora_target_modules"],
        "dataset_name": "demo",
        "max_samples": 8,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "save_steps": 0,
        "max_length": 128,
        "learning_rate": 1e-2,
    }
    sft.train(build_config(sft.CONFIG_TYPES, {**common, "output_dir": str(tmp_path / "sft")}))
    reward.train(build_config(reward.CONFIG_TYPES, {**common, "output_dir": str(tmp_path / "reward")}))
    for stage in ("sft", "reward"):
        saved = load_file(str(tmp_path / stage / "adapter" / "adapter_model.safetensors"))
        assert any("trainable_tokens_delta" in key for key in saved), f"{stage} adapter lacks the token rows"

    ppo_cfg = build_config(
        ppo.CONFIG_TYPES,
        {
            **{k: v for k, v in common.items() if k not in ("max_steps", "per_device_train_batch_size")},
            "model_name_or_path": str(tmp_path / "sft"),
            "sft_model_path": str(tmp_path / "sft"),
            "reward_model_paths": [str(tmp_path / "reward")],
            "max_samples": 16,
            "eval_split_size": 2,
            "output_dir": str(tmp_path / "ppo"),
            "total_episodes": 8,
            "rollout_batch_size": 4,
            "mini_batch_size": 2,
            "max_new_tokens": 4,
            "eval_prompts": 2,
        },
    )
    ac, _, _ = build_actor_critic(ppo_cfg)
    trainable = {n for n, p in ac.model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "trainable_tokens_delta" in n}, "policy/value token rows must train"
    assert all(n.split(".")[-1] in ("policy", "value") or ".policy." in n or ".value." in n for n in trainable)
    del ac
    ppo.train(ppo_cfg)
    rows = read_log(tmp_path / "ppo")
    assert abs(rows[0]["objective/kl"]) < 1e-3, "the policy copy (token rows included) must start at the SFT policy"
    saved = load_file(str(tmp_path / "ppo" / "adapter" / "adapter_model.safetensors"))
    assert any("trainable_tokens_delta" in key for key in saved)


@pytest.mark.parametrize("path", MODEL_RECIPES, ids=[p.stem for p in MODEL_RECIPES])
def test_generation_from_a_packed_prefill_and_a_preallocated_cache_equals_plain_generate(path, recipe_model_dir):
    """PPO's rollouts prefill prompts without their left padding into a cache written in place (``generation.py``)."""
    from peft import get_peft_model
    from transformers import GenerationConfig

    from alignment.core.config import LoraConfig
    from alignment.modeling.generation import PreallocatedLayer, generation_cache
    from alignment.modeling.load import load_causal_lm
    from alignment.modeling.lora import peft_lora_config
    from alignment.modeling.tokenizer import load_tokenizer

    cfg = recipe_config(path, recipe_model_dir(path))
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    base = load_causal_lm(cfg.model, LoraConfig(use_lora=False), cfg.quant, tokenizer=tokenizer, trainable=False)
    model = get_peft_model(base, peft_lora_config(cfg.lora, "CAUSAL_LM")).eval()
    torch.manual_seed(0)
    for name, param in model.named_parameters():  # a trained-looking adapter: its path must be in the cache
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    prompts = [messages[:-1] for messages in DEMONSTRATIONS]  # 3 prompts of different lengths
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert int(encoded.attention_mask.sum(-1).min()) < encoded.input_ids.shape[1]  # left padding to skip
    greedy = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)

    def generate(cache):
        with torch.no_grad():
            out = model.generate(
                input_ids=encoded.input_ids,
                attention_mask=encoded.attention_mask,
                generation_config=greedy,
                return_dict_in_generate=True,
                output_logits=True,
                **({"cache": cache} if cache is not None else {}),
            )
        return out.sequences, torch.stack(out.logits, dim=1)

    plain = generate(None)
    prefilled_cache = generation_cache(model, encoded.input_ids, encoded.attention_mask, greedy)
    if getattr(base.config, "sliding_window", None) and "sliding_attention" in getattr(base.config, "layer_types", []):
        # Gemma 3: sliding-window layers keep transformers' own cache (the preallocated one is full-attention only).
        assert prefilled_cache is None
        return
    assert prefilled_cache.get_seq_length() == encoded.input_ids.shape[1] - 1  # every prompt token but the last
    assert all(isinstance(layer, PreallocatedLayer) for layer in prefilled_cache.layers)
    prefilled = generate(prefilled_cache)
    preallocated_cache = generation_cache(
        model, encoded.input_ids, encoded.attention_mask, greedy, packed_prefill=False
    )
    assert preallocated_cache.get_seq_length() == 0
    preallocated = generate(preallocated_cache)

    assert torch.equal(preallocated[0], plain[0]) and torch.equal(preallocated[1], plain[1])  # in place: same bits
    assert torch.equal(prefilled[0], plain[0])
    torch.testing.assert_close(prefilled[1], plain[1], atol=1e-4, rtol=1e-4)  # packed GEMM shapes round differently
