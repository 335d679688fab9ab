"""PPO stage: optimise the SFT policy against reward models with a KL penalty to the SFT policy.

InstructGPT (Ouyang et al. 2022, eq. 2) on torch + accelerate + peft, written here because trl
dropped its PPO trainer after 1.12. What differs from trl 1.12 (see ../shared/peer-baseline.md):
one base model carries policy, reference, critic and reward as LoRA adapters (``adapters.py``);
the reference is the SFT adapter, not the bare base; reward models may use any tokenizer
(``scoring.py``); fixed or adaptive KL; a PPO-Lagrangian harmlessness constraint; checkpoints
that resume with the same KL coefficient, multiplier and data position; no full-vocabulary
logits over the prompt. The math lives in ``rl_math.py`` as pure, tested functions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignment.core.checkpointing import (
    GracefulInterrupt,
    TrainingInterrupted,
    load_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)
from alignment.core.config import Config, DataConfig, LoraConfig, ModelConfig, QuantConfig, TrainConfig
from alignment.core.precision import autocast_dtype, store_frozen_weights_in, tied_head_copy
from alignment.core.run import Run, mark_done, start_run
from alignment.core.tracking import progress
from alignment.ppo.actor_critic import ActorCritic, SequenceBatch
from alignment.rl.rl_math import (
    AdaptiveKLController,
    FixedKLController,
    LagrangeMultiplier,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    first_eos_mask,
    gae_advantages,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
)
from alignment.training.loop import adamw, local_shard, micro_batch_indices, reduce_sum

logger = logging.getLogger(__name__)


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class PPOConfig:
    sft_model_path: str | None = _help(
        "SFT stage output (policy init and KL reference); default: model_name_or_path.", default=None
    )
    reward_model_paths: list[str] = _help(
        "Reward stage outputs (or sequence-classification models).", default_factory=list
    )
    reward_weights: list[float] = _help(
        "Weight of each reward model's normalised score (default 1 each).", default_factory=list
    )
    cost_model_path: str | None = _help("A harmfulness (cost) model for the PPO-Lagrangian constraint.", default=None)
    cost_threshold: float = _help("Constraint: mean normalised cost must stay below this.", default=0.0)
    lagrange_init: float = _help("Initial Lagrange multiplier.", default=1.0)
    lagrange_lr: float = _help("Lagrange multiplier learning rate.", default=0.05)
    critic_init: str = _help(
        "auto, reward (value adapter from the reward adapter) or sft (zero value head).", default="auto"
    )
    critic_warmup_steps: int = _help("Updates that train only the critic before the policy moves.", default=0)
    padding_free: bool = _help(
        "Pack sequences into rows without padding for every pass after generation (exact; skips the padding).",
        default=True,
    )
    rollout_logprobs: str = _help(
        "Source of the rollout's log-probs: generate (the sampling logits, no extra pass), recompute (a packed "
        "no-grad policy pass, rounded as the update's forward is), or auto (recompute when the passes run in "
        "bf16/fp16, where the two differ: KL 0.11 nats per sequence between identical policies otherwise).",
        default="auto",
    )
    total_episodes: int = _help("Prompts to sample in total (episodes).", default=64)
    rollout_batch_size: int = _help("Prompts per PPO update per process.", default=8)
    mini_batch_size: int = _help(
        "Sequences per gradient step inside an update. Equal to rollout_batch_size, the first step reuses the "
        "rollout's critic (and, under bf16/fp16, policy) passes: one forward fewer each, both graphs held until then.",
        default=8,
    )
    ppo_epochs: int = _help("Passes over each rollout batch.", default=1)
    max_new_tokens: int = _help("Longest response.", default=48)
    max_prompt_length: int = _help("Longer prompts are truncated from the left.", default=256)
    temperature: float = _help("Sampling temperature (log-probs use the same one).", default=0.7)
    top_k: int = _help("Must be 0: top-k sampling biases the KL estimate.", default=0)
    top_p: float = _help("Must be 1.0: nucleus sampling biases the KL estimate.", default=1.0)
    repetition_penalty: float = _help("Must be 1.0: it changes the sampled distribution.", default=1.0)
    kl_coef: float = _help("KL penalty coefficient beta (initial value when adaptive).", default=0.05)
    kl_estimator: str = _help("Per-token KL in the reward: k1 (unbiased log-ratio) or k3.", default="k1")
    adaptive_kl: bool = _help("Adapt beta towards kl_target (Ziegler et al. 2019).", default=False)
    kl_target: float = _help("Target per-sequence KL (nats) for the adaptive controller and the alarm.", default=6.0)
    kl_horizon: int = _help("Adaptive controller horizon (episodes).", default=10000)
    kl_stop_factor: float = _help("Stop when KL exceeds this multiple of kl_target.", default=10.0)
    gamma: float = _help("GAE discount.", default=1.0)
    lam: float = _help("GAE lambda.", default=0.95)
    clip_eps: float = _help("PPO policy clip range.", default=0.2)
    value_clip_eps: float = _help("Value clip range.", default=0.2)
    vf_coef: float = _help("Value loss weight.", default=0.1)
    value_learning_rate: float | None = _help("Critic learning rate (default: learning_rate).", default=None)
    whiten_rewards: bool = _help("Whiten the shaped rewards before GAE.", default=False)
    reward_clip: float = _help("Clip the combined normalised score to +-this.", default=10.0)
    missing_eos_penalty: float = _help("Subtracted from the score of responses without EOS.", default=1.0)
    sample_table_steps: int = _help("Write a table of prompts and responses every N updates.", default=5)
    eval_prompts: int = _help("Held-out prompts whose fresh-sample reward is measured before and after.", default=16)
    policy_snapshots: bool = _help(
        "At each checkpoint also export the policy to snapshots/step-N (loadable; for the over-optimisation curve).",
        default=True,
    )


CONFIG_TYPES = (ModelConfig, LoraConfig, QuantConfig, DataConfig, TrainConfig, PPOConfig)


@dataclass
class Rollout:
    """One batch of experience. Shapes: B sequences, T response tokens."""

    prompts: list  # B prompt message tuples
    responses: list[str]
    batch: SequenceBatch
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) bool: valid tokens up to and including EOS
    logprobs: torch.Tensor  # (B, T) policy log-probs at sampling time
    ref_logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,) combined, normalised, clipped, EOS-penalised
    raw_scores: dict[str, torch.Tensor]  # per reward model, (B,)
    has_eos: torch.Tensor  # (B,)
    values_graph: torch.Tensor | None = None  # (B, T) ``values`` with the critic's autograd graph, used once
    logprobs_graph: torch.Tensor | None = None  # (B, T) ``logprobs`` with the policy's autograd graph, used once
    entropy: torch.Tensor | None = None  # (B, T) the policy's entropy from that same pass


def validate_sampling(cfg: PPOConfig) -> None:
    """Reject sampling settings under which the KL and the log-prob ratio are computed on the wrong distribution."""
    problems = []
    if cfg.top_k != 0:
        problems.append(f"top_k={cfg.top_k}")
    if cfg.top_p != 1.0:
        problems.append(f"top_p={cfg.top_p}")
    if cfg.repetition_penalty != 1.0:
        problems.append(f"repetition_penalty={cfg.repetition_penalty}")
    if cfg.temperature <= 0:
        problems.append(f"temperature={cfg.temperature} (greedy)")
    if problems:
        raise ValueError(
            f"PPO sampling must be plain temperature sampling, but {', '.join(problems)} was set: the log-probs "
            "PPO optimises and the KL penalty are computed from softmax(logits / temperature), so truncated or "
            "penalised sampling draws from another distribution and biases both (negative KL, trl#1017)."
        )
    if cfg.kl_estimator not in ("k1", "k3"):
        raise ValueError(f"kl_estimator must be k1 or k3, got {cfg.kl_estimator!r}")
    _check_rollout_logprobs(cfg.rollout_logprobs)  # here too, so a typo fails before any model is loaded
    if cfg.reward_weights and len(cfg.reward_weights) != len(cfg.reward_model_paths):
        raise ValueError("reward_weights needs one weight per entry of reward_model_paths")


def generation_config(cfg: PPOConfig, tokenizer):  # -> transformers.GenerationConfig
    from transformers import GenerationConfig

    eos_ids = sorted({tokenizer.eos_token_id, *getattr(tokenizer, "stop_token_ids", [])} - {None})
    return GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )


# ------------------------------------------------------------------------------------------ rollout


@torch.no_grad()
def collect_rollout(
    ac: ActorCritic,
    rewards,
    prompts: list,
    tokenizer,
    cfg: PPOConfig,
    kl_coef: float,
    keep_value_graph: bool = False,
    recompute_logprobs: bool = False,
    keep_policy_graph: bool = False,
) -> Rollout:
    """Sample responses, then score them and compute reference log-probs and values.

    ``keep_value_graph``: the critic pass runs with autograd on and its graph is kept in
    ``Rollout.values_graph``, so the first PPO epoch -- when one mini-batch is the whole rollout and the
    critic has not moved yet -- back-propagates through it instead of running the same forward again.
    ``recompute_logprobs``: the policy's log-probs come from a packed pass, not from the sampling logits
    (see :func:`recomputes_rollout_logprobs`). ``keep_policy_graph`` keeps that pass's graph the same way
    (dropout is off, so it is the pass the first mini-batch would run: same weights, inputs and precision).
    """
    from alignment.data.collate import PromptCollator

    encoded = PromptCollator(tokenizer, max_prompt_length=cfg.max_prompt_length)(prompts)
    prompt_ids, prompt_mask = encoded["input_ids"].to(ac.device), encoded["attention_mask"].to(ac.device)
    ac.eval()
    response_ids, sample_logits = ac.generate(
        prompt_ids, prompt_mask, generation_config(cfg, tokenizer), with_logits=not recompute_logprobs
    )
    eos_ids = generation_config(cfg, tokenizer).eos_token_id
    response_mask, has_eos = first_eos_mask(response_ids, eos_ids, tokenizer.pad_token_id)
    _ensure_one_token(response_mask)
    batch = SequenceBatch.build(prompt_ids, prompt_mask, response_ids, response_mask)
    from alignment.rl.rl_math import logprobs_from_logits

    logprobs_graph = entropy = None
    if recompute_logprobs:
        with torch.set_grad_enabled(keep_policy_graph):
            logprobs_graph, entropy = ac.response_logprobs(
                batch, response_ids, cfg.temperature, with_entropy=keep_policy_graph
            )
        logprobs = logprobs_graph.detach()
    else:
        logprobs = logprobs_from_logits(sample_logits, response_ids, cfg.temperature)
    ref_logprobs, _ = ac.response_logprobs(batch, response_ids, cfg.temperature, role="reference")
    responses = tokenizer.batch_decode(
        [ids[mask] for ids, mask in zip(response_ids, response_mask)], skip_special_tokens=True
    )
    messages = [p.messages for p in prompts]
    scores, raw = rewards.combined(ac, batch, messages, responses)
    scores = scores.to(ac.device) - cfg.missing_eos_penalty * (~has_eos).float()
    # The critic pass comes last, so a kept graph lives only until the update's first backward.
    with torch.set_grad_enabled(keep_value_graph):
        values_graph = ac.response_values(batch, response_ids.shape[1])
    return Rollout(
        messages,
        responses,
        batch,
        response_ids,
        response_mask,
        logprobs,
        ref_logprobs,
        values_graph.detach(),
        scores,
        raw,
        has_eos,
        values_graph if keep_value_graph else None,
        logprobs_graph if keep_policy_graph else None,
        entropy,
    )


def recomputes_rollout_logprobs(cfg: PPOConfig, ac: ActorCritic, mixed_precision: str) -> bool:
    """Whether the rollout's log-probs need their own packed pass (``rollout_logprobs``).

    In fp32 the sampling logits of KV-cached generation and the packed pass agree to ~1e-5, so the
    rollout reuses the former. In bf16/fp16 they round differently, and the KL between the policy and
    its identical reference copy at update 1 reads 0.11-0.19 nats per sequence instead of 0
    (bench/RESULTS.md); the update's ratios are off by as much. A pass like the update's removes that.
    """
    choice = _check_rollout_logprobs(cfg.rollout_logprobs)
    if choice != "auto":
        return choice == "recompute"
    low_precision = (torch.bfloat16, torch.float16)
    return autocast_dtype(mixed_precision) is not None or ac.weights_dtype in low_precision


def _check_rollout_logprobs(choice: str) -> str:
    if choice not in ("auto", "generate", "recompute"):
        raise ValueError(f"rollout_logprobs: expected auto, generate or recompute, got {choice!r}")
    return choice


def _ensure_one_token(response_mask: torch.Tensor) -> None:
    # A response whose first token is padding has no valid token; count its first token so the score lands somewhere.
    response_mask[:, 0] = True


# ------------------------------------------------------------------------------------------ update


def ppo_update(
    ac: ActorCritic,
    optimizer,
    rollout: Rollout,
    advantages,
    returns,
    cfg: PPOConfig,
    train_policy: bool,
    max_grad_norm: float,
    average_gradients: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Several epochs of clipped policy and value updates over mini-batches of one rollout.

    ``average_gradients`` (multi-process) runs before clipping, so every rank clips and steps the same gradient.
    """
    stats: dict[str, list[float]] = {}
    n = rollout.response_ids.shape[0]
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.mini_batch_size):
            idx = order[start : start + cfg.mini_batch_size].to(ac.device)
            batch, mask = rollout.batch.select(idx), rollout.response_mask[idx]
            ac.train()
            # Critic first, then the policy. A graph kept from the rollout (whole batch, nothing stepped yet)
            # stands in for the forward and is freed by its backward.
            if rollout.values_graph is not None and len(idx) == n:
                values, rollout.values_graph = rollout.values_graph[idx], None
            else:
                values = ac.response_values(batch, mask.shape[1])
            vf_loss, vf_clipfrac = clipped_value_loss(
                values, rollout.values[idx], returns[idx], mask, cfg.value_clip_eps
            )
            (cfg.vf_coef * vf_loss).backward()
            if train_policy:
                if rollout.logprobs_graph is not None and len(idx) == n:
                    logprobs, entropy = rollout.logprobs_graph[idx], rollout.entropy[idx]
                    rollout.logprobs_graph = rollout.entropy = None
                else:
                    logprobs, entropy = ac.response_logprobs(
                        batch, rollout.response_ids[idx], cfg.temperature, with_entropy=True
                    )
                pg_loss, pg_stats = clipped_policy_loss(
                    logprobs, rollout.logprobs[idx], advantages[idx], mask, cfg.clip_eps
                )
                pg_loss.backward()
                _append(
                    stats,
                    {
                        "loss/policy_avg": pg_loss,
                        "policy/entropy_avg": masked_mean(entropy, mask),
                        **{f"policy/{k}": v for k, v in pg_stats.items()},
                    },
                )
            if average_gradients is not None:
                average_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(ac.trainable_parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _append(stats, {"loss/value_avg": vf_loss, "val/clipfrac_avg": vf_clipfrac, "train/grad_norm": grad_norm})
    rollout.values_graph = rollout.logprobs_graph = rollout.entropy = None
    return {k: sum(v) / len(v) for k, v in stats.items()}


def _append(stats: dict[str, list[float]], values: dict[str, Any]) -> None:
    for key, value in values.items():
        stats.setdefault(key, []).append(float(value.detach() if isinstance(value, torch.Tensor) else value))


def sync_gradients(run: Run, params: list[torch.nn.Parameter]) -> None:
    """Average gradients across processes (the adapters are small, so one all-reduce each is cheap)."""
    if run.accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad /= run.accelerator.num_processes


def global_whiten(run: Run, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whiten over the valid tokens of the *global* batch (all processes), DESIGN.md item 13."""
    if run.accelerator.num_processes == 1:
        return masked_whiten(x, mask)
    m = mask.float()
    total, total_sq, count = reduce_sum(run, [float((x * m).sum()), float((x * x * m).sum()), float(m.sum())])
    mean = total / count
    var = (total_sq / count - mean * mean) * count / max(count - 1, 1)
    return torch.where(mask.bool(), (x - mean) / math.sqrt(var + 1e-8), torch.zeros_like(x))


# ------------------------------------------------------------------------------------------ rewards


class CombinedReward:
    """Normalised, weighted reward models (plus an optional cost model with a Lagrange multiplier)."""

    def __init__(
        self,
        scorers: list,
        weights: list[float],
        shared_index: int | None,
        cost_scorer=None,
        lagrange=None,
        clip: float = 10.0,
    ) -> None:
        self.scorers, self.weights, self.shared_index = scorers, weights, shared_index
        self.cost_scorer, self.lagrange, self.clip = cost_scorer, lagrange, clip

    def combined(
        self, ac: ActorCritic, batch: SequenceBatch, prompts: list, responses: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raw: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(responses))
        for i, (scorer, weight) in enumerate(zip(self.scorers, self.weights)):
            if i == self.shared_index:
                score = ac.reward_scores(batch).float().cpu()  # same tokenizer and template: score the sampled ids
            else:
                score = scorer.score(prompts, responses)
            raw[scorer.name] = score
            total += weight * scorer.stats.normalize(score)
        if self.cost_scorer is not None:
            cost = self.cost_scorer.stats.normalize(self.cost_scorer.score(prompts, responses))
            raw["cost"] = cost
            lam = self.lagrange.value
            # PPO-Lagrangian (Safe RLHF, Dai et al. 2023): maximise R - lambda C, rescaled by 1 / (1 + lambda).
            total = (total - lam * cost) / (1.0 + lam)
        return total.clamp(-self.clip, self.clip), raw


def build_rewards(cfg: Config, ac: ActorCritic, shared_scorer) -> CombinedReward:
    from alignment.modeling.scoring import load_reward_scorer

    ppo = cfg.ppo
    scorers, shared_index = [], None
    for i, path in enumerate(ppo.reward_model_paths):
        if i == 0 and shared_scorer is not None:
            scorers.append(shared_scorer)
            shared_index = 0
        else:
            scorers.append(load_reward_scorer(path, quant_cfg=cfg.quant, device=ac.device))
    weights = list(ppo.reward_weights) or [1.0] * len(scorers)
    cost_scorer = lagrange = None
    if ppo.cost_model_path:
        cost_scorer = load_reward_scorer(ppo.cost_model_path, name="cost", quant_cfg=cfg.quant, device=ac.device)
        lagrange = LagrangeMultiplier(init=ppo.lagrange_init, lr=ppo.lagrange_lr, threshold=ppo.cost_threshold)
    return CombinedReward(scorers, weights, shared_index, cost_scorer, lagrange, ppo.reward_clip)


# ------------------------------------------------------------------------------------------ models


def stage_base(stage_dir: str | Path, model_cfg: ModelConfig) -> tuple[ModelConfig, Path | None]:
    """(config of the base a stage output sits on, its adapter dir or None for full weights)."""
    import dataclasses
    import json

    stage_dir = Path(stage_dir)
    info_path = stage_dir / "base_model.json"
    if not info_path.is_file():
        return dataclasses.replace(model_cfg, model_name_or_path=str(stage_dir)), None
    info = json.loads(info_path.read_text(encoding="utf-8"))
    adapter = stage_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        base = dataclasses.replace(
            model_cfg, model_name_or_path=info["model_name_or_path"], revision=info.get("revision")
        )
        return base, adapter
    return dataclasses.replace(model_cfg, model_name_or_path=str(stage_dir)), None


def build_actor_critic(cfg: Config) -> tuple[ActorCritic, Any, Any]:
    """Load one base and put the PPO roles on it as adapters; returns (actor-critic, tokenizer, shared scorer)."""
    import dataclasses

    from peft import PeftModel, get_peft_model

    from alignment.modeling.load import (
        disable_dropout,
        load_causal_lm,
        load_tokenizer,
        peft_lora_config,
        trainable_token_targets,
    )
    from alignment.modeling.scoring import RewardStats
    from alignment.ppo.adapters import (
        POLICY,
        REWARD,
        SFT,
        VALUE,
        adapter_parameters,
        add_adapter_from,
        copy_adapter,
        scalar_head,
    )

    def fresh_lora():  # a new config object per adapter: peft keeps (and edits) the one it is given
        return peft_lora_config(cfg.lora, "CAUSAL_LM", trainable_token_targets(base, "CAUSAL_LM"))

    ppo = cfg.ppo
    base_cfg, sft_adapter = stage_base(ppo.sft_model_path or cfg.model.model_name_or_path, cfg.model)
    policy_source = dataclasses.replace(
        cfg.model, model_name_or_path=ppo.sft_model_path or cfg.model.model_name_or_path
    )
    tokenizer = load_tokenizer(policy_source, padding_side="left")
    base = load_causal_lm(base_cfg, LoraConfig(use_lora=False), cfg.quant, trainable=False)
    base.requires_grad_(False)
    if sft_adapter is not None:
        model = PeftModel.from_pretrained(base, str(sft_adapter), adapter_name=SFT, is_trainable=False)
        copy_adapter(model, SFT, POLICY, trainable=True)
        reference = SFT
    else:  # full SFT weights: the base *is* the SFT policy, so "adapters off" is the reference
        model = get_peft_model(base, fresh_lora(), adapter_name=POLICY)
        reference = None
    hidden = base.config.hidden_size
    reward_head, shared_scorer = None, None
    rm_path = ppo.reward_model_paths[0] if ppo.reward_model_paths else None
    shares_base = rm_path is not None and _shares_base(rm_path, base_cfg)
    if shares_base:
        head_weights = add_adapter_from(model, REWARD, Path(rm_path) / "adapter", trainable=False)
        reward_head = scalar_head(hidden, head_weights, trainable=False)
        shared_scorer = _SharedScorer(Path(rm_path).name, RewardStats.load(rm_path))
    critic_from_reward = shares_base and ppo.critic_init in ("auto", "reward")
    if ppo.critic_init == "reward" and not shares_base:
        raise ValueError(
            "critic_init=reward needs a reward model trained on the policy's base (LoRA reward stage output)"
        )
    if critic_from_reward:
        copy_adapter(model, REWARD, VALUE, trainable=True)
        value_head = scalar_head(hidden, {"weight": reward_head.weight.detach().clone()}, trainable=True)
    else:
        if reference is not None:  # value adapter starts as the SFT adapter, with a zero value head
            copy_adapter(model, reference, VALUE, trainable=True)
        else:
            model.add_adapter(VALUE, fresh_lora())
        value_head = scalar_head(hidden, None, trainable=True)
    model.requires_grad_(False)
    for adapter in (POLICY, VALUE):
        for _, param in adapter_parameters(model, adapter):
            param.requires_grad_(True)
    disable_dropout(model)  # also the LoRA dropout: PPO's ratios need deterministic log-probs
    ac = ActorCritic(model, value_head, reward_head, reference_adapter=reference, padding_free=ppo.padding_free)
    return ac, tokenizer, shared_scorer


class _SharedScorer:
    """Name and statistics of the reward model that lives on the shared base (scored by ``ActorCritic``)."""

    def __init__(self, name: str, stats) -> None:
        self.name, self.stats = name, stats


def _shares_base(reward_dir: str, policy_base: ModelConfig) -> bool:
    import json

    info_path = Path(reward_dir) / "base_model.json"
    if not info_path.is_file() or not (Path(reward_dir) / "adapter" / "adapter_config.json").is_file():
        return False
    info = json.loads(info_path.read_text(encoding="utf-8"))
    return (
        info.get("model_name_or_path") == policy_base.model_name_or_path
        and info.get("revision") == policy_base.revision
    )


# ------------------------------------------------------------------------------------------ the loop


@torch.no_grad()
def heldout_reward(
    ac: ActorCritic, rewards: CombinedReward, prompts: list, tokenizer, cfg: PPOConfig, seed: int
) -> float:
    """Mean combined reward of fresh samples on held-out prompts (seeded; the training RNG is left untouched)."""
    if not prompts:
        return float("nan")
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    scores = []
    for start in range(0, len(prompts), cfg.rollout_batch_size):
        rollout = collect_rollout(ac, rewards, prompts[start : start + cfg.rollout_batch_size], tokenizer, cfg, 0.0)
        scores.append(rollout.scores.cpu())
    torch.set_rng_state(rng_state)
    return float(torch.cat(scores).mean())


def rollout_statistics(rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> dict[str, float]:
    mask = rollout.response_mask
    kl_per_sequence = (kl * mask).sum(-1)
    stats = {
        "objective/scores": float(rollout.scores.mean()),
        "objective/kl": float(kl_per_sequence.mean()),
        "objective/kl_coef": kl_coef,
        "objective/non_score_reward": float(-kl_coef * kl_per_sequence.mean()),
        "objective/rlhf_reward": float(rollout.scores.mean() - kl_coef * kl_per_sequence.mean()),
        "val/response_length": float(mask.sum(-1).float().mean()),
        "val/no_eos_share": float((~rollout.has_eos).float().mean()),
    }
    for name, raw in rollout.raw_scores.items():
        stats[f"objective/raw_score/{name}"] = float(raw.mean())
    return stats


def check_guard_rails(stats: dict[str, float], cfg: PPOConfig, step: int) -> None:
    """Stop loudly on non-finite values or a KL far past its target; warn on negative KL."""
    for key in ("objective/kl", "objective/scores", "loss/value_avg", "loss/policy_avg"):
        if key in stats and not math.isfinite(stats[key]):
            raise FloatingPointError(
                f"PPO step {step}: {key} is {stats[key]}; lower the learning rate or check the reward model"
            )
    kl = stats["objective/kl"]
    if kl > cfg.kl_stop_factor * cfg.kl_target:
        raise RuntimeError(
            f"PPO step {step}: KL {kl:.2f} nats is over {cfg.kl_stop_factor}x the target {cfg.kl_target}: the policy has "
            "run away from the SFT policy. Raise kl_coef, lower the learning rate, or use adaptive_kl."
        )
    if kl < -0.5:
        logger.warning("step %d: negative KL (%.3f): sampling and log-prob computation disagree", step, kl)


def train(cfg: Config) -> dict[str, Any]:
    """Run PPO; returns the metrics written to ``metrics.json``."""
    ppo, train_cfg = cfg.ppo, cfg.train
    validate_sampling(ppo)
    from alignment.data.load import load_records

    with start_run(cfg, "ppo") as run:
        records = load_records(cfg.data, "prompt", seed=train_cfg.seed)
        ac, tokenizer, shared_scorer = build_actor_critic(cfg)
        ac.autocast = run.accelerator.autocast  # bf16: every pass through the base, generation included
        quantized = cfg.quant.load_in_8bit or cfg.quant.load_in_4bit
        if not quantized:  # bitsandbytes placed the quantized weights when loading
            ac.to(run.device)
        compute_dtype = autocast_dtype(run.accelerator.mixed_precision)
        if compute_dtype is not None:  # every pass runs under autocast: see precision.py
            if not quantized:
                store_frozen_weights_in(ac.model, compute_dtype)
            ac.generation_head = tied_head_copy(ac.model.get_base_model(), compute_dtype)
        rewards = build_rewards(cfg, ac, shared_scorer)
        if not rewards.scorers:
            raise ValueError("PPO needs at least one reward model: set reward_model_paths")
        eval_prompts = list(records.eval_records)[: ppo.eval_prompts]
        metrics = ppo_loop(run, ac, rewards, list(records.records), eval_prompts, tokenizer)
        if run.is_main:
            _save_policy(ac, tokenizer, run.output_dir, cfg)
            run.metrics.write_metrics(metrics)
            mark_done(run.output_dir)
    return metrics


def ppo_loop(
    run: Run, ac: ActorCritic, rewards: CombinedReward, prompts: list, eval_prompts: list, tokenizer
) -> dict[str, Any]:
    cfg, train_cfg = run.cfg.ppo, run.cfg.train
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    recompute_logprobs = recomputes_rollout_logprobs(cfg, ac, run.accelerator.mixed_precision)
    if recompute_logprobs:
        logger.info("rollout log-probs: a packed policy pass (rollout_logprobs=%s)", cfg.rollout_logprobs)
    global_batch = cfg.rollout_batch_size * world
    if world > 1 and len(prompts) < global_batch:
        raise ValueError(
            f"{len(prompts)} training prompts cannot fill one rollout batch of {cfg.rollout_batch_size} prompts "
            f"on each of {world} processes: use more prompts or a smaller rollout_batch_size"
        )
    batches_per_epoch = max(len(prompts) // global_batch, 1)
    total_updates = max(cfg.total_episodes // global_batch, 1)
    # One mini-batch per epoch: the first one back-propagates through the rollout's own critic (and recomputed
    # policy) passes, one forward fewer each; the two graphs are then held together until the update. Not with
    # gradient checkpointing: the rollout runs in eval mode, where checkpointing is off, so a kept graph would hold
    # every activation the user asked not to keep.
    reuse_rollout_passes = cfg.mini_batch_size >= cfg.rollout_batch_size and not run.cfg.model.gradient_checkpointing
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.kl_coef)
    )
    value_params = [
        p for n, p in ac.named_parameters() if p.requires_grad and (".value." in n or n.startswith("value_head"))
    ]
    policy_params = [p for p in ac.trainable_parameters() if all(p is not v for v in value_params)]
    optimizer = adamw(
        [{"params": policy_params}, {"params": value_params, "lr": cfg.value_learning_rate or train_cfg.learning_rate}],
        lr=train_cfg.learning_rate,
    )
    start, state = 0, {}
    checkpoint = newest_checkpoint(run.output_dir) if train_cfg.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model=ac, optimizer=optimizer)
        start = state["step"]
        kl_ctl.load_state_dict(state["kl_controller"])
        if rewards.lagrange is not None:
            rewards.lagrange.load_state_dict(state["lagrange"])
    reward_before = state.get("heldout_reward_before")
    if reward_before is None:
        reward_before = heldout_reward(ac, rewards, eval_prompts, tokenizer, cfg, train_cfg.seed)
    first_scores = state.get("reward_mean_first")
    bar = progress(total=total_updates, desc="ppo", enabled=run.is_main, initial=start)
    timing = {"generate": 0.0, "train": 0.0}
    episodes, stats = 0, {}
    with GracefulInterrupt() as interrupt:
        for step in range(start, total_updates):
            # 1. Take this update's prompts: a seeded permutation per epoch, so the data position follows from the step.
            epoch, k = divmod(step, batches_per_epoch)
            indices = local_shard(
                micro_batch_indices(len(prompts), global_batch, epoch, train_cfg.seed)[k], rank, world
            )
            t0 = time.perf_counter()
            # 2. Roll out: sample, score, reference log-probs and values (without grad, except the passes the update reuses).
            rollout = collect_rollout(
                ac,
                rewards,
                [prompts[i] for i in indices],
                tokenizer,
                cfg,
                kl_ctl.value,
                keep_value_graph=reuse_rollout_passes,
                recompute_logprobs=recompute_logprobs,
                keep_policy_graph=reuse_rollout_passes and step >= cfg.critic_warmup_steps,
            )
            t1 = time.perf_counter()
            # 3. Per-token rewards: -beta * KL on every token, the score on the last (InstructGPT eq. 2).
            shaped, kl = kl_shaped_rewards(
                rollout.scores,
                rollout.logprobs,
                rollout.ref_logprobs,
                rollout.response_mask,
                kl_ctl.value,
                cfg.kl_estimator,
            )
            if cfg.whiten_rewards:
                shaped = global_whiten(run, shaped, rollout.response_mask)
            # 4. Advantages and returns by GAE, advantages whitened over the global batch.
            advantages, returns = gae_advantages(shaped, rollout.values, rollout.response_mask, cfg.gamma, cfg.lam)
            advantages = global_whiten(run, advantages, rollout.response_mask)
            # 5. PPO epochs over mini-batches (policy frozen during critic warm-up).
            update_stats = ppo_update_synced(
                run,
                ac,
                optimizer,
                rollout,
                advantages,
                returns,
                cfg,
                step >= cfg.critic_warmup_steps,
                train_cfg.max_grad_norm,
            )
            t2 = time.perf_counter()
            # 6. Controllers: beta towards the KL target, lambda by the constraint violation.
            stats = rollout_statistics(rollout, kl, kl_ctl.value)
            stats = dict(zip(stats, reduce_sum(run, list(stats.values())))) if world > 1 else stats
            stats = {k: v / world for k, v in stats.items()} if world > 1 else stats
            kl_ctl.update(stats["objective/kl"], global_batch)
            if rewards.lagrange is not None:
                # The all-reduced mean cost, so every rank moves lambda the same way.
                stats["objective/lagrange_multiplier"] = rewards.lagrange.update(stats["objective/raw_score/cost"])
            stats.update(update_stats)
            stats["losses/explained_variance"] = global_explained_variance(
                run, rollout.values, returns, rollout.response_mask
            )
            timing["generate"] += t1 - t0
            timing["train"] += t2 - t1
            episodes += global_batch
            generated = float(rollout.response_mask.sum()) * world
            stats.update(
                {
                    "time/rollout_s": t1 - t0,
                    "time/update_s": t2 - t1,
                    "perf/episodes_per_second": global_batch / (t2 - t0),
                    "perf/generated_tokens_per_second": generated / (t1 - t0),
                }
            )
            first_scores = stats["objective/scores"] if first_scores is None else first_scores
            # 7. Log, look for trouble, checkpoint.
            run.metrics.log(step + 1, stats)
            if cfg.sample_table_steps and (step + 1) % cfg.sample_table_steps == 0:
                run.metrics.log_table(
                    step + 1,
                    "samples",
                    [
                        {"prompt": p[-1].content, "response": r, "score": float(s)}
                        for p, r, s in zip(rollout.prompts, rollout.responses, rollout.scores)
                    ],
                )
            bar.update(1)
            bar.set_postfix(score=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.3f}")
            check_guard_rails(stats, cfg, step + 1)
            stop = interrupt.requested
            if stop or (
                train_cfg.save_steps > 0 and (step + 1) % train_cfg.save_steps == 0 and step + 1 < total_updates
            ):
                extra = {
                    "kl_controller": kl_ctl.state_dict(),
                    "heldout_reward_before": reward_before,
                    "reward_mean_first": first_scores,
                }
                if rewards.lagrange is not None:
                    extra["lagrange"] = rewards.lagrange.state_dict()
                if cfg.policy_snapshots and run.is_main:
                    _save_policy(ac, tokenizer, run.output_dir / "snapshots" / f"step-{step + 1}", run.cfg)
                path = (
                    save_checkpoint(
                        run.output_dir,
                        step + 1,
                        model=ac,
                        optimizer=optimizer,
                        extra=extra,
                        save_total_limit=train_cfg.save_total_limit,
                    )
                    if run.is_main
                    else None
                )
                run.accelerator.wait_for_everyone()
                if stop:
                    raise TrainingInterrupted(path)
    bar.close()
    reward_after = heldout_reward(ac, rewards, eval_prompts, tokenizer, cfg, train_cfg.seed)
    total_time = timing["generate"] + timing["train"]
    return {
        "reward_mean_first": first_scores,
        "reward_mean_last": stats.get("objective/scores"),
        "kl_last": stats.get("objective/kl"),
        "kl_coef_last": kl_ctl.value,
        "heldout_reward_before": reward_before,
        "heldout_reward_after": reward_after,
        "num_heldout_prompts": len(eval_prompts),
        "updates": total_updates,
        "episodes_per_second": episodes / total_time if total_time else 0.0,
        "rollout_time_share": timing["generate"] / total_time if total_time else 0.0,
    }


def ppo_update_synced(
    run: Run,
    ac: ActorCritic,
    optimizer,
    rollout: Rollout,
    advantages,
    returns,
    cfg: PPOConfig,
    train_policy: bool,
    max_grad_norm: float,
) -> dict[str, float]:
    """``ppo_update`` with gradients averaged across processes and its statistics averaged over ranks."""
    world = run.accelerator.num_processes
    if world == 1:
        return ppo_update(ac, optimizer, rollout, advantages, returns, cfg, train_policy, max_grad_norm)
    stats = ppo_update(
        ac,
        optimizer,
        rollout,
        advantages,
        returns,
        cfg,
        train_policy,
        max_grad_norm,
        average_gradients=lambda: sync_gradients(run, ac.trainable_parameters()),
    )
    keys = sorted(stats)
    return {k: v / world for k, v in zip(keys, reduce_sum(run, [stats[k] for k in keys]))}


def global_explained_variance(run: Run, values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over the valid tokens of all processes."""
    if run.accelerator.num_processes == 1:
        return float(explained_variance(values, returns, mask))
    m = mask.float()
    r, d = returns.float() * m, (returns.float() - values.float()) * m
    n, sr, srr, sd, sdd = reduce_sum(
        run, [float(m.sum()), float(r.sum()), float((r * r).sum()), float(d.sum()), float((d * d).sum())]
    )
    var_r = srr / n - (sr / n) ** 2
    var_d = sdd / n - (sd / n) ** 2
    return 1.0 - var_d / var_r if var_r > 0 else float("nan")


def _save_policy(ac: ActorCritic, tokenizer, output_dir: Path, cfg: Config) -> None:
    """Write the policy adapter in the stage output layout (``adapter/`` on the SFT base)."""
    import json
    import shutil

    from alignment.ppo.adapters import POLICY

    output_dir.mkdir(parents=True, exist_ok=True)
    adapter_dir = output_dir / "adapter"
    ac.model.save_pretrained(str(output_dir / "_adapters"), selected_adapters=[POLICY], save_embedding_layers=False)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    (output_dir / "_adapters" / POLICY).rename(adapter_dir)
    shutil.rmtree(output_dir / "_adapters", ignore_errors=True)
    tokenizer.save_pretrained(str(output_dir / "tokenizer"))
    base_cfg, _ = stage_base(cfg.ppo.sft_model_path or cfg.model.model_name_or_path, cfg.model)
    info = {"model_name_or_path": base_cfg.model_name_or_path, "revision": base_cfg.revision, "dtype": cfg.model.dtype}
    (output_dir / "base_model.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
