"""The PPO update: clipped policy and value steps over mini-batches of one rollout, and their multi-process forms.

The losses themselves are pure functions in :mod:`alignment.rl.ppo_math`; here they meet the model and optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from alignment.core.run import Run
from alignment.core.sharding import clip_grad_norm_, is_sharded_tensor
from alignment.ppo.actor_critic import ActorCritic
from alignment.ppo.config import PPOConfig
from alignment.ppo.rollout import Rollout
from alignment.rl.critic_free import grpo_kl_loss
from alignment.rl.masked import masked_mean, masked_whiten
from alignment.rl.ppo_math import clipped_policy_loss, clipped_value_loss, explained_variance
from alignment.training.batching import reduce_sum


def ppo_update(
    ac: ActorCritic,
    optimizer,
    rollout: Rollout,
    advantages,
    returns,
    cfg: PPOConfig,
    train_policy: bool,
    max_grad_norm: float,
    average_gradients: Callable[[], None] | None = None,
    kl_loss_coef: float = 0.0,
    ptx_loss: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Several epochs of clipped policy and value updates over mini-batches of one rollout.

    Without a critic (``ac.has_critic`` false) only the policy steps and ``returns`` is unused. ``kl_loss_coef``
    adds GRPO's KL-to-reference term to the policy loss; ``ptx_loss`` (PPO-ptx) gives the next demonstrations'
    loss for each policy step, weighted by ``cfg.ptx_coef``. ``average_gradients`` (multi-process) runs before
    clipping, so every rank clips and steps the same gradient.
    """
    stats: dict[str, list[float]] = {}
    n = rollout.response_ids.shape[0]
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.mini_batch_size):
            idx = order[start : start + cfg.mini_batch_size].to(ac.device)
            batch, mask = rollout.batch.select(idx), rollout.response_mask[idx]
            ac.train()
            # Critic first, then the policy. A graph kept from the rollout (whole batch, nothing stepped yet)
            # stands in for the forward and is freed by its backward.
            if ac.has_critic:
                if rollout.values_graph is not None and len(idx) == n:
                    values, rollout.values_graph = rollout.values_graph[idx], None
                else:
                    values = ac.response_values(batch, mask.shape[1])
                vf_loss, vf_clipfrac = clipped_value_loss(
                    values, rollout.values[idx], returns[idx], mask, cfg.value_clip_eps
                )
                (cfg.vf_coef * vf_loss).backward()
                _append(stats, {"loss/value_avg": vf_loss, "val/clipfrac_avg": vf_clipfrac})
            if train_policy:
                if rollout.logprobs_graph is not None and len(idx) == n:
                    logprobs, entropy = rollout.logprobs_graph[idx], rollout.entropy[idx]
                    rollout.logprobs_graph = rollout.entropy = None
                else:
                    logprobs, entropy = ac.response_logprobs(
                        batch, rollout.response_ids[idx], cfg.temperature, with_entropy=True
                    )
                pg_loss, pg_stats = clipped_policy_loss(
                    logprobs, rollout.logprobs[idx], advantages[idx], mask, cfg.clip_eps
                )
                loss = pg_loss
                if kl_loss_coef:  # GRPO: the KL to the reference is a loss term, not a reward
                    kl_loss = grpo_kl_loss(logprobs, rollout.ref_logprobs[idx], mask)
                    loss = pg_loss + kl_loss_coef * kl_loss
                    _append(stats, {"loss/kl_avg": kl_loss})
                loss.backward()
                _append(
                    stats,
                    {
                        "loss/policy_avg": pg_loss,
                        "policy/entropy_avg": masked_mean(entropy, mask),
                        **{f"policy/{k}": v for k, v in pg_stats.items()},
                    },
                )
                if ptx_loss is not None:  # its own backward: the rollout's graph is freed before this one is built
                    demonstrations_loss = ptx_loss()
                    (cfg.ptx_coef * demonstrations_loss).backward()
                    _append(stats, {"loss/ptx_avg": demonstrations_loss})
            if average_gradients is not None:
                average_gradients()
            params = ac.trainable_parameters()
            if ac.sharded:  # sharded blocks beside whole heads: torch's clip cannot mix the two
                grad_norm = clip_grad_norm_(params, max_grad_norm)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _append(stats, {"train/grad_norm": grad_norm})
    rollout.values_graph = rollout.logprobs_graph = rollout.entropy = None
    return {k: sum(v) / len(v) for k, v in stats.items()}


def _append(stats: dict[str, list[float]], values: dict[str, Any]) -> None:
    for key, value in values.items():
        stats.setdefault(key, []).append(float(value.detach() if isinstance(value, torch.Tensor) else value))


def ppo_update_synced(
    run: Run,
    ac: ActorCritic,
    optimizer,
    rollout: Rollout,
    advantages,
    returns,
    cfg: PPOConfig,
    train_policy: bool,
    max_grad_norm: float,
    kl_loss_coef: float = 0.0,
    ptx_loss: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """``ppo_update`` with gradients averaged across processes and its statistics averaged over ranks."""
    world = run.accelerator.num_processes
    stats = ppo_update(
        ac,
        optimizer,
        rollout,
        advantages,
        returns,
        cfg,
        train_policy,
        max_grad_norm,
        average_gradients=(lambda: sync_gradients(run, ac.trainable_parameters())) if world > 1 else None,
        kl_loss_coef=kl_loss_coef,
        ptx_loss=ptx_loss,
    )
    if world == 1:
        return stats
    keys = sorted(stats)
    return {k: v / world for k, v in zip(keys, reduce_sum(run, [stats[k] for k in keys]))}


def sync_gradients(run: Run, params: list[torch.nn.Parameter]) -> None:
    """Average gradients across processes (the adapters are small, so one all-reduce each is cheap).

    Parameters of sharded blocks (FSDP) are skipped: their backward already reduce-scattered the average.
    """
    if run.accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for param in params:
        if is_sharded_tensor(param):
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad /= run.accelerator.num_processes


def global_whiten(run: Run, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whiten over the valid tokens of the *global* batch (all processes), so every rank scales its advantages alike."""
    if run.accelerator.num_processes == 1:
        return masked_whiten(x, mask)
    m = mask.float()
    total, total_sq, count = reduce_sum(run, [float((x * m).sum()), float((x * x * m).sum()), float(m.sum())])
    mean = total / count
    var = (total_sq / count - mean * mean) * count / max(count - 1, 1)
    return torch.where(mask.bool(), (x - mean) / math.sqrt(var + 1e-8), torch.zeros_like(x))


def global_explained_variance(run: Run, values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over the valid tokens of all processes."""
    if run.accelerator.num_processes == 1:
        return float(explained_variance(values, returns, mask))
    m = mask.float()
    r, d = returns.float() * m, (returns.float() - values.float()) * m
    n, sr, srr, sd, sdd = reduce_sum(
        run, [float(m.sum()), float(r.sum()), float((r * r).sum()), float(d.sum()), float((d * d).sum())]
    )
    var_r = srr / n - (sr / n) ** 2
    var_d = sdd / n - (sd / n) ** 2
    return 1.0 - var_d / var_r if var_r > 0 else float("nan")
