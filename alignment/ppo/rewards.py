"""The reward PPO maximises: several reward models, normalised and weighted, minus a Lagrange-weighted cost."""

from __future__ import annotations

import torch

from alignment.core.config import Config
from alignment.modeling.refusal import RefusalDetector, detect_refusals, make_detector
from alignment.modeling.scoring import load_reward_scorer
from alignment.modeling.sequences import SequenceBatch
from alignment.ppo.actor_critic import ActorCritic
from alignment.rl.controllers import LagrangeMultiplier


def weights_per_prompt(
    labels: list[str | None], weights: list[float], weights_by_label: dict[str, list[float]]
) -> torch.Tensor:
    """(B, M) weight of each of M reward models for each prompt: its label's row of ``weights_by_label``, else
    ``weights``. With a harmlessness model weighted on harmful prompts only, refusing a safe request earns nothing
    from it (Llama 2: the safety reward on safety prompts, the helpfulness reward elsewhere; Touvron et al. 2023,
    sec. 3.2.3)."""
    rows = [weights_by_label.get(label, weights) if label is not None else weights for label in labels]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(labels), len(weights))


def refusal_rule_rewards(
    refused: list[bool], labels: list[str | None], reward_by_label: dict[str, float]
) -> torch.Tensor:
    """(B,) the rule-based reward for refusing: a refused response earns its prompt label's value, any other response
    (and any refusal to a prompt whose label has no value) earns 0 (rule-based rewards, Mu et al. 2024)."""
    values = [
        reward_by_label.get(label, 0.0) if was_refused and label is not None else 0.0
        for was_refused, label in zip(refused, labels)
    ]
    return torch.tensor(values, dtype=torch.float32)


class CombinedReward:
    """Normalised, weighted reward models (plus an optional cost model with a Lagrange multiplier)."""

    def __init__(
        self,
        scorers: list,
        weights: list[float],
        cost_scorer=None,
        lagrange=None,
        clip: float = 10.0,
        cost_sign: float = 1.0,
        weights_by_label: dict[str, list[float]] | None = None,
        refusal_detector: RefusalDetector | None = None,
        refusal_reward_by_label: dict[str, float] | None = None,
    ) -> None:
        self.scorers, self.weights = scorers, weights
        self.weights_by_label = weights_by_label or {}
        self.cost_scorer, self.lagrange, self.clip = cost_scorer, lagrange, clip
        self.cost_sign = cost_sign  # -1: the cost model is a harmlessness reward, its negated score is the cost
        self.refusal_detector = refusal_detector
        self.refusal_reward_by_label = refusal_reward_by_label or {}

    def combined(
        self,
        ac: ActorCritic,
        batch: SequenceBatch,
        prompts: list,
        responses: list[str],
        labels: list[str | None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reward of each response; ``labels``: each prompt's label, for ``weights_by_label``."""
        raw: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(responses))
        weights = weights_per_prompt(labels or [None] * len(responses), self.weights, self.weights_by_label)
        for m, scorer in enumerate(self.scorers):
            score = _score(scorer, ac, batch, prompts, responses)
            raw[scorer.name] = score
            total += weights[:, m] * scorer.stats.normalize(score)
        if self.refusal_detector is not None:
            labels = labels or [None] * len(responses)
            refused = detect_refusals(self.refusal_detector, responses)
            raw["refused"] = torch.tensor(refused, dtype=torch.float32)
            for label in sorted({label for label in labels if label is not None}):  # does it refuse the right ones?
                raw[f"refused/{label}"] = torch.tensor([r for r, lab in zip(refused, labels) if lab == label]).float()
            rule = refusal_rule_rewards(refused, labels, self.refusal_reward_by_label)
            raw["rule_reward"] = rule  # as it enters the total (rescaled below with a cost model)
            total += rule
        if self.cost_scorer is not None:
            cost_score = _score(self.cost_scorer, ac, batch, prompts, responses)
            cost = self.cost_sign * self.cost_scorer.stats.normalize(cost_score)
            raw["cost"] = cost
            lam = self.lagrange.value
            # PPO-Lagrangian (Safe RLHF, Dai et al. 2023): maximise R - lambda C, rescaled by 1 / (1 + lambda).
            total = (total - lam * cost) / (1.0 + lam)
            if "rule_reward" in raw:
                raw["rule_reward"] = raw["rule_reward"] / (1.0 + lam)
        return total.clamp(-self.clip, self.clip), raw


def _score(scorer, ac: ActorCritic, batch: SequenceBatch, prompts: list, responses: list[str]) -> torch.Tensor:
    if isinstance(scorer, SharedScorer):  # on the policy's base: same tokenizer and template, score the sampled ids
        return ac.reward_scores(batch, scorer.adapter).float().cpu()
    return scorer.score(prompts, responses)


def build_rewards(cfg: Config, ac: ActorCritic, shared: dict[str, SharedScorer]) -> CombinedReward:
    """``shared``: the reward and cost models riding on the policy's base, by path; the others load on their own."""
    ppo = cfg.ppo
    scorers = [
        shared.get(path) or load_reward_scorer(path, quant_cfg=cfg.quant, device=ac.device)
        for path in ppo.reward_model_paths
    ]
    weights = [float(w) for w in ppo.reward_weights] or [1.0] * len(scorers)
    cost_scorer = lagrange = None
    if ppo.cost_model_path:
        on_base = shared.get(ppo.cost_model_path)
        cost_scorer = (
            SharedScorer("cost", on_base.stats, on_base.adapter)
            if on_base is not None
            else load_reward_scorer(ppo.cost_model_path, name="cost", quant_cfg=cfg.quant, device=ac.device)
        )
        lagrange = LagrangeMultiplier(init=ppo.lagrange_init, lr=ppo.lagrange_lr, threshold=ppo.cost_threshold)
    cost_sign = -1.0 if ppo.cost_model_is_reward else 1.0
    weights_by_label = {label: [float(w) for w in row] for label, row in ppo.reward_weights_by_label.items()}
    rule = {label: float(value) for label, value in ppo.refusal_reward_by_label.items()}
    detector = make_detector(ppo.refusal_reward_detector, "refusal_reward_detector") if rule else None
    return CombinedReward(
        scorers, weights, cost_scorer, lagrange, ppo.reward_clip, cost_sign, weights_by_label, detector, rule
    )


class SharedScorer:
    """A reward (or cost) model living on the shared base as a LoRA adapter: its name, reference statistics and
    adapter (scored by ``ActorCritic.reward_scores``)."""

    def __init__(self, name: str, stats, adapter: str = "reward") -> None:
        self.name, self.stats, self.adapter = name, stats, adapter
