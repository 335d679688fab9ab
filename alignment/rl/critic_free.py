"""Advantages without a critic: RLOO, GRPO and REINFORCE++ (pure tensor math).

Each method replaces PPO's learned value baseline with one computed from the rewards themselves, so the RL stage
needs no value adapter, value head or value pass. The policy step is the same clipped surrogate as PPO's
(:func:`~alignment.rl.ppo_math.clipped_policy_loss`); with one epoch over one mini-batch its ratio is 1 and it is
the plain policy gradient the papers write.

Rows come in groups: the ``K = group_size`` samples of one prompt are consecutive rows (``B = G * K``).
The conventions of every module here (shapes, masks, fp32) are in :mod:`alignment.rl`.
"""

from __future__ import annotations

from typing import Literal

import torch

from alignment.rl.masked import masked_sum
from alignment.rl.ppo_math import KLEstimator, kl_penalty, kl_shaped_rewards

Algorithm = Literal["ppo", "rloo", "grpo", "reinforce_pp"]
ALGORITHMS: tuple[str, ...] = ("ppo", "rloo", "grpo", "reinforce_pp")
# The methods whose baseline is a group of samples of the same prompt (they need K >= 2).
GROUP_ALGORITHMS: tuple[str, ...] = ("rloo", "grpo")


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2 or x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} rows do not form groups of {group_size} samples (K >= 2)")
    return x.float().view(-1, group_size)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, arXiv:2402.14740, eq. 6; Kool et al. 2019).

    ``A_i = R_i - 1/(K-1) sum_{j != i} R_j``: each sample's baseline is the mean reward of the prompt's other
    samples, which is independent of sample ``i`` and so leaves the gradient unbiased.

    Args:
        rewards: ``(B,)`` sequence rewards (the KL-penalised score, see :func:`critic_free_advantages`).
        group_size: K samples per prompt, consecutive rows.

    Returns:
        ``(B,)`` fp32 advantages.
    """
    grouped = _groups(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Group Relative Policy Optimization, outcome supervision (Shao et al. 2024, arXiv:2402.03300, sec. 4.1.2).

    ``A_i = (r_i - mean(r)) / (std(r) + eps)`` over the K samples of a prompt (the sample standard deviation, as
    trl's GRPOTrainer computes it). A group whose samples all score alike gets advantage 0: it teaches nothing.

    Args:
        rewards: ``(B,)`` scores (GRPO keeps the KL out of the reward: see :func:`grpo_kl_loss`).
        group_size: K samples per prompt, consecutive rows.
        eps: keeps a constant group finite.

    Returns:
        ``(B,)`` fp32 advantages.
    """
    grouped = _groups(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    return (centred / (grouped.std(dim=1, keepdim=True) + eps)).reshape(-1)


def returns_to_go(token_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``G_t = sum_{s >= t} r_s`` over valid tokens (gamma = 1), 0 on masked positions.

    REINFORCE++ (Hu 2025, arXiv:2501.03262, sec. 3) uses these as advantages before whitening them over the batch.

    Args:
        token_rewards: ``(B, T)``.
        response_mask: ``(B, T)`` valid tokens.

    Returns:
        ``(B, T)`` fp32.
    """
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=token_rewards.device)
    rewards = torch.where(mask, token_rewards.float(), zero)
    suffix = rewards.flip(-1).cumsum(-1).flip(-1)
    return torch.where(mask, suffix, zero)


def grpo_kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO's KL term (Shao et al. 2024, eq. 4): the k3 estimator ``pi_ref/pi - log(pi_ref/pi) - 1`` per token,
    averaged over valid tokens; differentiable through ``logprobs``. GRPO adds ``beta *`` this to the loss instead of
    putting the KL in the reward.

    Args:
        logprobs: ``(B, T)`` current policy log-probs (with grad).
        ref_logprobs: ``(B, T)`` reference log-probs.
        mask: ``(B, T)`` valid tokens.

    Returns:
        scalar.
    """
    per_token = kl_penalty(logprobs, ref_logprobs.detach(), "k3")
    return masked_sum(per_token, mask) / mask.bool().sum().clamp(min=1)


def broadcast_to_tokens(sequence_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, T)``: one sequence-level advantage on each of its valid tokens, 0 elsewhere."""
    mask = response_mask.bool()
    expanded = sequence_values.float().unsqueeze(-1).expand(mask.shape)
    return torch.where(mask, expanded, torch.zeros((), dtype=torch.float32, device=expanded.device))


@torch.no_grad()
def critic_free_advantages(
    algorithm: str,
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    group_size: int,
    estimator: KLEstimator = "k1",
    unbaselined: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token advantages of one critic-free method, with the KL placed where its paper places it.

    - ``rloo``: the KL in the reward, per sequence: ``R = score - beta * sum_t kl_t``; leave-one-out baseline.
    - ``grpo``: the score alone, group-normalised; the KL goes in the loss (:func:`grpo_kl_loss`).
    - ``reinforce_pp``: the KL in the reward, per token (as PPO's :func:`~alignment.rl.ppo_math.kl_shaped_rewards`);
      returns-to-go. The caller whitens them over the *global* batch (the paper's normalisation).

    Args:
        algorithm: "rloo" | "grpo" | "reinforce_pp".
        scores: ``(B,)`` combined reward-model scores.
        logprobs: ``(B, T)`` rollout policy log-probs.
        ref_logprobs: ``(B, T)`` reference log-probs.
        response_mask: ``(B, T)`` valid tokens.
        kl_coef: beta.
        group_size: K samples per prompt (consecutive rows); unused by ``reinforce_pp``.
        estimator: the per-token KL estimator in the reward (k1, as PPO's).
        unbaselined: ``(B,)`` the part of ``scores`` that ``rloo`` leaves out of the leave-one-out baseline: it is
            added to each sample's advantage as it is (a baseline of 0, which depends on no sample and so keeps the
            gradient unbiased; Williams 1992). A reward that every sample of a prompt earns alike then still moves
            the policy, where the group baseline would cancel it. ``rloo`` only.

    Returns:
        ``(advantages, kl)``, both ``(B, T)`` fp32 and 0 on masked positions; ``kl`` is the per-token estimate
        (reported by every method, whether or not it enters the reward).
    """
    mask = response_mask.bool()
    if unbaselined is not None and algorithm != "rloo":
        raise ValueError(f"unbaselined applies to rloo only, not {algorithm!r}")
    if algorithm == "reinforce_pp":
        shaped, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator)
        return returns_to_go(shaped, mask), kl
    kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, estimator), torch.zeros((), device=mask.device))
    if algorithm == "rloo":
        sequence_reward = scores.float().to(kl.device) - kl_coef * kl.sum(-1)
        if unbaselined is None:
            return broadcast_to_tokens(rloo_advantages(sequence_reward, group_size), mask), kl
        fixed = unbaselined.float().to(kl.device)
        return broadcast_to_tokens(rloo_advantages(sequence_reward - fixed, group_size) + fixed, mask), kl
    if algorithm == "grpo":
        return broadcast_to_tokens(grpo_advantages(scores.to(kl.device), group_size), mask), kl
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS[1:])} here, got {algorithm!r}")
