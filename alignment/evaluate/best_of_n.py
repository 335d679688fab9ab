"""Best-of-n: a baseline policy made at inference time, with no training (Stiennon et al. 2020; Nakano et al. 2021).

For every prompt, n responses are sampled from a base policy (n seeded streams: the evaluation seed, seed + 1, ...;
the first is the base policy's own evaluation sample, reused), each is scored by the proxy reward mix (each reward
model's score normalised by its reference statistics and weighted, the sum PPO's weighted run optimises), and the
highest-scoring one is kept. Best-of-n is not an autoregressive policy, so its KL to the base policy is not taken by
teacher forcing: the report gives the analytic ``log n - (n - 1) / n`` (Stiennon et al. 2020, appendix G.3; an upper
bound, Beirami et al. 2024). Its cost is paid at inference, n generations and n reward scores per prompt, and is
measured here in seconds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignment.core.config import Config, ConfigError
from alignment.evaluate.generate import _release_memory, generate_responses, load_eval_scorer, load_policy
from alignment.evaluate.prompts import generation_key, load_generations, sampling_settings, save_generations
from alignment.evaluate.records import EvalPrompt, Generation, PolicyOutputs, PolicySpec

logger = logging.getLogger(__name__)


def best_of_n_kl(n: int) -> float:
    """``log n - (n - 1) / n`` nats: KL(best-of-n || base) for distinct samples (Stiennon et al. 2020, app. G.3)."""
    return math.log(n) - (n - 1) / n


def pick_best(scores: torch.Tensor) -> list[int]:
    """``(n, P)`` combined scores of n candidates for P prompts -> the winning candidate per prompt (first on ties)."""
    return scores.argmax(dim=0).tolist()


def combined_scores(per_model: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The weighted sum of normalised scores (each ``(n, P)``): the reward mix PPO's weighted run maximises."""
    return sum(w * s for w, s in zip(weights, per_model))


def picking_rewards(ev: Any, reward_names: Sequence[str]) -> list[str]:
    """The reward models whose mix picks the best: ``best_of_n_rewards``, else the proxy (or helpful, or first) one."""
    if ev.best_of_n_rewards:
        return list(ev.best_of_n_rewards)
    return [ev.proxy_reward or ev.helpful_reward or reward_names[0]] if reward_names else []


def check_best_of_n(ev: Any, reward_names: Sequence[str], policy_names: Sequence[str]) -> None:
    """best_of_n settings that cannot work, refused before anything loads, naming the key."""
    if ev.best_of_n == 0:
        return
    if ev.best_of_n < 2:
        raise ConfigError(f"best_of_n must be 0 (off) or at least 2, got {ev.best_of_n}")
    if ev.temperature == 0:
        raise ConfigError("best_of_n needs sampling: with temperature 0 every candidate is the same greedy answer")
    rewards = picking_rewards(ev, reward_names)
    unknown = [r for r in rewards if r not in reward_names]
    if not rewards or unknown:
        raise ConfigError(f"best_of_n_rewards {unknown or rewards} must name reward models of {list(reward_names)}")
    if ev.best_of_n_weights and len(ev.best_of_n_weights) != len(rewards):
        raise ConfigError("best_of_n_weights needs one weight per entry of best_of_n_rewards")
    if ev.best_of_n_policy is not None and ev.best_of_n_policy not in policy_names:
        raise ConfigError(f"best_of_n_policy {ev.best_of_n_policy!r} is none of the policies {list(policy_names)}")


def best_of_n_outputs(
    cfg: Config,
    base: PolicyOutputs,
    reward_names: Sequence[str],
    prompts: Sequence[EvalPrompt],
    gen_dir: Path,
    device: torch.device,
) -> tuple[PolicyOutputs, dict[str, float]]:
    """The best of ``best_of_n`` samples of ``base`` per prompt, and what it cost (seconds, samples)."""
    ev = cfg.evaluate
    n = ev.best_of_n
    rewards = picking_rewards(ev, reward_names)
    weights = list(ev.best_of_n_weights) or [1.0] * len(rewards)
    spec = PolicySpec(base.name, base.path)
    started = time.perf_counter()
    candidates = [base.generations] + _extra_samples(cfg, spec, n - 1, prompts, gen_dir, device)
    generated = time.perf_counter()
    paths = dict(zip(reward_names, ev.reward_model_paths))
    per_model = []
    for name in rewards:
        scorer = load_eval_scorer(cfg, paths[name], name, device)
        per_model.append(
            torch.stack(
                [scorer.score([g.messages for g in c], [g.response for g in c], normalize=True) for c in candidates]
            )
        )
        scorer = None
        _release_memory()
    winners = pick_best(combined_scores(per_model, weights))
    chosen = [candidates[k][i] for i, k in enumerate(winners)]
    cost = {
        "samples_per_prompt": n,
        "generation_seconds": generated - started,
        "scoring_seconds": time.perf_counter() - generated,
        "rewards": list(rewards),
        "weights": weights,
    }
    logger.info("best-of-%d over %s: %.0f s sampling, %.0f s scoring", n, base.name, *list(cost.values())[1:3])
    name = f"best-of-{n}"
    best = PolicyOutputs(
        name, base.path, chosen, kl=[best_of_n_kl(n)] * len(chosen), answers_per_prompt=base.answers_per_prompt
    )
    return best, cost


def _extra_samples(
    cfg: Config, spec: PolicySpec, count: int, prompts: Sequence[EvalPrompt], gen_dir: Path, device: torch.device
) -> list[list[Generation]]:
    """``count`` more samples of ``spec`` per prompt, seeds seed + 1 ... seed + count, saved and reused like any
    policy's generations."""
    settings = sampling_settings(cfg)
    out: list[list[Generation] | None] = []
    keys = []
    for k in range(1, count + 1):
        seeded = {**settings, "seed": settings["seed"] + k}
        keys.append((f"{spec.name}.sample-{k}", generation_key(spec, prompts, seeded, cfg.model), seeded))
        out.append(
            load_generations(gen_dir, keys[-1][0], keys[-1][1], len(prompts))
            if cfg.evaluate.reuse_generations
            else None
        )
    missing = [i for i, g in enumerate(out) if g is None]
    if missing:
        model, tokenizer = load_policy(cfg, spec, device)
        try:
            for i in missing:
                name, key, seeded = keys[i]
                out[i] = generate_responses(
                    model, tokenizer, prompts, seeded, cfg.evaluate.generation_batch_size, desc=f"generate {name}"
                )
                save_generations(gen_dir, name, key, out[i], {"policy": spec.path, "settings": seeded})
        finally:
            model = tokenizer = None
            _release_memory()
    return [g for g in out if g is not None]
