"""The RL loop, top to bottom: roll out, KL penalty and advantages (GAE, or a critic-free baseline), update,
controllers, checkpoint."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from alignment.core.checkpointing import (
    GracefulInterrupt,
    TrainingInterrupted,
    check_finite,
    fault_point,
    resume_from_newest,
    save_checkpoint,
)
from alignment.core.run import Run
from alignment.core.sharding import gathered_checkpoint_state, gathered_model_state
from alignment.core.tracking import progress
from alignment.ppo.actor_critic import ActorCritic
from alignment.ppo.config import PPOConfig
from alignment.ppo.policy import save_policy
from alignment.ppo.ptx import build_ptx_term
from alignment.ppo.rewards import CombinedReward
from alignment.ppo.rollout import (
    Rollout,
    RolloutPasses,
    collect_rollout,
    heldout_reward,
    recomputes_rollout_logprobs,
    rollout_statistics,
    samples_from_merged_weights,
)
from alignment.ppo.update import global_explained_variance, global_whiten, ppo_update_synced
from alignment.rl.controllers import AdaptiveKLController, FixedKLController
from alignment.rl.critic_free import critic_free_advantages
from alignment.rl.ppo_math import gae_advantages, kl_shaped_rewards
from alignment.training.batching import adamw, local_shard, micro_batch_indices, reduce_sum, stratified_batch_indices
from alignment.training.budget import TrainingBudget

logger = logging.getLogger(__name__)


def ppo_loop(
    run: Run, ac: ActorCritic, rewards: CombinedReward, prompts: list, eval_prompts: list, tokenizer
) -> dict[str, Any]:
    cfg, train_cfg = run.cfg.ppo, run.cfg.train
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    global_batch = cfg.rollout_batch_size * world
    if world > 1 and len(prompts) < global_batch:
        raise ValueError(
            f"{len(prompts)} training prompts cannot fill one rollout batch of {cfg.rollout_batch_size} prompts "
            f"on each of {world} processes: use more prompts or a smaller rollout_batch_size"
        )
    batches_per_epoch = max(len(prompts) // global_batch, 1)
    total_updates = max(cfg.total_episodes // global_batch, 1)
    recompute_logprobs = recomputes_rollout_logprobs(cfg, ac, run.accelerator.mixed_precision)
    if recompute_logprobs:
        logger.info("rollout log-probs: a packed policy pass (rollout_logprobs=%s)", cfg.rollout_logprobs)
    ac.merge_for_sampling = samples_from_merged_weights(cfg, ac, recompute_logprobs)
    # One mini-batch per epoch: the first one back-propagates through the rollout's own critic (and recomputed
    # policy) passes, one forward fewer each; the two graphs are then held together until the update. Not with
    # gradient checkpointing: the rollout runs in eval mode, where checkpointing is off, so a kept graph would hold
    # every activation the user asked not to keep.
    rollout_rows = cfg.rollout_batch_size * cfg.samples_per_prompt
    reuse_rollout_passes = cfg.mini_batch_size >= rollout_rows and not run.cfg.model.gradient_checkpointing
    ptx = build_ptx_term(run.cfg, ac, tokenizer, rank, world)  # PPO-ptx, or None
    # Every process holds rollout_rows rows in every update (only full global batches are taken: batches_per_epoch
    # rounds down), so each takes the same number of policy steps.
    policy_steps_per_update = cfg.ppo_epochs * math.ceil(rollout_rows / cfg.mini_batch_size)
    kl_ctl = kl_controller(cfg)
    optimizer = ppo_optimizer(ac, cfg, train_cfg.learning_rate)
    start, state = 0, {}
    if train_cfg.resume:
        state = resume_from_newest(run.output_dir, model=ac, optimizer=optimizer) or {}
        start = state.get("step", 0)
        run.metrics.drop_steps_after(start)
    if state:
        kl_ctl.load_state_dict(state["kl_controller"])
        if rewards.lagrange is not None:
            rewards.lagrange.load_state_dict(state["lagrange"])
    budget = TrainingBudget(train_cfg.max_train_minutes, state.get("budget_seconds_spent", 0.0))
    reward_before = state.get("heldout_reward_before")
    if reward_before is None:
        reward_before = heldout_reward(ac, rewards, eval_prompts, tokenizer, cfg, train_cfg.seed)
    first_scores = state.get("reward_mean_first")
    bar = progress(total=total_updates, desc="ppo", enabled=run.is_main, initial=start)
    timing = {"generate": 0.0, "train": 0.0}
    episodes, stats = 0, {}
    with GracefulInterrupt() as interrupt:
        for step in range(start, total_updates):
            # 1. Take this update's prompts: a seeded permutation per epoch (each label in its share of every batch, if
            # stratified), so the data position follows from the step.
            epoch, k = divmod(step, batches_per_epoch)
            if cfg.stratify_by_label:
                batches = stratified_batch_indices([p.label for p in prompts], global_batch, epoch, train_cfg.seed)
            else:
                batches = micro_batch_indices(len(prompts), global_batch, epoch, train_cfg.seed)
            indices = local_shard(batches[k], rank, world)
            t0 = time.perf_counter()
            # 2. Roll out: sample, score, reference log-probs and values (without grad, except the passes the update reuses).
            passes = RolloutPasses(
                recompute_logprobs=recompute_logprobs,
                keep_policy_graph=reuse_rollout_passes and step >= cfg.critic_warmup_steps,
                keep_value_graph=reuse_rollout_passes,
            )
            # K samples of each prompt, in consecutive rows: the groups of the critic-free baselines.
            batch_prompts = [prompts[i] for i in indices for _ in range(cfg.samples_per_prompt)]
            rollout = collect_rollout(ac, rewards, batch_prompts, tokenizer, cfg, passes)
            t1 = time.perf_counter()
            # 3-4. The KL penalty and the advantages (PPO: GAE on the critic; or a critic-free baseline).
            advantages, returns, kl = estimate_advantages(run, rollout, cfg, kl_ctl.value)
            # 5. PPO epochs over mini-batches (policy frozen during critic warm-up), with the demonstrations' loss
            # in each policy step under PPO-ptx.
            if ptx is not None:
                ptx.seek(step * policy_steps_per_update)
            update_stats = ppo_update_synced(
                run,
                ac,
                optimizer,
                rollout,
                advantages,
                returns,
                cfg,
                step >= cfg.critic_warmup_steps,
                train_cfg.max_grad_norm,
                kl_loss_coef=kl_ctl.value if cfg.algorithm == "grpo" else 0.0,
                ptx_loss=(lambda: ptx.loss(ac)) if ptx is not None else None,
            )
            t2 = time.perf_counter()
            fault_point("ppo_update", step + 1)
            # A policy with NaN or inf weights would fail inside sampling next: stop here, before any checkpoint.
            check_finite(ac, f"PPO update {step + 1}")
            # 6. Controllers: beta towards the KL target, lambda by the constraint violation.
            stats = rollout_statistics(rollout, kl, kl_ctl.value)
            stats = dict(zip(stats, reduce_sum(run, list(stats.values())))) if world > 1 else stats
            stats = {k: v / world for k, v in stats.items()} if world > 1 else stats
            kl_ctl.update(stats["objective/kl"], global_batch)
            if rewards.lagrange is not None:
                # The all-reduced mean cost, so every rank moves lambda the same way.
                stats["objective/lagrange_multiplier"] = rewards.lagrange.update(stats["objective/raw_score/cost"])
            stats.update(update_stats)
            if returns is not None:
                stats["losses/explained_variance"] = global_explained_variance(
                    run, rollout.values, returns, rollout.response_mask
                )
            timing["generate"] += t1 - t0
            timing["train"] += t2 - t1
            budget.spend(t2 - t0)
            episodes += global_batch * cfg.samples_per_prompt
            stats.update(speed_statistics(rollout, global_batch * cfg.samples_per_prompt, world, t1 - t0, t2 - t1))
            first_scores = stats["objective/scores"] if first_scores is None else first_scores
            # 7. Log, look for trouble, checkpoint.
            run.metrics.log(step + 1, stats)
            if cfg.sample_table_steps and (step + 1) % cfg.sample_table_steps == 0:
                log_samples(run, step + 1, rollout)
            bar.update(1)
            bar.set_postfix(score=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.3f}")
            check_guard_rails(stats, cfg, step + 1)
            stop = interrupt.requested
            if stop or (
                train_cfg.save_steps > 0 and (step + 1) % train_cfg.save_steps == 0 and step + 1 < total_updates
            ):
                extra = {
                    "kl_controller": kl_ctl.state_dict(),
                    "heldout_reward_before": reward_before,
                    "reward_mean_first": first_scores,
                    **budget.state(),
                }
                if rewards.lagrange is not None:
                    extra["lagrange"] = rewards.lagrange.state_dict()
                path = save_ppo_checkpoint(run, ac, optimizer, tokenizer, step + 1, extra)
                if stop:
                    raise TrainingInterrupted(path)
            if step + 1 < total_updates and budget.exhausted(run):
                logger.info(
                    "the %.1f-minute training budget is spent after %d of %d updates",
                    train_cfg.max_train_minutes,
                    step + 1,
                    total_updates,
                )
                total_updates = step + 1
                break
    bar.close()
    reward_after = heldout_reward(ac, rewards, eval_prompts, tokenizer, cfg, train_cfg.seed)
    total_time = timing["generate"] + timing["train"]
    return {
        "reward_mean_first": first_scores,
        "reward_mean_last": stats.get("objective/scores"),
        "kl_last": stats.get("objective/kl"),
        "kl_coef_last": kl_ctl.value,
        "heldout_reward_before": reward_before,
        "heldout_reward_after": reward_after,
        "num_heldout_prompts": len(eval_prompts),
        "updates": total_updates,
        "episodes_per_second": episodes / total_time if total_time else 0.0,
        "rollout_time_share": timing["generate"] / total_time if total_time else 0.0,
        **budget.summary(),
    }


def estimate_advantages(
    run: Run, rollout: Rollout, cfg: PPOConfig, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(advantages, returns, kl)`` for one rollout, each ``(B, T)``; ``returns`` is None without a critic.

    PPO: per-token rewards, -beta * KL on every token and the score on the last (InstructGPT eq. 2), then GAE on the
    critic's values, advantages whitened over the global batch. rloo / grpo / reinforce_pp: the baseline comes from
    the rewards themselves, the KL where each paper puts it (:func:`~alignment.rl.critic_free.critic_free_advantages`);
    REINFORCE++ whitens over the global batch, the group methods within each prompt's group (on one rank).
    """
    mask = rollout.response_mask
    if cfg.algorithm != "ppo":
        advantages, kl = critic_free_advantages(
            cfg.algorithm,
            rollout.scores,
            rollout.logprobs,
            rollout.ref_logprobs,
            mask,
            kl_coef,
            cfg.samples_per_prompt,
            cfg.kl_estimator,
            rollout.raw_scores["rule_reward"] if cfg.refusal_reward_baseline == "none" else None,
        )
        if cfg.algorithm == "reinforce_pp":
            advantages = global_whiten(run, advantages, mask)
        return advantages, None, kl
    shaped, kl = kl_shaped_rewards(
        rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef, cfg.kl_estimator
    )
    if cfg.whiten_rewards:
        shaped = global_whiten(run, shaped, mask)
    advantages, returns = gae_advantages(shaped, rollout.values, mask, cfg.gamma, cfg.lam)
    return global_whiten(run, advantages, mask), returns, kl


def kl_controller(cfg: PPOConfig) -> AdaptiveKLController | FixedKLController:
    """The KL coefficient beta: fixed, or adapted towards ``kl_target`` (Ziegler et al. 2019)."""
    if cfg.adaptive_kl:
        return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


def ppo_optimizer(ac: ActorCritic, cfg: PPOConfig, learning_rate: float) -> torch.optim.Optimizer:
    """One AdamW over the policy and value adapters, the critic at its own ``value_learning_rate`` if set."""
    value_params = [
        p for n, p in ac.named_parameters() if p.requires_grad and (".value." in n or n.startswith("value_head"))
    ]
    policy_params = [p for p in ac.trainable_parameters() if all(p is not v for v in value_params)]
    groups = [{"params": policy_params}]
    if value_params:  # none for the critic-free estimators
        groups.append({"params": value_params, "lr": cfg.value_learning_rate or learning_rate})
    return adamw(groups, lr=learning_rate)


def speed_statistics(
    rollout: Rollout, global_batch: int, world: int, rollout_s: float, update_s: float
) -> dict[str, float]:
    generated = float(rollout.response_mask.sum()) * world
    return {
        "time/rollout_s": rollout_s,
        "time/update_s": update_s,
        "perf/episodes_per_second": global_batch / (rollout_s + update_s),
        "perf/generated_tokens_per_second": generated / rollout_s,
    }


def log_samples(run: Run, step: int, rollout: Rollout) -> None:
    """A table of this update's prompts, responses and scores in the step log."""
    run.metrics.log_table(
        step,
        "samples",
        [
            {"prompt": p[-1].content, "response": r, "score": float(s)}
            for p, r, s in zip(rollout.prompts, rollout.responses, rollout.scores)
        ],
    )


def save_ppo_checkpoint(
    run: Run, ac: ActorCritic, optimizer: Any, tokenizer: Any, step: int, extra: dict[str, Any]
) -> Any:
    """Checkpoint on the main process (and a loadable policy snapshot for the over-optimisation curve)."""
    cfg, train_cfg = run.cfg.ppo, run.cfg.train
    tensors, optimizer_state = gathered_checkpoint_state(ac, optimizer)  # FSDP: whole tensors, every process
    if cfg.policy_snapshots:
        gathered = gathered_model_state(ac.model)
        if run.is_main:
            save_policy(ac, tokenizer, run.output_dir / "snapshots" / f"step-{step}", run.cfg, state_dict=gathered)
    path = (
        save_checkpoint(
            run.output_dir,
            step,
            model=ac,
            optimizer=optimizer,
            extra=extra,
            save_total_limit=train_cfg.save_total_limit,
            tensors=tensors,
            optimizer_state=optimizer_state,
        )
        if run.is_main
        else None
    )
    run.accelerator.wait_for_everyone()
    return path


def check_guard_rails(stats: dict[str, float], cfg: PPOConfig, step: int) -> None:
    """Stop loudly on non-finite values, a collapsed entropy or a KL far past its target; warn on negative KL."""
    for key in ("objective/kl", "objective/scores", "loss/value_avg", "loss/policy_avg"):
        if key in stats and not math.isfinite(stats[key]):
            raise FloatingPointError(
                f"PPO step {step}: {key} is {stats[key]}; lower the learning rate or check the reward model"
            )
    entropy = stats.get("policy/entropy_avg")
    if entropy is not None and entropy < cfg.entropy_floor:
        raise RuntimeError(
            f"PPO step {step}: the policy's entropy fell to {entropy:.2g} nats per token (below entropy_floor "
            f"{cfg.entropy_floor}): it has collapsed onto a few tokens. Lower the learning rate or raise kl_coef."
        )
    kl = stats["objective/kl"]
    if kl > cfg.kl_stop_factor * cfg.kl_target:
        raise RuntimeError(
            f"PPO step {step}: KL {kl:.2f} nats is over {cfg.kl_stop_factor}x the target {cfg.kl_target}: the policy has "
            "run away from the SFT policy. Raise kl_coef, lower the learning rate, or use adaptive_kl."
        )
    if kl < -0.5:
        logger.warning("step %d: negative KL (%.3f): sampling and log-prob computation disagree", step, kl)
