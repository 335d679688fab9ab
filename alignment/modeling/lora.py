"""LoRA adapters for the loader: peft's config from ours, and the embedding rows an adapter must train."""

from __future__ import annotations

from peft import LoraConfig as PeftLoraConfig
from transformers import PreTrainedModel

from alignment.core.config import LoraConfig

# Attribute set on loaded bases: ids of the embedding rows an adapter must train (see trainable_token_targets).
TRAINED_TOKENS_ATTR = "alignment_trained_token_ids"


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
    """Embedding rows a LoRA adapter must train besides its low-rank matrices: those the loader marked.

    Two kinds, both where a recipe gives a base model a chat template (``chat_template``):
    - Tokens added to the vocabulary (ChatML's ``<|im_start|>``/``<|im_end|>`` on GPT-2 or Pythia) start as the
      mean embedding, identical to one another; LoRA leaves embeddings frozen, so the model could never tell them
      apart nor learn to emit ``<|im_end|>`` (trl's ``setup_chat_format`` has the same trap).
    - Turn tokens the base's vocabulary has but its pretraining never used: Gemma 3 270M's ``<end_of_turn>`` row
      is at cosine 0.995 to hundreds of ``<unusedN>`` rows, so an SFT policy trained with LoRA alone wrote
      ``<unused1603>`` or ``<unused5>`` where the turn should end and ran on (52% of its answers never ended).
    peft's trainable tokens train just those rows: the input embedding, and the output embedding of a causal LM
    that does not tie it (a tied one follows the input). The pad token is left out: no loss or attention reads it.
    """
    marked = getattr(model, TRAINED_TOKENS_ATTR, None) or []
    pad_id = getattr(model.config, "pad_token_id", None)
    ids = [i for i in marked if i != pad_id]
    if not ids:
        return None
    names = {module: name for name, module in model.named_modules()}
    targets = {names[model.get_input_embeddings()]: ids}
    output = model.get_output_embeddings() if task == "CAUSAL_LM" else None
    if output is not None and not getattr(model.config, "tie_word_embeddings", False):
        targets[names[output]] = ids
    return targets
