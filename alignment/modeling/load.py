"""The one model loader: every stage gets its tokenizer, policy, reference and reward model here.

Sources (:func:`resolve_model_source`), tried in this order:

- ``embedded``: the name of a model that ships in a pip package (:mod:`alignment.modeling.embedded`), the
  default ``smollm2-135m-instruct``; de-quantized once and cached as safetensors.
- ``gguf``: a ``.gguf`` file; de-quantized by transformers once and cached like the default.
- ``stage_dir``: the output directory of an earlier stage (CONTRIBUTING.md, "Stage output
  directory"): ``model/`` (full weights) or ``adapter/`` on the base named in ``base_model.json``.
- ``local_dir``: a directory with ``config.json`` and weights.
- ``hub``: a Hugging Face Hub id, pinned with ``revision``.

Adapters stack by merging: a stage directory whose adapter sits on another stage directory is
loaded as base -> merge(inner adapter) -> outer adapter. When a stage directory with an adapter
is *trained further* with LoRA, its adapter is merged and a fresh adapter is added; that adapter
then sits on the stage directory, which is what :func:`save_stage_model` records, so saving and
loading back always rebuilds the same weights.

Why pad != eos (:func:`load_tokenizer`): many chat tokenizers (SmolLM2's GGUF one included) set
pad = eos. Masking padding then masks the real end-of-turn token too, so an SFT model never learns
to stop, and a reward model's "last non-pad token" lands before the answer's end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
from alignment.modeling.attention import use_varlen_sdpa
from alignment.modeling.embedded import cache_root, embedded_model_dir, gguf_cache_dir, is_embedded

logger = logging.getLogger(__name__)

SourceKind = Literal["embedded", "stage_dir", "gguf", "local_dir", "hub"]
BASE_MODEL_FILE = "base_model.json"
# Attribute set on loaded models: what their (outermost, unmerged) adapter sits on.
ADAPTER_BASE_ATTR = "alignment_adapter_base"
# Attribute set on loaded models: the ModelConfig they were loaded with (to reload them unquantized).
LOAD_CONFIG_ATTR = "alignment_model_config"
# Attribute set on loaded bases: ids of the embedding rows the loader grew for tokens the checkpoint lacks.
GROWN_TOKENS_ATTR = "alignment_grown_token_ids"
SEQ_CLS_HEAD_NAMES = ("score", "classifier")

# ChatML, as in trl's ``setup_chat_format``: for base models that ship no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Existing tokens that can serve as padding, best first (then the tokenizer's unk token).
PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>", "<|finetune_right_pad_id|>", "<|endoftext|>")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(OSError):
    """A model or tokenizer cannot be found or loaded; the message says which and what to do."""


# ------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved to what ``from_pretrained`` needs.

    ``weights``: directory or Hub id of the base weights (for an adapter stage dir: its base's).
    ``adapters``: adapter directories to apply on top, innermost first, each with what it sits on.
    """

    kind: SourceKind
    name_or_path: str
    weights: str
    revision: str | None = None
    tokenizer: str | None = None
    adapters: tuple[tuple[str, dict], ...] = ()
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def tokenizer_location(self) -> str:
        return self.tokenizer or self.weights


def resolve_model_source(name_or_path: str, revision: str | None = None) -> ModelSource:
    """Classify ``name_or_path`` and find its weights; builds the embedded/GGUF cache on first use."""
    return _resolve(name_or_path, revision, depth=0)


def _resolve(name: str, revision: str | None, depth: int) -> ModelSource:
    if depth > 8:
        raise ModelLoadError(f"{name}: base_model.json chain is deeper than 8 stages (a loop?)")
    path = Path(name).expanduser()
    if is_embedded(name) and not path.exists():
        return ModelSource("embedded", name, str(embedded_model_dir(name)))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSource("gguf", name, str(gguf_cache_dir(path)))
    if path.is_dir():
        return _resolve_dir(path.resolve(), name, depth)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not _HUB_ID.match(name):
        raise ModelLoadError(
            f"model '{name}' not found: no such file or directory, and not a Hub id (org/name); "
            "model_name_or_path takes a Hub id, a local directory, a .gguf file, a stage output "
            "directory, or 'smollm2-135m-instruct'"
        )
    return ModelSource("hub", name, name, revision=revision)


def _resolve_dir(path: Path, name: str, depth: int) -> ModelSource:
    info_file = path / BASE_MODEL_FILE
    has_adapter = (path / "adapter" / "adapter_config.json").is_file()
    has_model = (path / "model" / "config.json").is_file()
    tokenizer = str(path / "tokenizer") if (path / "tokenizer").is_dir() else None
    if (has_adapter or has_model) and info_file.is_file():
        info = _read_json(info_file)
        if has_model:  # self-contained (full fine-tune or merged export): no base needed
            return ModelSource("stage_dir", name, str(path / "model"), tokenizer=tokenizer, info=info)
        if "model_name_or_path" not in info:
            raise ModelLoadError(f"{info_file}: field 'model_name_or_path' is missing")
        base = _resolve(info["model_name_or_path"], info.get("revision"), depth + 1)
        sits_on = {"model_name_or_path": info["model_name_or_path"], "revision": info.get("revision")}
        adapters = (*base.adapters, (str(path / "adapter"), sits_on))
        return ModelSource(
            "stage_dir", name, base.weights, base.revision, tokenizer or base.tokenizer_location, adapters, info
        )
    if has_adapter or has_model:
        raise ModelLoadError(f"{path} looks like a stage output directory but has no {BASE_MODEL_FILE}")
    if (path / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{path} is a bare peft adapter: pass its base as model_name_or_path and this directory as adapter_path"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: a model directory needs config.json (or a stage's model/ or adapter/)")
    return ModelSource("local_dir", name, str(path))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _hub_error(source: ModelSource, what: str, error: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0")
    return ModelLoadError(
        f"cannot load the {what} '{source.name_or_path}' (revision {source.revision or 'main'}) from the "
        f"Hugging Face Hub (HF_HUB_OFFLINE={offline}): {error}\n"
        "Check the id, or use a local directory, a .gguf file, a stage output directory, or the "
        "embedded default 'smollm2-135m-instruct'."
    )


# ------------------------------------------------------------------------------------ tokenizer


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
            raise _hub_error(source, "tokenizer", e) from e
        raise ModelLoadError(f"cannot load a tokenizer from {source.tokenizer_location}: {e}") from e


def apply_chat_template_setting(tokenizer: PreTrainedTokenizerBase, setting: str) -> None:
    """Set the tokenizer's chat template from a ``chat_template`` setting: 'chatml', a file, or Jinja."""
    if setting == "chatml":
        template = CHATML_TEMPLATE
        _add_chatml_tokens(tokenizer)
    elif setting.endswith(".jinja") or Path(setting).expanduser().is_file():
        path = Path(setting).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"chat_template: file not found: {path}")
        template = path.read_text(encoding="utf-8")
    elif "{%" in setting or "{{" in setting:
        template = setting
    else:
        raise ModelLoadError(f"chat_template: {setting!r} is not 'chatml', an existing file, or a Jinja template")
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


# ------------------------------------------------------------------------------------ loading


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': fp32 on CPU; bf16 on a GPU that has it, else fp32 (fp16 training needs loss scaling)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    aliases = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    key = aliases.get(name, name)
    if key not in _DTYPES:
        raise ValueError(f"dtype: expected auto, bf16, fp16 or fp32, got {name!r}")
    return _DTYPES[key]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bnb_config(quant_cfg: QuantConfig, skip_modules: list[str] | None = None) -> BitsAndBytesConfig | None:
    """bitsandbytes settings from ``quant_cfg``, or None when the weights stay unquantized."""
    if quant_cfg.load_in_8bit and quant_cfg.load_in_4bit:
        raise ValueError("load_in_8bit and load_in_4bit are both set: choose one")
    if not (quant_cfg.load_in_8bit or quant_cfg.load_in_4bit):
        return None
    if quant_cfg.bnb_4bit_quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bnb_4bit_quant_type: expected nf4 or fp4, got {quant_cfg.bnb_4bit_quant_type!r}")
    if quant_cfg.load_in_8bit:
        _log_bnb_cast_warning_once()
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant_cfg.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(quant_cfg.bnb_4bit_compute_dtype, torch.device("cpu")),
        llm_int8_skip_modules=skip_modules,
    )


class _OnceFilter(logging.Filter):
    """bitsandbytes logs "inputs will be cast ... to float16" on every int8 matmul: keep the first."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _log_bnb_cast_warning_once() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in bnb_logger.filters):
        bnb_logger.addFilter(_OnceFilter())


def _from_pretrained(
    auto_cls: Any,
    source: ModelSource,
    model_cfg: ModelConfig,
    quantization: BitsAndBytesConfig | None,
    device: torch.device,
    extra: dict[str, Any],
) -> tuple[PreTrainedModel, set[str]]:
    """``auto_cls.from_pretrained`` with the project's settings; returns the model and its missing keys."""
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(model_cfg.dtype, device),
        "trust_remote_code": model_cfg.trust_remote_code,
        "use_safetensors": _use_safetensors(source),
        "output_loading_info": True,
        **extra,
    }
    if source.kind == "hub":
        kwargs["revision"] = source.revision
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if device.type != "cpu":  # a device_map naming "cpu" means "offload": those layers stay unquantized
            kwargs["device_map"] = {"": device.index if device.index is not None else str(device)}
    try:
        model, info = auto_cls.from_pretrained(source.weights, **kwargs)
    except OSError as e:
        if source.kind == "hub":
            raise _hub_error(source, "model", e) from e
        raise ModelLoadError(f"cannot load model weights from {source.weights}: {e}") from e
    if quantization is None:
        model.to(device)
    return model, set(info.get("missing_keys", ()))


def _use_safetensors(source: ModelSource) -> bool | None:
    """Local: safetensors when present (else warn about pickle weights); Hub: transformers prefers them."""
    if source.kind == "hub":
        return None
    folder = Path(source.weights)
    if any(folder.glob("*.safetensors")):
        return True
    logger.warning("%s has no safetensors weights: loading pickle (.bin) weights", folder)
    return None


def sync_vocab_and_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Grow the embeddings for tokens the tokenizer added; copy pad/eos ids into the model's configs.

    New rows are set to the mean embedding (deterministically, unlike ``mean_resizing``'s sampling),
    so loading a saved adapter on a re-grown vocabulary rebuilds exactly the trained model.
    Returns the ids of the grown rows.
    """
    old_rows = model.get_input_embeddings().num_embeddings
    grown = list(range(old_rows, len(tokenizer)))
    if grown:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for emb in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
                emb.weight[old_rows:] = emb.weight[:old_rows].mean(dim=0, keepdim=True)
        logger.info("resized token embeddings %d -> %d rows", old_rows, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and model.can_generate():
        generation.pad_token_id = tokenizer.pad_token_id
        eos = generation.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            generation.eos_token_id = [tokenizer.eos_token_id, *eos_ids]
    return grown


def peft_lora_config(
    lora_cfg: LoraConfig, task_type: str, trainable_tokens: dict[str, list[int]] | None = None
) -> PeftLoraConfig:
    """peft's LoRA config for our ``LoraConfig``; ``trainable_tokens``: see :func:`trainable_token_targets`."""
    targets = lora_cfg.lora_target_modules
    targets = [targets] if isinstance(targets, str) else list(targets)
    if "all-linear" in targets and len(targets) > 1:
        raise ValueError(f"lora_target_modules: 'all-linear' cannot be combined with names, got {targets}")
    return PeftLoraConfig(
        r=lora_cfg.lora_r,
        lora_alpha=lora_cfg.lora_alpha,
        lora_dropout=lora_cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type=task_type,
        bias="none",
        trainable_token_indices=trainable_tokens or None,
    )


def trainable_token_targets(model: PreTrainedModel, task: str) -> dict[str, list[int]] | None:
    """Embedding rows a LoRA adapter must train besides its low-rank matrices: those the loader grew.

    Tokens added to the vocabulary (ChatML's ``<|im_start|>``/``<|im_end|>`` on GPT-2 or Pythia)
    start as the mean embedding, identical to one another; LoRA leaves embeddings frozen, so the
    model could never tell them apart nor learn to emit ``<|im_end|>`` (trl's ``setup_chat_format``
    has the same trap). peft's trainable tokens train just those rows: the input embedding, and
    the output embedding of a causal LM that does not tie it (a tied one follows the input).
    The pad token is left out: no loss or attention ever reads it.
    """
    grown = getattr(model, GROWN_TOKENS_ATTR, None) or []
    pad_id = getattr(model.config, "pad_token_id", None)
    ids = [i for i in grown if i != pad_id]
    if not ids:
        return None
    names = {module: name for name, module in model.named_modules()}
    targets = {names[model.get_input_embeddings()]: ids}
    output = model.get_output_embeddings() if task == "CAUSAL_LM" else None
    if output is not None and not getattr(model.config, "tie_word_embeddings", False):
        targets[names[output]] = ids
    return targets


def _absolute_name(name: str) -> str:
    """Local paths are recorded absolute, so a later stage finds them from any working directory."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def load_causal_lm(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    quant_cfg: QuantConfig,
    *,
    adapter_path: str | None = None,
    trainable: bool = True,
    device: str | torch.device | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dropout: bool = True,
) -> PreTrainedModel | PeftModel:
    """A causal LM (policy, reference or SFT model) from any source, ready to train or to evaluate.

    ``adapter_path``: an existing peft adapter to put on top (trained further when ``trainable``).
    ``trainable``: False returns a frozen model in eval mode (a reference model, an evaluation).
    With ``trainable`` and ``lora_cfg.use_lora`` a fresh LoRA adapter is added unless
    ``adapter_path`` is given; quantized weights train only through LoRA (QLoRA).
    ``tokenizer``: the one from :func:`load_tokenizer`, when the caller already has it (its pad
    token and added tokens are applied to the model); loaded here otherwise.
    ``dropout``: False sets every dropout probability to 0 (PPO needs deterministic log-probs).
    """
    return _load_model("CAUSAL_LM", model_cfg, lora_cfg, quant_cfg, adapter_path, trainable, device, tokenizer, dropout)


def load_reward_model(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    quant_cfg: QuantConfig,
    *,
    adapter_path: str | None = None,
    trainable: bool = True,
    device: str | torch.device | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dropout: bool = True,
) -> PreTrainedModel | PeftModel:
    """A scalar reward model: ``AutoModelForSequenceClassification`` with ``num_labels=1``.

    Works from a causal LM (Llama & co get a ``score`` head reading the last non-pad token) or an
    encoder (BERT: ``classifier`` on the pooled output). A fresh head is drawn from
    N(0, 1/sqrt(hidden+1)) ("The N Implementation Details of RLHF with PPO", Huang et al. 2022,
    following Stiennon et al. 2020). With LoRA the task type is SEQ_CLS, so peft trains and saves the
    head (``modules_to_save``). Output: ``model(input_ids, attention_mask).logits`` of shape (B, 1).
    """
    return _load_model("SEQ_CLS", model_cfg, lora_cfg, quant_cfg, adapter_path, trainable, device, tokenizer, dropout)


def _load_model(
    task: str,
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig,
    quant_cfg: QuantConfig,
    adapter_path: str | None,
    trainable: bool,
    device: str | torch.device | None,
    tokenizer: PreTrainedTokenizerBase | None,
    dropout: bool,
) -> PreTrainedModel | PeftModel:
    device = _resolve_device(device)
    source = resolve_model_source(model_cfg.model_name_or_path, model_cfg.revision)
    _check_task(source, task)
    quantization = bnb_config(quant_cfg, list(SEQ_CLS_HEAD_NAMES) if task == "SEQ_CLS" else None)
    if trainable and quantization is not None and not lora_cfg.use_lora:
        raise ValueError(
            "8-bit/4-bit weights cannot be trained directly: set use_lora: true (QLoRA) or load unquantized"
        )
    tokenizer = tokenizer or load_tokenizer(model_cfg)
    here = {"model_name_or_path": _absolute_name(model_cfg.model_name_or_path), "revision": model_cfg.revision}
    adapters = list(source.adapters) + ([(adapter_path, here)] if adapter_path else [])
    keep_last = bool(adapters) and (not trainable or (adapter_path is not None and lora_cfg.use_lora))
    to_merge = [adapter_dir for adapter_dir, _ in (adapters[:-1] if keep_last else adapters)]
    if quantization is not None and to_merge:
        with tempfile.TemporaryDirectory(prefix="merged-", dir=_scratch_dir()) as scratch:
            merged = _merge_unquantized(task, source, to_merge, model_cfg, tokenizer, Path(scratch))
            model = _load_base(task, merged, model_cfg, quantization, device, tokenizer)
    else:
        model = _load_base(task, source, model_cfg, quantization, device, tokenizer)
        for adapter_dir in to_merge:
            model = _merge_adapter(model, adapter_dir, task)
    if trainable:
        model = _prepare_for_training(model, model_cfg, quantization is not None, lora_cfg.use_lora)
    sits_on = here
    if keep_last:
        adapter_dir, sits_on = adapters[-1]
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
    elif trainable and lora_cfg.use_lora:
        model = get_peft_model(model, peft_lora_config(lora_cfg, task, trainable_token_targets(model, task)))
    setattr(model, LOAD_CONFIG_ATTR, model_cfg)
    return _finish(model, sits_on, trainable, dropout)


def _load_base(
    task: str,
    source: ModelSource,
    model_cfg: ModelConfig,
    quantization: BitsAndBytesConfig | None,
    device: torch.device,
    tokenizer: PreTrainedTokenizerBase,
) -> PreTrainedModel:
    """The base weights (no adapters), vocabulary synced with the tokenizer, a fresh reward head drawn."""
    auto_cls = AutoModelForCausalLM if task == "CAUSAL_LM" else AutoModelForSequenceClassification
    extra = {} if task == "CAUSAL_LM" else {"num_labels": 1}
    model, missing = _from_pretrained(auto_cls, source, model_cfg, quantization, device, extra)
    setattr(model, GROWN_TOKENS_ATTR, sync_vocab_and_special_tokens(model, tokenizer))
    if task == "SEQ_CLS":
        _init_fresh_head(model, missing)
    if task == "CAUSAL_LM" or hasattr(model, "score"):  # decoders: packed batches become one row, no filler
        use_varlen_sdpa(model)
    return model


def _merge_unquantized(
    task: str,
    source: ModelSource,
    adapter_dirs: list[str],
    model_cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    scratch: Path,
) -> ModelSource:
    """Merge adapters into the *unquantized* base and save it, to be quantized on load.

    Merging into 8/4-bit weights re-quantizes the update, and a LoRA update is mostly smaller than
    a 4-bit step: an SFT adapter merged that way largely vanishes. Costs one unquantized copy on
    disk under ``$ALIGNMENT_CACHE``, deleted after loading.
    """
    logger.info("merging %d adapter(s) into the unquantized base before quantizing", len(adapter_dirs))
    model = _load_base(task, replace(source, adapters=()), model_cfg, None, torch.device("cpu"), tokenizer)
    for adapter_dir in adapter_dirs:
        model = _merge_adapter(model, adapter_dir, task)
    model.save_pretrained(scratch)
    del model
    return ModelSource("local_dir", source.name_or_path, str(scratch), tokenizer=source.tokenizer_location)


def _scratch_dir() -> Path:
    path = cache_root() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_task(source: ModelSource, task: str) -> None:
    stage_task = source.info.get("task")
    if task == "CAUSAL_LM" and stage_task == "sequence_classification":
        raise ModelLoadError(
            f"{source.name_or_path} holds a reward model (sequence classification): load it with load_reward_model"
        )


def _merge_adapter(model: PreTrainedModel, adapter_dir: str, task: str) -> PreTrainedModel:
    """Fold an inner adapter into the weights (the loader only does this on unquantized weights)."""
    config = PeftConfig.from_pretrained(adapter_dir)
    if config.task_type != task:  # e.g. an SFT (causal) adapter under a reward model: same module names
        config.task_type = None
    logger.info("merging adapter %s", adapter_dir)
    return PeftModel.from_pretrained(model, adapter_dir, config=config).merge_and_unload()


def _prepare_for_training(
    model: PreTrainedModel, model_cfg: ModelConfig, quantized: bool, use_lora: bool
) -> PreTrainedModel:
    checkpointing_kwargs = {"use_reentrant": False}  # reentrant checkpointing needs inputs that require grad
    if quantized:
        # Casts norms/embeddings to fp32 and freezes the quantized base (Dettmers et al. 2023, QLoRA).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=model_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    elif model_cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
    if model_cfg.gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless in training and conflicts with recomputation
    if not use_lora:
        model.requires_grad_(True)  # merged adapters leave the base frozen
    return model


def _finish(
    model: PreTrainedModel | PeftModel, sits_on: dict, trainable: bool, dropout: bool
) -> PreTrainedModel | PeftModel:
    setattr(model, ADAPTER_BASE_ATTR, sits_on)
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    if not dropout:
        disable_dropout(model)
    trainable_params, total = count_parameters(model)
    logger.info(
        "loaded %s: %d / %d parameters trainable (%.2f%%)",
        type(model).__name__,
        trainable_params,
        total,
        100.0 * trainable_params / max(total, 1),
    )
    return model


def _init_fresh_head(model: PreTrainedModel, missing_keys: set[str]) -> None:
    """Draw a newly created scalar head from N(0, 1/sqrt(d+1)); a loaded (trained) head is kept."""
    for name in SEQ_CLS_HEAD_NAMES:
        head = getattr(model, name, None)
        if head is None:
            continue
        if not any(key.startswith(f"{name}.") for key in missing_keys):
            return
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            return
        last = linears[-1]
        with torch.no_grad():
            nn.init.normal_(last.weight, std=1.0 / math.sqrt(last.in_features + 1))
            if last.bias is not None:
                last.bias.zero_()
        logger.info(
            "the base has no reward head '%s': drew one with std 1/sqrt(%d) (a trained head loaded with an "
            "adapter replaces it)",
            name,
            last.in_features + 1,
        )
        return


# ------------------------------------------------------------------------------------ helpers


def unwrap_transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model under a DDP (``.module``) and/or peft (``get_base_model``) wrapper."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0: modules, attention-probability floats, and the config."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout_prob", "attn_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)
    config = getattr(model, "config", None)
    for key in (
        "attention_dropout",
        "hidden_dropout",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "dropout",
    ):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as the values they hold, not bytes."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if type(param).__name__ == "Params4bit":  # two 4-bit values packed per uint8 element
            count *= 2
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def merge_and_export(
    model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path
) -> Path:
    """Full safetensors weights + tokenizer in ``out_dir``, loadable without peft.

    A LoRA model is merged *in place* (the passed model must not be trained afterwards). A LoRA
    adapter trained on 8/4-bit weights is merged into the base reloaded unquantized, as QLoRA
    exports are done: merging into the quantized weights would re-quantize the update and lose
    most of it at 4 bits.
    """
    out = Path(out_dir)
    if isinstance(model, PeftModel) and _is_quantized(model.get_base_model()):
        model = _reload_unquantized(model, tokenizer)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if _is_quantized(model):
        logger.warning("exporting quantized weights de-quantized: the export carries their rounding")
        model = model.dequantize()
    with _atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("exported merged model to %s", out)
    return out


def _is_quantized(model: nn.Module) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False))


def _reload_unquantized(model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> PeftModel:
    """The same adapter on the base loaded without quantization (on the CPU)."""
    load_cfg = getattr(model, LOAD_CONFIG_ATTR, None)
    sits_on = getattr(model, ADAPTER_BASE_ATTR, None)
    if load_cfg is None or sits_on is None:
        logger.warning("no record of this model's base: merging into its quantized weights (lossy)")
        return model
    base_cfg = replace(load_cfg, model_name_or_path=sits_on["model_name_or_path"], revision=sits_on.get("revision"))
    is_seq_cls = model.get_base_model().__class__.__name__.endswith("ForSequenceClassification")
    loader = load_reward_model if is_seq_cls else load_causal_lm
    logger.info("reloading %s unquantized to merge the adapter", base_cfg.model_name_or_path)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, save_embedding_layers=False)
        return loader(
            base_cfg,
            LoraConfig(use_lora=False),
            QuantConfig(),
            adapter_path=tmp,
            trainable=False,
            device="cpu",
            tokenizer=tokenizer,
        )


def save_stage_model(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    model_cfg: ModelConfig,
) -> Path:
    """Write a stage's model hand-off: ``adapter/`` or ``model/``, ``tokenizer/``, ``base_model.json``.

    ``load_causal_lm(ModelConfig(model_name_or_path=out_dir), ...)`` (or ``load_reward_model``) then
    rebuilds the same model: the adapter goes back on the base recorded here.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_adapter = isinstance(model, PeftModel)
    with _atomic_dir(out / ("adapter" if is_adapter else "model")) as tmp:
        if is_adapter:
            # Embedding rows added for new tokens are rebuilt deterministically on load, not saved.
            model.save_pretrained(tmp, save_embedding_layers=False)
        else:
            model.save_pretrained(tmp)
    with _atomic_dir(out / "tokenizer") as tmp:
        tokenizer.save_pretrained(tmp)
    info = _base_model_info(model, model_cfg, tokenizer)
    tmp_file = out / f".{BASE_MODEL_FILE}.tmp"
    tmp_file.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_file, out / BASE_MODEL_FILE)
    logger.info("saved stage model (%s) to %s", "adapter" if is_adapter else "full weights", out)
    return out


def _base_model_info(
    model: PreTrainedModel | PeftModel, model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase
) -> dict[str, Any]:
    default = {"model_name_or_path": _absolute_name(model_cfg.model_name_or_path), "revision": model_cfg.revision}
    sits_on = getattr(model, ADAPTER_BASE_ATTR, None) or default
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    is_seq_cls = base.__class__.__name__.endswith("ForSequenceClassification")
    template_source = model_cfg.chat_template or "the base model's tokenizer"
    return {
        "model_name_or_path": sits_on["model_name_or_path"],
        "revision": sits_on.get("revision"),
        "dtype": model_cfg.dtype,
        "weights": "adapter" if isinstance(model, PeftModel) else "model",
        "task": "sequence_classification" if is_seq_cls else "causal_lm",
        "quantized_base": _is_quantized(base),
        "chat_template": (
            f"tokenizer/ holds the chat template used (from {template_source})"
            if tokenizer.chat_template
            else "none: the tokenizer has no chat template"
        ),
    }


@contextlib.contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Write into a temporary sibling directory; replace ``target`` with it only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates it private
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
