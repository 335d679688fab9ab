"""The reward PPO maximises: several reward models, normalised and weighted, minus a Lagrange-weighted cost."""

from __future__ import annotations

import torch

from alignment.core.config import Config
from alignment.modeling.scoring import load_reward_scorer
from alignment.modeling.sequences import SequenceBatch
from alignment.ppo.actor_critic import ActorCritic
from alignment.rl.controllers import LagrangeMultiplier


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
        cost_sign: float = 1.0,
    ) -> None:
        self.scorers, self.weights, self.shared_index = scorers, weights, shared_index
        self.cost_scorer, self.lagrange, self.clip = cost_scorer, lagrange, clip
        self.cost_sign = cost_sign  # -1: the cost model is a harmlessness reward, its negated score is the cost

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
            cost = self.cost_sign * self.cost_scorer.stats.normalize(self.cost_scorer.score(prompts, responses))
            raw["cost"] = cost
            lam = self.lagrange.value
            # PPO-Lagrangian (Safe RLHF, Dai et al. 2023): maximise R - lambda C, rescaled by 1 / (1 + lambda).
            total = (total - lam * cost) / (1.0 + lam)
        return total.clamp(-self.clip, self.clip), raw


def build_rewards(cfg: Config, ac: ActorCritic, shared_scorer) -> CombinedReward:
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
    cost_sign = -1.0 if ppo.cost_model_is_reward else 1.0
    return CombinedReward(scorers, weights, shared_index, cost_scorer, lagrange, ppo.reward_clip, cost_sign)


class SharedScorer:
    """Name and statistics of the reward model that lives on the shared base (scored by ``ActorCritic``)."""

    def __init__(self, name: str, stats) -> None:
        self.name, self.stats = name, stats
