"""The LM head run only where a label is predicted: the one home of that trick, for SFT's loss and DPO's log-probs.

Most positions of a demonstration or a comparison are prompt, and the vocabulary projection plus its fp32
log-softmax cost about a fifth of a 135M model's step. A forward pre-hook hands the head the hidden states of the
target positions only, so the model is still called as a whole (DDP's hooks run) and the result is exact.
"""

from __future__ import annotations

from typing import Any

import torch

from alignment.data.collate import IGNORE_INDEX
from alignment.modeling.attention import varlen_kwargs
from alignment.modeling.module_utils import unwrap_transformers_model


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The LM head (output embeddings) of a causal LM under any DDP/peft wrapper, or None."""
    hf_model = unwrap_transformers_model(model)
    return hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None


def target_logits(
    model: torch.nn.Module, head: torch.nn.Module | None, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logits (M, V), targets (M,), where (2, M))`` for the M labelled tokens of an SFT-layout batch.

    Position t of a row predicts ``labels[t + 1]``; ``where`` holds the ``(row, t + 1)`` index of each target, so a
    caller can read per-token values such as ``example_ids`` there (None for a shared-prefix batch, whose
    ``target_index`` gives each target's predicting position instead). ``head`` is the model's output embeddings
    (None: the full logits are computed and the target rows picked from them).
    """
    device = next(p for p in model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if "cu_seq_lens" in batch:
        inputs.update(varlen_kwargs(batch["cu_seq_lens"].to(device), batch.get("branch_lengths")))
    if "target_index" in batch:  # shared-prefix rows: where each target is predicted is given (no ``where``)
        flat, targets, where = batch["target_index"].to(device), batch["targets"].to(device), None
    else:
        labels = batch["labels"].to(device)
        is_target = labels[:, 1:] != IGNORE_INDEX
        rows, steps = is_target.nonzero(as_tuple=True)
        targets = labels[:, 1:][is_target]
        where = torch.stack([rows, steps + 1])
        flat = rows * labels.shape[1] + steps  # position (row, step) predicts labels[row, step + 1]
    if head is None:
        logits = model(**inputs, use_cache=False).logits
        return logits.reshape(-1, logits.shape[-1])[flat], targets, where

    def select(_module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1])[flat].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    return logits[0], targets, where
