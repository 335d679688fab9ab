"""PPO's reward: weighted, normalised reward models minus a Lagrange-weighted cost, checked by hand."""

from __future__ import annotations

import pytest
import torch

from alignment.core.config import ConfigError
from alignment.modeling.scoring import RewardStats
from alignment.ppo.config import PPOConfig, validate_sampling
from alignment.ppo.rewards import CombinedReward, refusal_rule_rewards, weights_per_prompt
from alignment.rl.controllers import LagrangeMultiplier


class FixedScorer:
    def __init__(self, name: str, scores: list[float], mean: float, std: float) -> None:
        self.name, self.scores, self.stats = name, torch.tensor(scores), RewardStats(mean, std)

    def score(self, prompts, responses) -> torch.Tensor:
        return self.scores


def test_weighted_rewards_minus_a_lagrange_weighted_cost_by_hand():
    helpful = FixedScorer("helpful", [3.0, 1.0], mean=1.0, std=2.0)  # normalised: 1.0, 0.0
    harmful = FixedScorer("cost", [0.5, -0.5], mean=0.0, std=0.5)  # normalised cost: 1.0, -1.0
    reward = CombinedReward([helpful], [2.0], harmful, LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0))
    total, raw = reward.combined(None, None, ["p", "q"], ["a", "b"])
    # (2 * 1.0 - 1 * 1.0) / (1 + 1) = 0.5 ; (2 * 0.0 - 1 * -1.0) / 2 = 0.5
    torch.testing.assert_close(total, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(raw["cost"], torch.tensor([1.0, -1.0]))


def test_a_harmlessness_reward_as_the_cost_is_negated():
    helpful = FixedScorer("helpful", [1.0, 1.0], mean=1.0, std=1.0)  # normalised: 0, 0
    harmless = FixedScorer("harmless", [2.0, -2.0], mean=0.0, std=2.0)  # normalised: 1, -1 -> cost -1, +1
    lagrange = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0)
    reward = CombinedReward([helpful], [1.0], harmless, lagrange, cost_sign=-1.0)
    total, raw = reward.combined(None, None, ["p", "q"], ["safe", "unsafe"])
    torch.testing.assert_close(raw["cost"], torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(total, torch.tensor([0.5, -0.5]))  # (0 - 1 * cost) / 2: the harmless reply wins


def test_weights_by_label_score_each_prompt_by_its_own_row_by_hand():
    helpful = FixedScorer("helpful", [3.0, 3.0, 3.0], mean=1.0, std=2.0)  # normalised: 1, 1, 1
    harmless = FixedScorer("harmless", [2.0, 2.0, -2.0], mean=0.0, std=2.0)  # normalised: 1, 1, -1
    reward = CombinedReward([helpful, harmless], [1.0, 0.0], weights_by_label={"harmful": [0.0, 2.0]})
    total, _ = reward.combined(None, None, ["p", "q", "r"], ["a", "b", "c"], labels=["helpful", "harmful", None])
    # helpful: 1*1 + 0*1 = 1 ; harmful: 0*1 + 2*1 = 2 ; no label: the default weights, 1*1 + 0*(-1) = 1
    torch.testing.assert_close(total, torch.tensor([1.0, 2.0, 1.0]))
    unlabelled, _ = reward.combined(None, None, ["p", "q", "r"], ["a", "b", "c"])
    torch.testing.assert_close(unlabelled, torch.tensor([1.0, 1.0, 1.0]))


def test_weights_per_prompt_falls_back_to_the_default_row():
    rows = weights_per_prompt(["safe", "harmful", None], [1.0, 0.5], {"harmful": [0.0, 1.0]})
    torch.testing.assert_close(rows, torch.tensor([[1.0, 0.5], [0.0, 1.0], [1.0, 0.5]]))


class ListedRefusals:
    """A detector that calls the listed texts refusals."""

    def __init__(self, *refusals: str) -> None:
        self.refusals = set(refusals)

    def is_refusal(self, text: str) -> bool:
        return text in self.refusals


def test_the_refusal_rule_pays_and_charges_refusals_by_label_by_hand():
    helpful = FixedScorer("helpful", [3.0, 3.0, 3.0, 3.0, 3.0], mean=1.0, std=2.0)  # normalised: 1 each
    reward = CombinedReward(
        [helpful],
        [1.0],
        refusal_detector=ListedRefusals("no", "nope", "never"),
        refusal_reward_by_label={"harmful": 2.0, "safe": -1.5},
    )
    labels = ["harmful", "harmful", "safe", "helpful", None]
    total, raw = reward.combined(None, None, list("pqrst"), ["no", "sure", "nope", "never", "no"], labels=labels)
    # a refused harmful request: 1 + 2 ; a complied one: 1 ; a refused safe one: 1 - 1.5 ;
    # a refusal under a label without a value, or without a label: 1
    torch.testing.assert_close(total, torch.tensor([3.0, 1.0, -0.5, 1.0, 1.0]))
    torch.testing.assert_close(raw["refused"], torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(raw["refused/harmful"], torch.tensor([1.0, 0.0]))  # logged per label: 50% here
    assert sorted(raw) == ["helpful", "refused", "refused/harmful", "refused/helpful", "refused/safe", "rule_reward"]
    torch.testing.assert_close(raw["rule_reward"], torch.tensor([2.0, 0.0, -1.5, 0.0, 0.0]))  # the rule's share


def test_refusal_rule_rewards_by_hand():
    values = refusal_rule_rewards([True, False, True, True], ["harmful", "harmful", "safe", None], {"harmful": 1.0})
    torch.testing.assert_close(values, torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_the_rule_adds_before_the_lagrangian_rescaling():
    helpful = FixedScorer("helpful", [1.0, 1.0], mean=1.0, std=1.0)  # normalised: 0, 0
    cost = FixedScorer("cost", [0.0, 0.0], mean=0.0, std=1.0)  # cost 0
    reward = CombinedReward(
        [helpful],
        [1.0],
        cost,
        LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0),
        refusal_detector=ListedRefusals("no"),
        refusal_reward_by_label={"harmful": 2.0},
    )
    total, raw = reward.combined(None, None, ["p", "q"], ["no", "yes"], labels=["harmful", "harmful"])
    torch.testing.assert_close(total, torch.tensor([1.0, 0.0]))  # (0 + 2 - 1 * 0) / (1 + 1)
    torch.testing.assert_close(raw["rule_reward"], torch.tensor([1.0, 0.0]))  # its share of the total: 2 / (1 + 1)


def test_refusal_rule_settings_are_checked_before_any_model_loads():
    one_model = {"reward_model_paths": ["helpful"]}
    with pytest.raises(ConfigError, match=r"refusal_reward_by_label: 'harmful' needs one number, got 'yes'"):
        validate_sampling(PPOConfig(refusal_reward_by_label={"harmful": "yes"}, **one_model))
    with pytest.raises(ConfigError, match=r"refusal_reward_detector 'regex' is unknown; known: classifier, phrase$"):
        validate_sampling(
            PPOConfig(refusal_reward_by_label={"harmful": 1}, refusal_reward_detector="regex", **one_model)
        )
    validate_sampling(PPOConfig(refusal_reward_by_label={"harmful": 1, "safe": -1.5}, **one_model))
    rule, one_model = {"harmful": 1.0}, {**one_model, "samples_per_prompt": 4}
    with pytest.raises(ConfigError, match=r"refusal_reward_baseline must be group or none, got 'batch'"):
        validate_sampling(PPOConfig(refusal_reward_by_label=rule, refusal_reward_baseline="batch", **one_model))
    with pytest.raises(ConfigError, match=r"refusal_reward_baseline: none applies to algorithm rloo .*'grpo'"):
        validate_sampling(
            PPOConfig(algorithm="grpo", refusal_reward_by_label=rule, refusal_reward_baseline="none", **one_model)
        )
    with pytest.raises(ConfigError, match=r"refusal_reward_baseline: none applies .* refusal_reward_by_label \{\}"):
        validate_sampling(PPOConfig(algorithm="rloo", refusal_reward_baseline="none", **one_model))
    validate_sampling(
        PPOConfig(algorithm="rloo", refusal_reward_by_label=rule, refusal_reward_baseline="none", **one_model)
    )
