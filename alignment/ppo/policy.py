"""Model assembly for PPO: one base carrying the SFT reference, policy, reward and value adapters; and its export.

Why one base: policy, reference, critic and reward model would otherwise be four copies of the same
weights. Here the frozen base is loaded once and each role is a LoRA adapter on it (:mod:`.adapters`):
``sft`` (the frozen KL reference), ``policy`` (initialised from ``sft``, trained), ``reward`` (frozen,
with its score head) and ``value`` (initialised from ``reward`` when the reward model shares the base,
trained; absent for the critic-free estimators). The policy is saved in the stage-output layout (:mod:`alignment.modeling.stage_dir`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model

from alignment.core.config import Config, LoraConfig
from alignment.modeling.fused_lora import use_fused_lora
from alignment.modeling.load import load_causal_lm
from alignment.modeling.lora import peft_lora_config, trainable_token_targets
from alignment.modeling.module_utils import disable_dropout
from alignment.modeling.scoring import RewardStats
from alignment.modeling.stage_dir import ADAPTER_DIR, save_stage_model, shares_base, stage_base
from alignment.modeling.tokenizer import load_tokenizer
from alignment.ppo.actor_critic import ActorCritic
from alignment.ppo.adapters import (
    COST,
    POLICY,
    REWARD,
    SFT,
    VALUE,
    adapter_parameters,
    add_adapter_from,
    checkpoint_under_the_active_adapter,
    copy_adapter,
    scalar_head,
)
from alignment.ppo.rewards import SharedScorer


def build_actor_critic(cfg: Config, device: str | None = None) -> tuple[ActorCritic, Any, dict[str, SharedScorer]]:
    """Load one base and put the PPO roles on it as adapters; returns (actor-critic, tokenizer, the reward and cost
    models that ride on it as adapters, by path). ``device``: where the base loads (default: the accelerator)."""

    def fresh_lora():  # a new config object per adapter: peft keeps (and edits) the one it is given
        return peft_lora_config(cfg.lora, "CAUSAL_LM", trainable_token_targets(base, "CAUSAL_LM"))

    ppo = cfg.ppo
    base_cfg, sft_adapter = stage_base(ppo.sft_model_path or cfg.model.model_name_or_path, cfg.model)
    policy_source = dataclasses.replace(
        cfg.model, model_name_or_path=ppo.sft_model_path or cfg.model.model_name_or_path
    )
    tokenizer = load_tokenizer(policy_source, padding_side="left")
    # An SFT output trained on another stage's (sft_safety on sft) sits on a stage dir: its adapters are merged.
    base = load_causal_lm(
        base_cfg, LoraConfig(use_lora=False), cfg.quant, trainable=False, merge_adapters=True, device=device
    )
    base.requires_grad_(False)
    if sft_adapter is not None:
        model = PeftModel.from_pretrained(base, str(sft_adapter), adapter_name=SFT, is_trainable=False)
        copy_adapter(model, SFT, POLICY, trainable=True)
        reference = SFT
    else:  # full SFT weights: the base *is* the SFT policy, so "adapters off" is the reference
        model = get_peft_model(base, fresh_lora(), adapter_name=POLICY)
        reference = None
    hidden = base.config.hidden_size
    device = base.get_output_embeddings().weight.device  # every head is made where the base is
    reward_heads, shared = add_shared_reward_models(model, ppo, base_cfg, hidden, device)
    value_head = None  # the critic-free estimators (rloo, grpo, reinforce_pp) carry no value adapter at all
    if ppo.algorithm == "ppo":
        critic_from = reward_heads.get(REWARD)
        value_head = add_critic(model, ppo.critic_init, critic_from, reference, hidden, fresh_lora, device)
    model.requires_grad_(False)
    for adapter in (POLICY, VALUE) if value_head is not None else (POLICY,):
        for _, param in adapter_parameters(model, adapter):
            param.requires_grad_(True)
    disable_dropout(model)  # also the LoRA dropout: PPO's ratios need deterministic log-probs
    use_fused_lora(model)  # the LoRA layers' fast paths (fused under CPU autocast, folded for sampling)
    if cfg.model.gradient_checkpointing:  # the base is loaded frozen, so the loader does not switch it on
        checkpoint_under_the_active_adapter(model)
    ac = ActorCritic(model, value_head, reward_heads, reference_adapter=reference, padding_free=ppo.padding_free)
    return ac, tokenizer, shared


def add_shared_reward_models(
    model: PeftModel, ppo: Any, base_cfg: Any, hidden: int, device: torch.device
) -> tuple[dict[str, torch.nn.Linear], dict[str, SharedScorer]]:
    """Every reward and cost model that is a LoRA output on the policy's base, added as a frozen adapter with its
    score head: ``reward`` for the first reward model (the critic starts from it), ``reward_<i>`` for the others,
    ``cost`` for the cost model. One base instead of one full model copy each. Returns the heads by adapter name and
    the scorers by path."""
    roles = [(path, REWARD if i == 0 else f"{REWARD}_{i}") for i, path in enumerate(ppo.reward_model_paths)]
    if ppo.cost_model_path:
        roles.append((ppo.cost_model_path, COST))
    heads: dict[str, torch.nn.Linear] = {}
    shared: dict[str, SharedScorer] = {}
    for path, adapter in roles:
        if path in shared or not shares_base(path, base_cfg):
            continue
        weights = add_adapter_from(model, adapter, Path(path) / ADAPTER_DIR, trainable=False)
        heads[adapter] = scalar_head(hidden, weights, trainable=False, device=device)
        shared[path] = SharedScorer(Path(path).name, RewardStats.load(path), adapter)
    return heads, shared


def add_critic(
    model: PeftModel,
    critic_init: str,
    reward_head: torch.nn.Linear | None,
    reference: str | None,
    hidden: int,
    fresh_lora: Callable[[], Any],
    device: torch.device,
) -> torch.nn.Linear:
    """Add the trainable ``value`` adapter: a copy of the shared-base reward model (adapter and head) when there is
    one, else of the SFT adapter with a zero value head. Returns the value head."""
    from_reward = reward_head is not None and critic_init in ("auto", "reward")
    if critic_init == "reward" and reward_head is None:
        raise ValueError(
            "critic_init=reward needs a reward model trained on the policy's base (LoRA reward stage output)"
        )
    if from_reward:
        copy_adapter(model, REWARD, VALUE, trainable=True)
        return scalar_head(hidden, {"weight": reward_head.weight.detach().clone()}, trainable=True, device=device)
    if reference is not None:  # value adapter starts as the SFT adapter, with a zero value head
        copy_adapter(model, reference, VALUE, trainable=True)
    else:
        model.add_adapter(VALUE, fresh_lora())
    return scalar_head(hidden, None, trainable=True, device=device)


def save_policy(
    ac: ActorCritic, tokenizer: Any, output_dir: Path, cfg: Config, state_dict: dict[str, Any] | None = None
) -> Path:
    """Write the policy adapter in the stage output layout (``adapter/`` on the SFT's base).

    ``state_dict``: the trainable weights gathered whole from a sharded base (``core.sharding``)."""
    base_cfg, _ = stage_base(cfg.ppo.sft_model_path or cfg.model.model_name_or_path, cfg.model)
    sits_on = {"model_name_or_path": base_cfg.model_name_or_path, "revision": base_cfg.revision}
    return save_stage_model(
        ac.model, tokenizer, output_dir, cfg.model, adapter_name=POLICY, sits_on=sits_on, state_dict=state_dict
    )
