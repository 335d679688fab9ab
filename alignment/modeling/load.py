"""The one model loader: every stage gets its policy, reference and reward model here.

:func:`load_causal_lm` and :func:`load_reward_model` take a ``ModelConfig`` whose ``model_name_or_path`` is any
source :mod:`alignment.modeling.sources` resolves (the embedded default, a ``.gguf`` file, a stage output, a
local directory or a Hub id), then apply quantization (:mod:`alignment.modeling.quantization`) and LoRA
(:mod:`alignment.modeling.lora`) as configured. The tokenizer comes from :mod:`alignment.modeling.tokenizer`.

Adapters stack by merging: a stage directory whose adapter sits on another stage directory is
loaded as base -> merge(inner adapter) -> outer adapter. When a stage directory with an adapter
is *trained further* with LoRA, its adapter is merged and a fresh adapter is added; that adapter
then sits on the stage directory, which is what :func:`~alignment.modeling.stage_dir.save_stage_model`
records, so saving and loading back always rebuilds the same weights.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
from alignment.core.precision import resolve_dtype
from alignment.data.chat_template import template_turn_tokens
from alignment.modeling.attention import use_varlen_sdpa
from alignment.modeling.embedded import cache_root
from alignment.modeling.fused_lora import use_fused_lora
from alignment.modeling.lora import TRAINED_TOKENS_ATTR, peft_lora_config, trainable_token_targets
from alignment.modeling.module_utils import count_parameters, disable_dropout, enable_activation_checkpointing
from alignment.modeling.quantization import bnb_config
from alignment.modeling.sources import ModelLoadError, ModelSource, hub_error, resolve_model_source
from alignment.modeling.stage_dir import ADAPTER_BASE_ATTR, absolute_name
from alignment.modeling.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

# Attribute set on loaded models: the ModelConfig they were loaded with (to reload them unquantized).
LOAD_CONFIG_ATTR = "alignment_model_config"
SEQ_CLS_HEAD_NAMES = ("score", "classifier")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _from_pretrained(
    auto_cls: Any,
    source: ModelSource,
    model_cfg: ModelConfig,
    quantization: BitsAndBytesConfig | None,
    device: torch.device,
    extra: dict[str, Any],
) -> tuple[PreTrainedModel, set[str]]:
    """``auto_cls.from_pretrained`` with the project's settings; returns the model and its missing keys."""
    if model_cfg.trust_remote_code:
        logger.warning("trust_remote_code is on: running the Python code that ships with %s", source.name_or_path)
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
            raise hub_error(source, "model", e) from e
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
    merge_adapters: bool = False,
) -> PreTrainedModel | PeftModel:
    """A causal LM (policy, reference or SFT model) from any source, ready to train or to evaluate.

    ``adapter_path``: an existing peft adapter to put on top (trained further when ``trainable``).
    ``trainable``: False returns a frozen model in eval mode (a reference model, an evaluation).
    With ``trainable`` and ``lora_cfg.use_lora`` a fresh LoRA adapter is added unless
    ``adapter_path`` is given; quantized weights train only through LoRA (QLoRA).
    ``tokenizer``: the one from :func:`load_tokenizer`, when the caller already has it (its pad
    token and added tokens are applied to the model); loaded here otherwise.
    ``dropout``: False sets every dropout probability to 0 (PPO needs deterministic log-probs).
    ``merge_adapters``: merge every adapter of a stage output into the weights, the last one too (a frozen model
    keeps its last adapter apart otherwise): PPO puts its own adapters on the plain weights this returns.
    """
    return _load_model(
        "CAUSAL_LM", model_cfg, lora_cfg, quant_cfg, adapter_path, trainable, device, tokenizer, dropout, merge_adapters
    )


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
    merge_adapters: bool = False,
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
    here = {"model_name_or_path": absolute_name(model_cfg.model_name_or_path), "revision": model_cfg.revision}
    adapters = list(source.adapters) + ([(adapter_path, here)] if adapter_path else [])
    keep_last = (
        bool(adapters) and not merge_adapters and (not trainable or (adapter_path is not None and lora_cfg.use_lora))
    )
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
    grown = sync_vocab_and_special_tokens(model, tokenizer)
    # A template the recipe supplies is new to the base: its turn tokens' rows are trained too (lora.py says why).
    turns = tokenizer.convert_tokens_to_ids(template_turn_tokens(tokenizer)) if model_cfg.chat_template else []
    setattr(model, TRAINED_TOKENS_ATTR, sorted(set(grown) | set(turns)))
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
        enable_activation_checkpointing(model, checkpointing_kwargs)
    if model_cfg.gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless in training and conflicts with recomputation
    if not use_lora:
        model.requires_grad_(True)  # merged adapters leave the base frozen
    return model


def _finish(
    model: PreTrainedModel | PeftModel, sits_on: dict, trainable: bool, dropout: bool
) -> PreTrainedModel | PeftModel:
    setattr(model, ADAPTER_BASE_ATTR, sits_on)
    use_fused_lora(model)
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
