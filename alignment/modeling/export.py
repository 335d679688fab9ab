"""Export a trained model as full safetensors weights, loadable without peft (LoRA merged in)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
from alignment.modeling.load import LOAD_CONFIG_ATTR, load_causal_lm, load_reward_model
from alignment.modeling.stage_dir import ADAPTER_BASE_ATTR, atomic_dir, is_quantized

logger = logging.getLogger(__name__)


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
    if isinstance(model, PeftModel) and is_quantized(model.get_base_model()):
        model = _reload_unquantized(model, tokenizer)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if is_quantized(model):
        logger.warning("exporting quantized weights de-quantized: the export carries their rounding")
        model = model.dequantize()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    logger.info("exported merged model to %s", out)
    return out


def load_stage_output(stage_dir: str | Path, model_cfg: ModelConfig) -> PreTrainedModel | PeftModel:
    """A causal LM stage output as saved, whole and frozen on the CPU: what a sharded run merges and exports."""
    return load_causal_lm(
        replace(model_cfg, model_name_or_path=str(stage_dir)),
        LoraConfig(use_lora=False),
        QuantConfig(),
        trainable=False,
        device="cpu",
    )


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
