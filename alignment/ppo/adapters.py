"""One frozen base model carrying every PPO role as a LoRA adapter.

PPO needs four networks: the policy, the reference (frozen SFT policy), the reward model and
the critic. trl 1.12's PPOTrainer held three or four full model copies. With LoRA they differ only in
small adapters, so one base (fp32, bf16, 8-bit or 4-bit) carries:

- ``sft``: the SFT adapter, frozen. It is the reference: disabling adapters would give the
  *pretrained* model, not the SFT policy, and KL would start high (trl#1340).
- ``policy``: trainable, initialised as a copy of ``sft`` (so KL = 0 at step 0).
- ``reward`` (and ``reward_1``, ..., ``cost``): each reward or cost model's adapter, frozen, with its scalar
  head, when that model was trained on the same base.
- ``value``: trainable, initialised from ``reward`` (value head from the reward head), as
  InstructGPT and trl do; otherwise from ``sft`` with a zero value head and critic warm-up.

peft's ``set_adapter`` also flips ``requires_grad`` (only the active adapter stays trainable),
which would freeze the value adapter while the policy runs; ``use_adapter`` switches the active
adapter and puts the trainable flags back.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from alignment.modeling.module_utils import enable_activation_checkpointing

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

SFT, POLICY, REWARD, VALUE, COST = "sft", "policy", "reward", "value", "cost"
HEAD_KEYS = ("score.", "classifier.", "v_head.")


@contextlib.contextmanager
def use_adapter(model: PeftModel, name: str | None) -> Iterator[None]:
    """Run the block with adapter ``name`` active (``None``: all adapters disabled)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    previous = active_adapter(model)
    try:
        if name is None:
            with model.disable_adapter():
                yield
        else:
            model.base_model.set_adapter(name)
            _restore(flags)
            yield
    finally:
        if name is not None:
            model.base_model.set_adapter(previous)
        _restore(flags)


def active_adapter(model: PeftModel) -> str:
    """The adapter the LoRA layers run now. ``PeftModel.active_adapter`` keeps the name given to its own
    ``set_adapter`` and misses ``base_model.set_adapter``, the switch ``use_adapter`` makes."""
    return model.base_model.active_adapter


def checkpoint_under_the_active_adapter(model: PeftModel) -> None:
    """Activation checkpointing (``gradient_checkpointing``) on a base whose adapters switch between passes.

    Non-reentrant checkpointing re-runs each layer's forward during the backward, with the module state of that
    moment. ``use_adapter`` restores the previous adapter when a pass ends, before its loss is back-propagated, so a
    critic pass would be recomputed under the policy adapter: a wrong gradient with no error. ``context_fn`` hands
    torch's checkpoint a recompute context that re-activates the adapter the forward ran under. Only passes with
    autograd on are recomputed; rollouts run in eval mode, where transformers does not checkpoint.
    """

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), use_adapter(model, active_adapter(model))

    enable_activation_checkpointing(model.get_base_model(), {"use_reentrant": False, "context_fn": contexts})


def _restore(flags: dict[torch.nn.Parameter, bool]) -> None:
    for param, flag in flags.items():
        if param.requires_grad != flag:
            param.requires_grad_(flag)


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An adapter directory as (adapter_config, LoRA tensors, head tensors such as ``score.weight``)."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    lora, head = {}, {}
    for key, tensor in tensors.items():
        if "lora_" not in key and any(h in key for h in HEAD_KEYS):
            head[key.rsplit(".", 1)[-1]] = tensor  # "weight" / "bias"
        else:
            lora[key] = tensor
    return config, lora, head


PEFT_WEIGHT_TAGS = ("lora_", "trainable_tokens_delta")


def adapter_parameters(model: torch.nn.Module, name: str) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of adapter ``name``: its LoRA matrices and trainable-token rows.

    peft names them ``...q_proj.lora_A.<name>.weight`` and ``...embed_tokens.token_adapter.
    trainable_tokens_delta.<name>``: the adapter is a whole dotted component, not always followed by a dot.
    """
    for param_name, param in model.named_parameters():
        if name in param_name.split(".") and any(tag in param_name for tag in PEFT_WEIGHT_TAGS):
            yield param_name, param


def add_adapter_from(model: PeftModel, name: str, adapter_dir: str | Path, trainable: bool) -> dict[str, torch.Tensor]:
    """Add adapter ``name`` with the LoRA weights of ``adapter_dir``; returns its head tensors, if any.

    Works across task types: the LoRA weights of a sequence-classification reward model sit on
    the same backbone modules as a causal LM's (``model.layers.*``), so they load onto the policy's
    base; the scalar head is returned for the caller to hold. Trained rows of added tokens
    (peft trainable tokens, see ``alignment.modeling.lora.trainable_token_targets``) come along.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import set_peft_model_state_dict

    config, lora, head = read_adapter(adapter_dir)
    token_targets = _serve_every_token_wrapper(model, config.get("trainable_token_indices"), lora)
    peft_config = PeftLoraConfig(
        r=config["r"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=0.0,
        target_modules=config["target_modules"],
        bias=config.get("bias", "none"),
        task_type="CAUSAL_LM",
        trainable_token_indices=token_targets,
    )
    model.add_adapter(name, peft_config)
    result = set_peft_model_state_dict(model, lora, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if any(tag in k for tag in PEFT_WEIGHT_TAGS)]
    if unexpected:
        raise ValueError(
            f"{adapter_dir}: {len(unexpected)} adapter weights did not fit the base (e.g. {unexpected[0]})"
        )
    for _, param in adapter_parameters(model, name):
        param.requires_grad_(trainable)
    return head


def _serve_every_token_wrapper(
    model: PeftModel, targets: dict[str, list[int]] | list[int] | None, tensors: dict[str, torch.Tensor]
) -> dict[str, list[int]] | list[int] | None:
    """Extend an adapter's trainable-token targets to every embedding another adapter already wraps.

    peft (0.21) loads an adapter's state dict by asking *every* trainable-tokens wrapper of the
    model for that adapter's rows, so a reward adapter (input embedding only) fails on a policy
    base whose untied output embedding (Pythia) is wrapped for the SFT adapter. The missing module
    gets the base rows, which is what the adapter computed there: nothing (``tensors`` is extended).
    """
    from peft.utils.other import TrainableTokensWrapper

    if targets is not None and not isinstance(targets, dict):
        return targets
    targets = dict(targets or {})
    for module_name, module in model.named_modules():
        if not isinstance(module, TrainableTokensWrapper) or module.token_adapter.tied_adapter:
            continue
        short = module_name.removeprefix("base_model.model.")
        if short in targets or not module.token_adapter.token_indices:
            continue
        ids = next(iter(module.token_adapter.token_indices.values()))
        targets[short] = list(ids)
        base_weight = module.token_adapter.base_layer.weight
        tensors[f"{module_name}.token_adapter.trainable_tokens_delta"] = base_weight[ids].detach().clone()
    return targets or None


def copy_adapter(model: PeftModel, source: str, target: str, trainable: bool) -> None:
    """Add ``target`` as an exact copy of adapter ``source`` (LoRA matrices and trainable-token rows)."""
    model.add_adapter(target, model.peft_config[source])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for param_name, param in list(adapter_parameters(model, source)):
            parts = [target if part == source else part for part in param_name.split(".")]
            if not param.is_meta:  # a base on the meta device (placement checks) has no values to copy
                params[".".join(parts)].copy_(param)
    for _, param in adapter_parameters(model, target):
        param.requires_grad_(trainable)


def scalar_head(
    hidden_size: int,
    weights: dict[str, torch.Tensor] | None,
    trainable: bool,
    device: torch.device | str | None = None,
) -> torch.nn.Linear:
    """A (hidden -> 1) fp32 head from saved weights, or zero-initialised (N implementation details: value head),
    made on ``device``: the base's, which bitsandbytes chose for a quantized base that cannot be moved after."""
    head = torch.nn.Linear(hidden_size, 1, bias=bool(weights and "bias" in weights), device=device)
    with torch.no_grad():
        if weights:
            head.weight.copy_(weights["weight"].reshape(1, hidden_size))
            if "bias" in weights and head.bias is not None:
                head.bias.copy_(weights["bias"].reshape(1))
        else:
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    head.requires_grad_(trainable)
    return head.float()
