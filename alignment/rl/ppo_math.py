"""Pure tensor math for PPO-RLHF: KL and reward shaping, GAE, clipped policy and value losses.

The conventions of every module here (shapes, masks, fp32) are in :mod:`alignment.rl`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from alignment.rl.masked import masked_mean, masked_var

KLEstimator = Literal["k1", "k2", "k3"]


# ----------------------------------------------------------------------------------------------------------------------
# KL and reward shaping
# ----------------------------------------------------------------------------------------------------------------------


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimator of KL(pi || pi_ref) from samples of pi (Schulman, http://joschu.net/blog/kl-approx.html).

    With ``log r = log q - log p = ref_logprobs - logprobs``:

    - ``k1 = -log r = logp - logq`` (unbiased, high variance, can be negative);
    - ``k2 = 0.5 (log r)^2`` (biased, low variance, >= 0);
    - ``k3 = (r - 1) - log r`` (unbiased, low variance, >= 0).

    Keep k1 inside the reward; k2/k3 are for a separate KL loss term (a k2/k3 term in the reward has no unbiased per-token meaning).

    Args:
        logprobs: ``(B, T)`` log pi(y_t) of the sampled tokens.
        ref_logprobs: ``(B, T)`` log pi_ref(y_t).
        estimator: "k1" | "k2" | "k3".

    Returns:
        ``(B, T)`` fp32 per-token KL estimates (not masked).
    """
    log_ratio = ref_logprobs.float() - logprobs.float()
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"estimator must be one of 'k1', 'k2', 'k3', got {estimator!r}")


def last_valid_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row.

    Args:
        response_mask: ``(B, T)`` bool or 0/1; every row must have at least one valid token.

    Returns:
        ``(B,)`` long.
    """
    mask = response_mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("response_mask has a row with no valid token; there is nowhere to put its score")
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=-1)


def kl_shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: ``r_t = -beta * kl_t`` plus the RM score at the last valid token.

    Ziegler et al. 2019 (arXiv:1909.08593) eq. 2 / InstructGPT (arXiv:2203.02155) eq. 2: ``R = r_phi - beta KL``, with the
    KL spread per token and the sequence-level score at the end (N-implementation-details ``rewards[:, -1] += scores``,
    but at the last *valid* index so right-padded rows score at their EOS).

    Args:
        scores: ``(B,)`` RM scores (already normalised/clipped/EOS-penalised by the caller).
        logprobs: ``(B, T)`` policy logprobs of the response tokens.
        ref_logprobs: ``(B, T)`` reference logprobs.
        response_mask: ``(B, T)`` valid tokens; each row needs at least one.
        kl_coef: beta (float or 0-d tensor).
        estimator: KL estimator, see :func:`kl_penalty`.

    Returns:
        ``(rewards, kl)``, both ``(B, T)`` fp32 and 0 on masked positions.
    """
    mask = response_mask.bool()
    kl = kl_penalty(logprobs, ref_logprobs, estimator)
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    rewards = -kl_coef * kl
    last = last_valid_index(mask).unsqueeze(-1)
    rewards = rewards.scatter_add(-1, last, scores.float().unsqueeze(-1).to(rewards.device))
    return rewards, kl


# ----------------------------------------------------------------------------------------------------------------------
# Advantages and losses
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438, eq. 16), as a reverse scan.

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``. Masked positions are terminal: the
    value and advantage "after" the last valid token are 0 (TRL's ``padding_mask_p1`` subtlety), and
    a masked hole also cuts the scan. Computed without gradient (advantages and returns are regression targets).

    Args:
        rewards: ``(B, T)`` per-token rewards (e.g. from :func:`kl_shaped_rewards`).
        values: ``(B, T)`` value estimates V(s_t) from the rollout.
        response_mask: ``(B, T)`` valid tokens.
        gamma: discount (1.0 for RLHF: one episode is one response, rewarded at its end).
        lam: GAE lambda (0.95).

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` fp32, ``returns = advantages + values``, 0 on masked positions.
    """
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=rewards.device)
    rewards = torch.where(mask, rewards.float(), zero)
    values = torch.where(mask, values.float(), zero)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, zero)
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t], advantage
    returns = torch.where(mask, advantages + values, zero)
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss (Schulman et al. 2017, arXiv:1707.06347, eq. 7), token-mean over valid tokens.

    ``L = -min(rho A, clip(rho, 1-eps, 1+eps) A)``. With ``dual_clip = c > 1`` the loss of negative-advantage tokens is
    additionally capped at ``-c A`` (dual-clip PPO, Ye et al. 2020 arXiv:1912.09729; OpenRLHF, verl ``clip_ratio_c``).

    Args:
        logprobs: ``(B, T)`` current policy logprobs (with grad).
        old_logprobs: ``(B, T)`` rollout-time logprobs.
        advantages: ``(B, T)`` (usually whitened).
        mask: ``(B, T)`` valid tokens.
        clip_eps: epsilon.
        dual_clip: c > 1, or None.

    Returns:
        ``(loss, stats)``: scalar loss; detached scalar stats ``clipfrac`` (fraction of tokens where the clipped term is
        active), ``approx_kl`` (mean 0.5 (log rho)^2, k2), ``approx_kl_k3`` (mean (rho-1) - log rho), ``ratio_mean``,
        ``ratio_max`` and, with dual clip, ``dual_clipfrac``.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=logprobs.device)
    log_ratio = torch.where(mask, logprobs.float() - old_logprobs.float(), zero)
    advantages = torch.where(mask, advantages.float(), zero)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    token_loss = torch.maximum(unclipped, clipped)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask)}
    if dual_clip is not None:
        capped = torch.minimum(token_loss, -dual_clip * advantages)
        dual_active = (advantages < 0) & (capped < token_loss)
        token_loss = torch.where(advantages < 0, capped, token_loss)
        stats["dual_clipfrac"] = masked_mean(dual_active.float(), mask)
    loss = masked_mean(token_loss, mask)
    with torch.no_grad():
        stats["approx_kl"] = masked_mean(0.5 * log_ratio**2, mask)
        stats["approx_kl_k3"] = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        stats["ratio_mean"] = masked_mean(ratio, mask)
        stats["ratio_max"] = torch.where(mask, ratio, zero).max()
    return loss, {name: value.detach() for name, value in stats.items()}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 mean max((V - R)^2, (clip(V, V_old +- eps) - R)^2)`` over valid tokens.

    From OpenAI baselines ppo2 / N-implementation-details (Huang et al. 2022, "The 37 implementation details of PPO",
    detail 9) as used by TRL PPO.

    Args:
        values: ``(B, T)`` current value predictions (with grad).
        old_values: ``(B, T)`` rollout-time values.
        returns: ``(B, T)`` GAE returns.
        mask: ``(B, T)`` valid tokens.
        clip_eps: value clip range.

    Returns:
        ``(loss, clipfrac)``: scalar loss; detached fraction of tokens where the clipped error was the larger one.
    """
    mask = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=values.device)
    values = torch.where(mask, values.float(), zero)
    old_values = torch.where(mask, old_values.float(), zero)
    returns = torch.where(mask, returns.float(), zero)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask).detach()
    return loss, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over valid tokens (OpenAI baselines ``explained_variance``; cleanrl).

    1 is a perfect critic, 0 no better than a constant, negative worse. NaN when the returns have zero variance.

    Args:
        values: ``(B, T)``.
        returns: ``(B, T)``.
        mask: ``(B, T)`` valid tokens.

    Returns:
        detached scalar.
    """
    with torch.no_grad():
        var_returns = masked_var(returns, mask, unbiased=False)
        var_residual = masked_var(returns.float() - values.float(), mask, unbiased=False)
        nan = torch.full_like(var_returns, math.nan)
        return torch.where(var_returns > 0, 1.0 - var_residual / var_returns.clamp(min=1e-30), nan)


# ----------------------------------------------------------------------------------------------------------------------
# EOS handling
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# Controllers
# ----------------------------------------------------------------------------------------------------------------------
