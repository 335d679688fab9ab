"""Preference losses: the reward model's K-ranked pairwise loss and DPO's, which is that loss on implicit rewards.

All losses are computed in fp32: bf16 log-sigmoids lose the small margins a ranking loss is made of. Counts are returned as 0-d long tensors so callers can
sum them over accumulation steps and ``all_reduce`` them across processes before dividing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_ranking_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Bradley-Terry pairwise loss ``mean -log sigmoid(r_w - r_l - m)``.

    InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, eq. 1) for K=2; the margin term is Llama 2's (Touvron et al. 2023,
    arXiv:2307.09288, eq. 2; TRL's ``margin`` column).

    Args:
        chosen_rewards: ``(B,)`` scalar rewards of the preferred responses.
        rejected_rewards: ``(B,)`` scalar rewards of the rejected responses.
        margin: ``(B,)`` or scalar margin, or None.

    Returns:
        fp32 scalar loss.
    """
    logits = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits).mean()


def ranked_groups_loss(
    rewards: torch.Tensor, ranks: torch.Tensor, group_ids: torch.Tensor, margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K-wise ranking loss over several prompts at once (InstructGPT, arXiv:2203.02155, sec. 3.5, eq. 1).

    Within each group (the K responses to one prompt), every pair with strictly different ranks gives
    ``-log sigmoid(r_better - r_worse)``; ties are skipped. Weighting: each group's pair losses are averaged (InstructGPT's
    ``1 / C(K, 2)``, all pairs of a prompt as one batch element), then groups are averaged with equal weight, so a prompt
    with K=4 (6 pairs) counts as much as one with K=2. Groups without any untied pair are left out of the mean.

    Args:
        rewards: ``(N,)`` scalar rewards of all responses, flat.
        ranks: ``(N,)`` rank of each response within its group; smaller is better (0 or 1 = best, as in a ranking list).
        group_ids: ``(N,)`` integer prompt/group id of each response.
        margin: subtracted from every pair's reward difference (Llama 2's margin, see :func:`pairwise_ranking_loss`).

    Returns:
        ``(loss, n_pairs, n_correct)``: fp32 scalar loss (0, still attached to ``rewards``, when there are no pairs);
        0-d long number of compared pairs and of pairs where the better response got the strictly higher reward.
    """
    rewards = rewards.float()
    same_group = group_ids.unsqueeze(1) == group_ids.unsqueeze(0)
    is_pair = same_group & (ranks.unsqueeze(1) < ranks.unsqueeze(0))  # [i, j]: i is ranked better than j
    better, worse = is_pair.nonzero(as_tuple=True)
    n_pairs = torch.tensor(better.numel(), dtype=torch.long, device=rewards.device)
    if better.numel() == 0:
        return rewards.sum() * 0.0, n_pairs, torch.zeros_like(n_pairs)
    margins = rewards[better] - rewards[worse]
    n_correct = (margins > 0).sum()
    _, group_index = torch.unique(group_ids, return_inverse=True)
    pair_group = group_index[better]
    n_groups = int(group_index.max()) + 1
    pairs_per_group = torch.bincount(pair_group, minlength=n_groups)
    pair_losses = -F.logsigmoid(margins - margin)
    loss_per_group = torch.zeros(n_groups, device=rewards.device).index_add(0, pair_group, pair_losses)
    has_pairs = pairs_per_group > 0
    loss = (loss_per_group[has_pairs] / pairs_per_group[has_pairs]).mean()
    return loss, n_pairs, n_correct


def ranked_group_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K-wise ranking loss of one prompt: mean over its untied pairs of ``-log sigmoid(r_better - r_worse)``.

    InstructGPT (Ouyang et al. 2022, arXiv:2203.02155, sec. 3.5, eq. 1): the ``C(K, 2)`` comparisons of one prompt are one
    batch element, averaged with weight ``1 / C(K, 2)``. Pairs with equal ranks are skipped. For K=2 this is
    :func:`pairwise_ranking_loss`.

    Args:
        rewards: ``(K,)`` scalar rewards of the K responses.
        ranks: ``(K,)`` ranks; smaller is better.

    Returns:
        ``(loss, n_pairs, n_correct)`` as in :func:`ranked_groups_loss`.
    """
    return ranked_groups_loss(rewards, ranks, torch.zeros_like(ranks, dtype=torch.long))


def reward_centering_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Coefficient-free centering term ``mean(r^2)`` that keeps the RM output near 0.

    Eisenstein et al. 2023 (arXiv:2312.09244) and TRL's ``center_rewards_coefficient`` use ``mean((r_w + r_l)^2)``: pass
    ``chosen_rewards + rejected_rewards`` for that form, or all rewards stacked to centre every response. The caller
    multiplies by the coefficient (TRL suggests 0.01).

    Args:
        rewards: any shape.

    Returns:
        fp32 scalar.
    """
    return (rewards.float() ** 2).mean()


def dpo_implicit_rewards(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` of each response (Rafailov et al. 2023,
    arXiv:2305.18290, eq. 5, up to the prompt's partition term, which cancels in every comparison).

    Args:
        policy_logps: ``(N,)`` summed log-probs of each response's tokens under the policy.
        reference_logps: ``(N,)`` the same under the frozen reference.
        beta: the KL strength; larger keeps the policy closer to the reference.

    Returns:
        ``(N,)`` fp32.
    """
    return beta * (policy_logps.float() - reference_logps.float())


def dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7): ``-log sigma(r_w - r_l)`` on the implicit rewards, for every untied pair.

    A K-ranked group uses all its ``C(K, 2)`` pairs, weighted as the reward model weighs them
    (:func:`ranked_groups_loss`: pairs averaged within a prompt, prompts averaged): for K = 2 this is exactly eq. 7.

    Returns:
        ``(loss, n_pairs, n_correct, rewards)``: as :func:`ranked_groups_loss`, plus the ``(N,)`` implicit rewards
        (n_correct: pairs whose better response has the higher implicit reward, DPO's "reward accuracy").
    """
    rewards = dpo_implicit_rewards(policy_logps, reference_logps, beta)
    loss, n_pairs, n_correct = ranked_groups_loss(rewards, ranks, group_ids)
    return loss, n_pairs, n_correct, rewards
