"""Critic-free advantages (RLOO, GRPO, REINFORCE++) against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.rl.critic_free import (
    critic_free_advantages,
    grpo_advantages,
    grpo_kl_loss,
    returns_to_go,
    rloo_advantages,
)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


def test_rloo_baseline_is_the_mean_of_the_other_samples() -> None:
    # Group [1, 2, 3]: 1 - (2+3)/2 = -1.5; 2 - (1+3)/2 = 0; 3 - (1+2)/2 = 1.5.
    # Group [10, 0, 5]: 10 - 2.5 = 7.5; 0 - 7.5 = -7.5; 5 - 5 = 0.
    close(rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 10.0, 0.0, 5.0]), 3), [-1.5, 0.0, 1.5, 7.5, -7.5, 0.0])


def test_grpo_normalises_within_each_group() -> None:
    # Group [1, 2, 3]: mean 2, sample std 1 -> [-1, 0, 1]. Group [10, 0, 5]: mean 5, sample std
    # sqrt((25 + 25 + 0) / 2) = 5 -> [1, -1, 0].
    close(grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 10.0, 0.0, 5.0]), 3, eps=0.0), [-1, 0, 1, 1, -1, 0])
    # All samples alike: nothing to learn from the group, not a division by zero.
    close(grpo_advantages(torch.tensor([4.0, 4.0]), 2), [0.0, 0.0])


def test_group_methods_reject_rows_that_do_not_form_groups() -> None:
    with pytest.raises(ValueError, match="groups of 2"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="K >= 2"):
        grpo_advantages(torch.tensor([1.0, 2.0]), 1)


def test_returns_to_go_sum_the_rewards_that_follow() -> None:
    # [1, 2, 3] -> [6, 5, 3]; [4, 5, pad] -> [9, 5, 0] (the padded 99 never enters).
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    close(returns_to_go(rewards, torch.tensor([[1, 1, 1], [1, 1, 0]])), [[6, 5, 3], [9, 5, 0]])


def test_grpo_kl_loss_is_k3_and_pulls_towards_the_reference() -> None:
    # pi = 0.5, pi_ref = 0.25 on both tokens: r = pi_ref / pi = 0.5, k3 = 0.5 - ln 0.5 - 1 = 0.193147.
    logprobs = torch.full((1, 2), math.log(0.5), requires_grad=True)
    ref = torch.full((1, 2), math.log(0.25))
    loss = grpo_kl_loss(logprobs, ref, torch.ones(1, 2))
    close(loss, 0.5 - math.log(0.5) - 1)
    loss.backward()
    # d/dlogp (e^(ref - logp) - (ref - logp) - 1) = 1 - r = 0.5 per token, over 2 tokens: 0.25.
    close(logprobs.grad, [[0.25, 0.25]])


def test_kl_is_zero_at_step_0_and_each_method_places_it_as_its_paper_does() -> None:
    scores = torch.tensor([1.0, 0.0])
    logprobs = torch.tensor([[-1.0, -1.0], [-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0], [-1.0, -2.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    # Step 0: the policy is the reference, so every method's KL is 0.
    for algorithm in ("rloo", "grpo", "reinforce_pp"):
        _, kl = critic_free_advantages(algorithm, scores, logprobs, logprobs.clone(), mask, 0.1, 2)
        close(kl, [[0, 0], [0, 0]])
    # k1 per token: row 0 [0.5, 0], row 1 [0, 0].
    # RLOO, KL in the sequence reward: R = [1 - 0.1 * 0.5, 0] = [0.95, 0]; K = 2: A = [0.95, -0.95] on every token.
    advantages, kl = critic_free_advantages("rloo", scores, logprobs, ref, mask, 0.1, 2)
    close(kl, [[0.5, 0.0], [0.0, 0.0]])
    close(advantages, [[0.95, 0.95], [-0.95, -0.95]])
    # GRPO, KL kept out: scores [1, 0], mean 0.5, sample std 0.707107 -> +-0.5 / (0.707107 + 1e-4) = +-0.70701.
    advantages, _ = critic_free_advantages("grpo", scores, logprobs, ref, mask, 0.1, 2)
    close(advantages, [[0.70701, 0.70701], [-0.70701, -0.70701]])
    # REINFORCE++, KL per token in the reward: row 0 [-0.05, 1], returns-to-go [0.95, 1]; row 1 [0, 0].
    advantages, _ = critic_free_advantages("reinforce_pp", scores, logprobs, ref, mask, 0.1, 2)
    close(advantages, [[0.95, 1.0], [0.0, 0.0]])


def test_rloo_leaves_an_unbaselined_reward_out_of_the_baseline_by_hand() -> None:
    # Two groups of K = 2, KL 0. Scores [1 + 1, 1 + 1] and [0 - 1, 0.5 + 0]: the rule's share is [1, 1] and [-1, 0].
    # Group 1 baselined on the rest [1, 1]: [0, 0], plus the rule [1, 1] -> [1, 1] (the group baseline alone: [0, 0]).
    # Group 2 baselined on the rest [0, 0.5]: [-0.5, 0.5], plus the rule [-1, 0] -> [-1.5, 0.5] (alone: [-1.5, 1.5]).
    scores = torch.tensor([2.0, 2.0, -1.0, 0.5])
    logprobs = torch.full((4, 1), -1.0)
    mask = torch.ones(4, 1, dtype=torch.bool)
    rule = torch.tensor([1.0, 1.0, -1.0, 0.0])
    advantages, _ = critic_free_advantages("rloo", scores, logprobs, logprobs.clone(), mask, 0.1, 2, unbaselined=rule)
    close(advantages, [[1.0], [1.0], [-1.5], [0.5]])
    plain, _ = critic_free_advantages("rloo", scores, logprobs, logprobs.clone(), mask, 0.1, 2)
    close(plain, [[0.0], [0.0], [-1.5], [1.5]])
    zeros, _ = critic_free_advantages("rloo", scores, logprobs, logprobs.clone(), mask, 0.1, 2, unbaselined=rule * 0)
    assert torch.equal(zeros, plain)  # nothing left out: the plain estimator, bit for bit
    for other in ("grpo", "reinforce_pp"):
        with pytest.raises(ValueError, match="unbaselined applies to rloo only"):
            critic_free_advantages(other, scores, logprobs, logprobs.clone(), mask, 0.1, 2, unbaselined=rule)


def test_padding_never_reaches_an_advantage() -> None:
    scores = torch.tensor([2.0, 1.0])
    logprobs = torch.tensor([[-1.0, float("nan")], [-1.0, -1.0]])
    mask = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    for algorithm in ("rloo", "grpo", "reinforce_pp"):
        advantages, kl = critic_free_advantages(algorithm, scores, logprobs, logprobs.clone(), mask, 0.1, 2)
        assert advantages[0, 1] == 0 and kl[0, 1] == 0 and torch.isfinite(advantages).all()
