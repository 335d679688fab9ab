"""Losses against hand computation. softplus(-d) = -log sigmoid(d) = log(1 + e^-d):
d = 0.5 -> 0.474077, 1.0 -> 0.313262, 1.5 -> 0.201413, 2.0 -> 0.126928."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.rl.losses import (
    dpo_loss,
    pairwise_ranking_loss,
    ranked_group_loss,
    ranked_groups_loss,
    reward_centering_loss,
)


def test_pairwise_loss_and_margin() -> None:
    assert pairwise_ranking_loss(torch.tensor([1.0, 0.5]), torch.tensor([0.5, -0.5])).item() == pytest.approx(
        (0.474077 + 0.313262) / 2, abs=1e-6
    )
    # margins 0.5 and -1.0: d = 1 - 0 - 0.5 = 0.5 and 0 - 0 + 1 = 1.0
    loss = pairwise_ranking_loss(torch.tensor([1.0, 0.0]), torch.zeros(2), margin=torch.tensor([0.5, -1.0]))
    assert loss.item() == pytest.approx((0.474077 + 0.313262) / 2, abs=1e-6)


def test_k3_equals_mean_of_three_pairs() -> None:
    # ranks 0 > 1 > 2, rewards 1.0, 0.5, -0.5: d = 0.5, 1.5, 1.0
    loss, n_pairs, n_correct = ranked_group_loss(torch.tensor([1.0, 0.5, -0.5]), torch.tensor([0, 1, 2]))
    assert loss.item() == pytest.approx((0.474077 + 0.201413 + 0.313262) / 3, abs=1e-6)
    assert (n_pairs.item(), n_correct.item()) == (3, 3)


def test_k4_equals_mean_of_six_pairs() -> None:
    # order (best first): idx 1 (1.0), idx 0 (0.2), idx 3 (0.4), idx 2 (-0.3)
    # pairs: (1,0) 0.8 -> 0.371101, (1,3) 0.6 -> 0.437488, (1,2) 1.3 -> 0.241008,
    #        (0,3) -0.2 -> 0.798139 (wrong order), (0,2) 0.5 -> 0.474077, (3,2) 0.7 -> 0.403186
    loss, n_pairs, n_correct = ranked_group_loss(torch.tensor([0.2, 1.0, -0.3, 0.4]), torch.tensor([1, 0, 3, 2]))
    expected = (0.371101 + 0.437488 + 0.241008 + 0.798139 + 0.474077 + 0.403186) / 6
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert (n_pairs.item(), n_correct.item()) == (6, 5)


def test_ties_are_skipped() -> None:
    # ranks 0, 0, 1: only (0,2) d=1 and (1,2) d=2
    loss, n_pairs, _ = ranked_group_loss(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx((0.313262 + 0.126928) / 2, abs=1e-6)
    assert n_pairs.item() == 2


def test_all_ties_give_zero_loss_with_graph() -> None:
    rewards = torch.tensor([1.0, 2.0], requires_grad=True)
    loss, n_pairs, n_correct = ranked_group_loss(rewards, torch.tensor([1, 1]))
    assert loss.item() == 0.0 and n_pairs.item() == 0 and n_correct.item() == 0
    loss.backward()
    assert rewards.grad is not None


def test_k2_equals_pairwise() -> None:
    rewards = torch.tensor([0.3, 1.1], requires_grad=True)
    loss, _, n_correct = ranked_group_loss(rewards, torch.tensor([1, 0]))
    expected = pairwise_ranking_loss(torch.tensor([1.1]), torch.tensor([0.3]))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-7)
    assert n_correct.item() == 1


def test_batched_groups_weigh_each_prompt_equally() -> None:
    # group 7: K=3 example above (mean 0.329584, 3 pairs); group 3: one pair d=2 (0.126928); group 5: all tied, left out.
    # per-group mean then mean over the two groups with pairs: (0.329584 + 0.126928) / 2 (NOT pooled over 4 pairs).
    rewards = torch.tensor([1.0, 2.0, 0.5, 0.0, -0.5, 9.0, -9.0])
    ranks = torch.tensor([0, 0, 1, 1, 2, 0, 0])
    group_ids = torch.tensor([7, 3, 7, 3, 7, 5, 5])
    loss, n_pairs, n_correct = ranked_groups_loss(rewards, ranks, group_ids)
    assert loss.item() == pytest.approx((0.329584 + 0.126928) / 2, abs=1e-6)
    assert (n_pairs.item(), n_correct.item()) == (4, 4)


def test_reward_centering() -> None:
    assert reward_centering_loss(torch.tensor([1.0, -2.0, 3.0])).item() == pytest.approx(14.0 / 3.0)


def test_dpo_loss_is_the_ranking_loss_on_implicit_rewards() -> None:
    # beta 0.1; chosen: policy -1, reference -1.5 -> r = 0.05; rejected: policy -2, reference -1.5 -> r = -0.05.
    # loss = -log sigmoid(0.1) = log(1 + e^-0.1) = 0.644397.
    loss, n_pairs, n_correct, rewards = dpo_loss(
        torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5]), torch.tensor([0, 1]), torch.tensor([0, 0]), 0.1
    )
    assert rewards.tolist() == pytest.approx([0.05, -0.05])
    assert loss.item() == pytest.approx(0.644397, abs=1e-6) and (n_pairs.item(), n_correct.item()) == (1, 1)
    # At step 0 the policy is the reference: every implicit reward is 0 and the loss is ln 2.
    same = torch.tensor([-3.0, -1.0, -2.0])
    loss, _, n_correct, rewards = dpo_loss(same, same.clone(), torch.tensor([0, 1, 2]), torch.zeros(3), 0.1)
    assert rewards.abs().max().item() == 0 and loss.item() == pytest.approx(math.log(2)) and n_correct.item() == 0
    # K = 3 uses all three pairs of the group: rewards [0.3, 0.1, 0.0] (beta 1):
    # pairs (0,1) d = 0.2 -> 0.598139, (0,2) d = 0.3 -> 0.554355, (1,2) d = 0.1 -> 0.644397; mean 0.598964.
    loss, n_pairs, _, _ = dpo_loss(
        torch.tensor([0.3, 0.1, 0.0]), torch.zeros(3), torch.tensor([0, 1, 2]), torch.zeros(3), 1.0
    )
    assert n_pairs.item() == 3 and loss.item() == pytest.approx((0.598139 + 0.554355 + 0.644397) / 3, abs=1e-5)
