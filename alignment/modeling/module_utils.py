"""Small helpers on torch modules that every stage uses: unwrap wrappers, switch dropout off, count parameters."""

from __future__ import annotations

from torch import nn


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


def enable_activation_checkpointing(model: nn.Module, checkpoint_kwargs: dict) -> None:
    """Recompute a transformers model's layer activations in the backward (``checkpoint_kwargs`` go to torch's
    ``checkpoint``), by the method's name in transformers 5 (the old name warns) or before."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)


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
