"""The tokenizer every stage uses: a pad token distinct from EOS, and the configured chat template.

Why pad != eos (:func:`load_tokenizer`): many chat tokenizers (SmolLM2's GGUF one included) set
pad = eos. Masking padding then masks the real end-of-turn token too, so an SFT model never learns
to stop, and a reward model's "last non-pad token" lands before the answer's end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from alignment.core.config import ModelConfig
from alignment.data.chat_template import template_end_of_turn
from alignment.modeling.sources import ModelLoadError, hub_error, resolve_model_source

logger = logging.getLogger(__name__)


# ChatML, as in trl's ``setup_chat_format``: for base models that ship no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Gemma's turn format (Gemma 2/3 instruct models), written here for Gemma base models that ship none: user and model
# turns between <start_of_turn> and <end_of_turn>, a system message folded into the first user turn as Gemma 3's own
# template does, and the BOS the Gemma tokenizer does not add to templated text.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] + '\n\n' if messages and messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ (system if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"gemma": GEMMA_TEMPLATE}


# Existing tokens that can serve as padding, best first (then the tokenizer's unk token).
PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>", "<|finetune_right_pad_id|>", "<|endoftext|>")


def load_tokenizer(
    model_cfg: ModelConfig, padding_side: str = "right", *, require_chat_template: bool = False
) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a distinct pad token and, where configured, a chat template.

    ``require_chat_template``: stages that render conversations pass True, to fail here with a
    clear message instead of deep inside ``apply_chat_template``. When a ``<pad>`` token has to be
    added, the model's embeddings must grow: :func:`load_causal_lm` does that when it sees
    ``len(tokenizer)`` > the embedding rows.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    tokenizer = _load_raw_tokenizer(model_cfg)
    if model_cfg.chat_template:
        apply_chat_template_setting(tokenizer, model_cfg.chat_template)
    if require_chat_template and not tokenizer.chat_template:
        raise ModelLoadError(
            f"the tokenizer of '{model_cfg.model_name_or_path}' has no chat template, and this stage renders "
            "conversations: set chat_template to 'chatml', a .jinja file or a Jinja string"
        )
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def _load_raw_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    name = model_cfg.tokenizer_name_or_path or model_cfg.model_name_or_path
    # ``revision`` pins the model's repository; a separately named tokenizer is taken at its default.
    source = resolve_model_source(name, None if model_cfg.tokenizer_name_or_path else model_cfg.revision)
    try:
        return AutoTokenizer.from_pretrained(
            source.tokenizer_location,
            revision=source.revision if source.kind == "hub" else None,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except OSError as e:
        if source.kind == "hub":
            raise hub_error(source, "tokenizer", e) from e
        raise ModelLoadError(f"cannot load a tokenizer from {source.tokenizer_location}: {e}") from e


def apply_chat_template_setting(tokenizer: PreTrainedTokenizerBase, setting: str) -> None:
    """Set the tokenizer's chat template from a ``chat_template`` setting: 'chatml', 'gemma', a file, or Jinja."""
    if setting == "chatml":
        template = CHATML_TEMPLATE
        _add_chatml_tokens(tokenizer)
    elif setting in NAMED_TEMPLATES:
        template = NAMED_TEMPLATES[setting]
        missing = [t for t in ("<start_of_turn>", "<end_of_turn>") if t not in tokenizer.get_vocab()]
        if missing:
            raise ModelLoadError(f"chat_template {setting!r} needs the tokens {missing}, which this tokenizer lacks")
    elif setting.endswith(".jinja") or Path(setting).expanduser().is_file():
        path = Path(setting).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"chat_template: file not found: {path}")
        template = path.read_text(encoding="utf-8")
    elif "{%" in setting or "{{" in setting:
        template = setting
    else:
        raise ModelLoadError(
            f"chat_template: {setting!r} is not 'chatml', 'gemma', an existing file, or a Jinja template"
        )
    if tokenizer.chat_template and tokenizer.chat_template != template:
        logger.warning("chat_template setting replaces the tokenizer's own chat template")
    tokenizer.chat_template = template


def _add_chatml_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """ChatML needs ``<|im_start|>``/``<|im_end|>`` as single tokens, and ends a turn with ``<|im_end|>``."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
        logger.warning("added ChatML tokens %s: the model's embeddings will be resized", missing)
    if tokenizer.eos_token != "<|im_end|>":
        tokenizer.eos_token = "<|im_end|>"


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token distinct from eos (and bos): an existing one if possible."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in _end_ids(tokenizer):
        return
    vocab = tokenizer.get_vocab()
    candidates = [*PAD_CANDIDATES, tokenizer.unk_token]
    for token in candidates:
        if token is not None and token in vocab and vocab[token] not in _end_ids(tokenizer):
            logger.info("pad token: %r (id %d) instead of %r", token, vocab[token], tokenizer.pad_token)
            tokenizer.pad_token = token
            return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    logger.warning("added a <pad> token (id %d): the model's embeddings must be resized", tokenizer.pad_token_id)


def _end_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    return {i for i in (tokenizer.eos_token_id, tokenizer.bos_token_id) if i is not None}


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> list[int]:
    """The one stop rule for rollouts, evaluation and the missing-EOS penalty: every id that ends an assistant turn.

    The tokenizer's EOS, the model's generation-config EOS ids (Llama 3 lists ``<|eot_id|>`` there), and the
    end-of-turn token its chat template writes after an assistant message (Gemma's ``<end_of_turn>``, Phi-3's
    ``<|end|>``), which a base model's tokenizer does not call EOS.
    """
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *([configured] if isinstance(configured, int) else list(configured or []))}
    end_of_turn = template_end_of_turn(tokenizer)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn is not None else None
    if end_of_turn_id != tokenizer.unk_token_id:
        ids.add(end_of_turn_id)
    return sorted(ids - {None})
