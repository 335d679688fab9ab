"""The rollout: sample responses from the policy, then score them and take reference log-probs and values.

Also the two measurements made from rollouts: the held-out reward of fresh samples and the per-update statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from alignment.core.precision import autocast_dtype
from alignment.data.collate import PromptCollator
from alignment.modeling.sequences import SequenceBatch
from alignment.modeling.tokenizer import stop_token_ids
from alignment.ppo.actor_critic import ActorCritic
from alignment.ppo.config import PPOConfig, check_generation_weights, check_rollout_logprobs
from alignment.ppo.rewards import CombinedReward
from alignment.rl.logprobs import first_eos_mask, logprobs_from_logits

logger = logging.getLogger(__name__)


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
    values: torch.Tensor  # (B, T) (zeros without a critic)
    scores: torch.Tensor  # (B,) combined, normalised, clipped, EOS-penalised
    raw_scores: dict[str, torch.Tensor]  # per reward model, (B,); refusal shares, per label too
    has_eos: torch.Tensor  # (B,)
    values_graph: torch.Tensor | None = None  # (B, T) ``values`` with the critic's autograd graph, used once
    logprobs_graph: torch.Tensor | None = None  # (B, T) ``logprobs`` with the policy's autograd graph, used once
    entropy: torch.Tensor | None = None  # (B, T) the policy's entropy from that same pass


@dataclass(frozen=True)
class RolloutPasses:
    """Which of the rollout's passes differ from a plain no-grad scoring pass (all off: the held-out check).

    ``recompute_logprobs``: the policy's log-probs come from a packed pass, not from the sampling logits
    (see :func:`recomputes_rollout_logprobs`).
    ``keep_policy_graph``: that pass runs with autograd on and its graph is kept in ``Rollout.logprobs_graph``
    (dropout is off, so it is the pass the first mini-batch would run: same weights, inputs and precision).
    ``keep_value_graph``: the critic pass runs with autograd on and its graph is kept in ``Rollout.values_graph``,
    so the first PPO epoch -- when one mini-batch is the whole rollout and the critic has not moved yet --
    back-propagates through it instead of running the same forward again.
    """

    recompute_logprobs: bool = False
    keep_policy_graph: bool = False
    keep_value_graph: bool = False


def generation_config(cfg: PPOConfig, tokenizer, model=None) -> GenerationConfig:
    """Sampling settings; generation stops at every end-of-turn id (:func:`~alignment.modeling.tokenizer.stop_token_ids`,
    the rule evaluation and the missing-EOS penalty use too)."""
    eos_ids = stop_token_ids(tokenizer, model)
    return GenerationConfig(
        do_sample=True,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def collect_rollout(
    ac: ActorCritic,
    rewards: CombinedReward,
    prompts: list,
    tokenizer,
    cfg: PPOConfig,
    passes: RolloutPasses = RolloutPasses(),
) -> Rollout:
    """Sample responses, then score them and compute reference log-probs and values (see :class:`RolloutPasses`)."""
    encoded = PromptCollator(tokenizer, max_prompt_length=cfg.max_prompt_length)(prompts)
    prompt_ids, prompt_mask = encoded["input_ids"].to(ac.device), encoded["attention_mask"].to(ac.device)
    ac.eval()
    sampling = generation_config(cfg, tokenizer, ac.model)
    try:
        response_ids, sample_logits = ac.generate(
            prompt_ids, prompt_mask, sampling, with_logits=not passes.recompute_logprobs
        )
    except RuntimeError as e:
        if "probability tensor" not in str(e):
            raise
        raise FloatingPointError("sampling failed: the policy's next-token probabilities are NaN or inf") from e
    response_mask, has_eos = first_eos_mask(response_ids, sampling.eos_token_id, tokenizer.pad_token_id)
    _ensure_one_token(response_mask)
    batch = SequenceBatch.build(prompt_ids, prompt_mask, response_ids, response_mask)
    logprobs_graph = entropy = None
    if passes.recompute_logprobs:
        with torch.set_grad_enabled(passes.keep_policy_graph):
            logprobs_graph, entropy = ac.response_logprobs(
                batch, response_ids, cfg.temperature, with_entropy=passes.keep_policy_graph
            )
        logprobs = logprobs_graph.detach()
    else:
        logprobs = logprobs_from_logits(sample_logits, response_ids, cfg.temperature)
    ref_logprobs, _ = ac.response_logprobs(batch, response_ids, cfg.temperature, role="reference")
    responses = tokenizer.batch_decode(
        [ids[mask] for ids, mask in zip(response_ids, response_mask)], skip_special_tokens=True
    )
    messages = [p.messages for p in prompts]
    scores, raw = rewards.combined(ac, batch, messages, responses, [p.label for p in prompts])
    scores = scores.to(ac.device) - cfg.missing_eos_penalty * (~has_eos).float()
    # The critic pass comes last, so a kept graph lives only until the update's first backward. Without a critic
    # (rloo, grpo, reinforce_pp) the values are zeros that nothing reads.
    if ac.has_critic:
        with torch.set_grad_enabled(passes.keep_value_graph):
            values_graph = ac.response_values(batch, response_ids.shape[1])
    else:
        values_graph = torch.zeros(response_ids.shape, dtype=torch.float32, device=ac.device)
    return Rollout(
        prompts=messages,
        responses=responses,
        batch=batch,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=values_graph.detach(),
        scores=scores,
        raw_scores=raw,
        has_eos=has_eos,
        values_graph=values_graph if passes.keep_value_graph and ac.has_critic else None,
        logprobs_graph=logprobs_graph if passes.keep_policy_graph else None,
        entropy=entropy,
    )


def recomputes_rollout_logprobs(cfg: PPOConfig, ac: ActorCritic, mixed_precision: str) -> bool:
    """Whether the rollout's log-probs need their own packed pass (``rollout_logprobs``).

    In fp32 the sampling logits of KV-cached generation and the packed pass agree to ~1e-5, so the
    rollout reuses the former. In bf16/fp16 they round differently, and the KL between the policy and
    its identical reference copy at update 1 reads 0.11-0.19 nats per sequence instead of 0
    (bench/RESULTS.md); the update's ratios are off by as much. A pass like the update's removes that.
    """
    choice = check_rollout_logprobs(cfg.rollout_logprobs)
    if choice != "auto":
        return choice == "recompute"
    low_precision = (torch.bfloat16, torch.float16)
    return autocast_dtype(mixed_precision) is not None or ac.weights_dtype in low_precision


def samples_from_merged_weights(cfg: PPOConfig, ac: ActorCritic, recompute_logprobs: bool) -> bool:
    """Whether sampling runs the policy folded into the weights (``generation_weights``).

    Folded weights round differently from the base-plus-adapter passes, so ``auto`` folds only when the rollout's
    log-probs come from such a pass anyway (in fp32 they are the sampling logits, and the runs stay as they were).
    A sharded base is never folded.
    """
    choice = check_generation_weights(cfg.generation_weights)
    if ac.sharded:
        return False
    return recompute_logprobs if choice == "auto" else choice == "merged"


def _ensure_one_token(response_mask: torch.Tensor) -> None:
    # A response whose first token is padding has no valid token; count its first token so the score lands somewhere.
    response_mask[:, 0] = True


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
        rollout = collect_rollout(ac, rewards, prompts[start : start + cfg.rollout_batch_size], tokenizer, cfg)
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
