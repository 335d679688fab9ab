"""Pure tensor math for PPO-RLHF: logprobs, masking, KL, reward shaping, GAE, clipped losses, controllers.

Conventions (all functions):

- ``B`` is the batch (rollouts), ``T`` the response length, ``V`` the vocabulary.
- ``response_mask`` / ``mask`` is ``(B, T)``, bool or 0/1, and marks the *valid* response tokens: every token up to and
  including the first EOS (see :func:`first_eos_mask`). Masked positions (padding, post-EOS) never enter a loss or a
  statistic: values there are replaced with 0 through ``torch.where`` *before* any arithmetic, so even ``inf``/``nan``
  at a masked position changes neither the result nor the gradient.
- Everything is computed in fp32 (DESIGN.md checklist item 16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


# ----------------------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy
# ----------------------------------------------------------------------------------------------------------------------


def _scaled_fp32_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 ``logits / temperature`` with at most one new full-vocab tensor."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dtype != torch.float32:
        # .float() already made a fresh copy, so dividing it in place is safe (ToCopy's backward does not need it).
        scaled = logits.float()
        return scaled.div_(temperature) if temperature != 1.0 else scaled
    return logits / temperature if temperature != 1.0 else logits


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of ``tokens`` under ``softmax(logits / temperature)``, in fp32.

    The rollout was sampled from ``softmax(logits / T)``, so the logprobs of the policy and the reference must be
    recomputed at the same T, or the KL is biased (negative KL; trl#1017, DESIGN.md item 10; TRL ``logits /= temperature``).
    Uses ``log p(y) = z_y - logsumexp(z)`` instead of a full ``log_softmax``: besides the fp32 scaled logits, only the
    ``(...,)``-shaped results are kept.

    Args:
        logits: ``(..., V)`` any float dtype, already aligned with ``tokens`` (i.e. logits at position t predict token t).
        tokens: ``(...)`` integer token ids.
        temperature: sampling temperature T > 0.

    Returns:
        ``(...)`` fp32 log-probabilities.
    """
    scaled = _scaled_fp32_logits(logits, temperature)
    token_logits = scaled.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return token_logits - torch.logsumexp(scaled, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` along the last axis, in fp32.

    ``H = logsumexp(z) - sum_v p_v z_v`` (equivalent to ``-sum p log p``, without materialising ``log p``).

    Args:
        logits: ``(..., V)``.
        temperature: T > 0.

    Returns:
        ``(...)`` fp32 entropies in nats.
    """
    scaled = _scaled_fp32_logits(logits, temperature)
    probs = torch.softmax(scaled, dim=-1)
    return torch.logsumexp(scaled, dim=-1) - (probs * scaled).sum(dim=-1)


# ----------------------------------------------------------------------------------------------------------------------
# Masked statistics
# ----------------------------------------------------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over positions where ``mask`` is true; masked values never touch the arithmetic.

    Args:
        x: ``(B, T)`` (any shape broadcastable with ``mask``).
        mask: same shape, bool or 0/1.
        dim: reduce over this axis, or over everything when None.

    Returns:
        scalar, or ``x`` reduced over ``dim``.
    """
    valid = torch.where(mask.bool(), x.float(), torch.zeros((), dtype=torch.float32, device=x.device))
    return valid.sum() if dim is None else valid.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over valid positions (TRL ``masked_mean``; the "token-mean" of DESIGN.md item 15).

    An empty mask (or an empty row with ``dim``) gives 0 rather than NaN, so one empty minibatch cannot poison a run.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` bool or 0/1.
        dim: reduce over this axis, or over everything when None.

    Returns:
        scalar, or ``x`` reduced over ``dim``.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid positions (TRL ``masked_var``).

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` bool or 0/1.
        unbiased: Bessel's correction ``n / (n - 1)``. With a single valid element this is undefined and the
            (biased) value 0 is returned instead.

    Returns:
        scalar fp32 variance.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x.float() - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its valid positions only (DESIGN.md item 13).

    Padding does not bias the statistics, and padded positions are 0 in the output.
    ``shift_mean=False`` keeps the original mean (only rescales), as TRL/N-implementation-details do for rewards.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` bool or 0/1.
        shift_mean: subtract the mean (True for advantages).
        eps: added to the variance.

    Returns:
        ``(B, T)`` fp32.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x.float() - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ----------------------------------------------------------------------------------------------------------------------
# KL and reward shaping
# ----------------------------------------------------------------------------------------------------------------------


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimator of KL(pi || pi_ref) from samples of pi (Schulman, http://joschu.net/blog/kl-approx.html).

    With ``log r = log q - log p = ref_logprobs - logprobs``:

    - ``k1 = -log r = logp - logq`` (unbiased, high variance, can be negative);
    - ``k2 = 0.5 (log r)^2`` (biased, low variance, >= 0);
    - ``k3 = (r - 1) - log r`` (unbiased, low variance, >= 0).

    Keep k1 inside the reward; k2/k3 are for a separate KL loss term (DESIGN.md item 5).

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
    but at the last *valid* index so right-padded rows score at their EOS; DESIGN.md item 5).

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
    value and advantage "after" the last valid token are 0 (TRL's ``padding_mask_p1`` subtlety, DESIGN.md item 8), and
    a masked hole also cuts the scan. Computed without gradient (advantages and returns are regression targets).

    Args:
        rewards: ``(B, T)`` per-token rewards (e.g. from :func:`kl_shaped_rewards`).
        values: ``(B, T)`` value estimates V(s_t) from the rollout.
        response_mask: ``(B, T)`` valid tokens.
        gamma: discount (1.0 for RLHF, DESIGN.md item 12).
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
    detail 9) as used by TRL PPO; DESIGN.md item 14.

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


def first_eos_mask(
    response_tokens: torch.Tensor,
    eos_token_ids: int | Sequence[int],
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-token mask of generated responses: 1 up to and including the first EOS, 0 after (DESIGN.md item 8).

    A row without EOS (truncated at ``max_new_tokens``) is valid up to, excluding, its first ``pad_token_id`` (right
    padding added when rollouts of different lengths are stacked); ``has_eos`` is False for it so the caller can apply
    the missing-EOS penalty (TRL ``missing_eos_penalty``). When ``pad_token_id`` is itself an EOS id, padding cannot be
    told from an EOS and the first one counts as the EOS.

    Args:
        response_tokens: ``(B, T)`` generated token ids (prompt removed).
        eos_token_ids: one id or several (chat models often stop on both ``eos`` and an end-of-turn token).
        pad_token_id: the padding id, or None when rows are never padded.

    Returns:
        ``(response_mask, has_eos)``: ``(B, T)`` bool and ``(B,)`` bool.
    """
    eos_ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    eos_tensor = torch.tensor(eos_ids, dtype=response_tokens.dtype, device=response_tokens.device)
    is_eos = torch.isin(response_tokens, eos_tensor)
    is_stop = is_eos
    if pad_token_id is not None:
        is_stop = is_stop | (response_tokens == pad_token_id)
    # Tokens before the first stop token are valid; the stop token itself is valid only when it is an EOS.
    stops_before = torch.cumsum(is_stop.int(), dim=-1) - is_stop.int()
    before_first_stop = stops_before == 0
    first_stop = before_first_stop & is_stop
    response_mask = before_first_stop & (~is_stop | is_eos)
    has_eos = (first_stop & is_eos).any(dim=-1)
    return response_mask, has_eos


# ----------------------------------------------------------------------------------------------------------------------
# Controllers
# ----------------------------------------------------------------------------------------------------------------------


class FixedKLController:
    """Constant KL coefficient beta (TRL default 0.05; DESIGN.md item 11)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns beta. Same signature as :meth:`AdaptiveKLController.update`."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 (arXiv:1909.08593, sec. 2.2).

    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta (1 + e n / horizon)``, where KL is the mean per-sequence
    (summed over tokens) KL of the batch and ``n`` the number of samples (or steps) it covers. N-impl: init 0.15, target 6,
    horizon 10000.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move beta toward keeping KL at ``target``; returns the new beta."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])


class LagrangeMultiplier:
    """Lagrange multiplier lambda >= 0 for PPO-Lagrangian (Safe RLHF, Dai et al. 2023, arXiv:2310.12773, eq. 10-11).

    Safe RLHF solves ``min_theta max_{lambda>=0} -J_R(theta) + lambda (J_C(theta) - d)`` and keeps ``log lambda`` as the
    free parameter so lambda stays positive. The dual step is gradient ascent on ``lambda (J_C - d)`` w.r.t.
    ``log lambda`` (gradient ``lambda (J_C - d)``), i.e. ``log lambda <- log lambda + lr lambda (J_C - d)``. Safe RLHF
    applies Adam to that gradient; plain SGD here keeps the step hand-checkable. ``max_value`` caps lambda.
    """

    def __init__(
        self, init: float = 1.0, lr: float = 0.1, threshold: float = 0.0, max_value: float | None = None
    ) -> None:
        if init <= 0:
            raise ValueError(f"init must be > 0 (lambda is stored as log lambda), got {init}")
        if max_value is not None and max_value < init:
            raise ValueError(f"max_value ({max_value}) must be >= init ({init})")
        self.log_lambda = math.log(init)
        self.lr = float(lr)
        self.threshold = float(threshold)
        self.max_value = None if max_value is None else float(max_value)

    @property
    def value(self) -> float:
        """Current lambda."""
        return math.exp(self.log_lambda)

    def update(self, mean_cost: float) -> float:
        """One dual ascent step from the batch mean cost J_C; returns the new lambda."""
        gradient = self.value * (float(mean_cost) - self.threshold)
        self.log_lambda += self.lr * gradient
        if self.max_value is not None:
            self.log_lambda = min(self.log_lambda, math.log(self.max_value))
        return self.value

    def state_dict(self) -> dict[str, float | None]:
        return {"log_lambda": self.log_lambda, "lr": self.lr, "threshold": self.threshold, "max_value": self.max_value}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.log_lambda = float(state["log_lambda"])  # type: ignore[arg-type]
        self.lr = float(state["lr"])  # type: ignore[arg-type]
        self.threshold = float(state["threshold"])  # type: ignore[arg-type]
        self.max_value = None if state["max_value"] is None else float(state["max_value"])  # type: ignore[arg-type]
