"""The supervised training loop shared by the SFT and reward stages.

Why our own loop instead of ``trl.SFTTrainer`` / ``trl.RewardTrainer``:

- one checkpoint format, resume path and Ctrl-C behaviour for all three stages (PPO cannot use
  the HF ``Trainer``, and trl's trainers do not save on SIGINT);
- the K-ranked reward loss needs all K responses of a prompt in one forward, which
  ``RewardTrainer``'s chosen/rejected collator cannot express;
- padding-free batches and exact per-token loss averaging across gradient accumulation and
  processes (the loss is a sum divided by the *global* token count of the optimizer step, so one
  process with batch 2B gives the same update as two processes with batch B);
- a small, readable loop (accelerate does the device placement, DDP and autocast; with ``fsdp: true`` the stage
  shards the model right after loading it, :func:`shard_for_training`, and the loop does not wrap it in DDP).

Data order is a seeded permutation per epoch, so the position in the data follows from the step
number alone and resume continues with exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignment.core.checkpointing import (
    GracefulInterrupt,
    TrainingInterrupted,
    fault_point,
    resume_from_newest,
    save_checkpoint,
)
from alignment.core.distributed import uses_fsdp
from alignment.core.run import Run
from alignment.core.sharding import gathered_checkpoint_state, is_sharded, reshard_root, shard_model, to_full
from alignment.core.tracking import progress
from alignment.training.batching import build_optimizer, local_shard, micro_batch_indices, reduce_sum
from alignment.training.budget import TrainingBudget

logger = logging.getLogger(__name__)

# loss_fn(model, batch) -> (sum of the loss over its units, {stat: sum}); count_fn(batch) -> units.
LossFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]
CountFn = Callable[[dict[str, Any]], int]
CollateFn = Callable[[Sequence[Any]], dict[str, Any]]


@dataclass
class LoopSpec:
    loss_fn: LossFn
    count_fn: CountFn
    collate_fn: CollateFn
    tokens_fn: CountFn
    eval_fn: Callable[[], dict[str, float]] | None = None


@dataclass
class LoopResult:
    steps: int
    train_loss: float
    tokens_per_second: float
    items_per_second: float
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    budget: dict[str, float | bool] = field(default_factory=dict)  # TrainingBudget.summary(), for the metrics

    def rate(self, stat: str) -> float:
        """A per-step logged count (``train/n_pairs``, say) summed over the run, per training second."""
        total = sum(row.get(stat, 0.0) for row in self.history)
        return total / self.train_seconds if self.train_seconds else 0.0


def load_device(run: Run) -> str | None:
    """Where a stage loads its model: the host under FSDP (each process's shards then go to its device, so a model
    larger than one device still loads), else the loader's default (the accelerator)."""
    return "cpu" if uses_fsdp(run.cfg, run.accelerator) else None


def shard_for_training(run: Run, model: torch.nn.Module) -> torch.nn.Module:
    """Under FSDP (``fsdp: true`` or an FSDP launcher), shard the model in place before any pass runs on it, so every
    evaluation and the loop see the sharded model (:func:`~alignment.core.sharding.shard_model`); else unchanged."""
    if uses_fsdp(run.cfg, run.accelerator):
        shard_model(model, run.device)
    return model


def evaluate_loss(
    run: Run, model: torch.nn.Module, examples: Sequence[Any], spec: LoopSpec, batch_size: int
) -> dict[str, float]:
    """Mean loss per unit over ``examples`` (sharded across processes), plus summed stats."""
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    model.eval()
    totals: dict[str, float] = {"loss_sum": 0.0, "count": 0.0}
    with torch.no_grad():
        for start in range(0, len(examples), batch_size * world):
            chunk = local_shard(list(range(start, min(start + batch_size * world, len(examples)))), rank, world)
            if not chunk and not is_sharded(model):
                continue
            # Under FSDP every process must run every forward (each all-gathers the blocks): a rank with no share
            # of the last batch runs one example and drops the result.
            batch = spec.collate_fn([examples[i] for i in chunk or [0]])
            with run.accelerator.autocast():
                loss_sum, stats = spec.loss_fn(model, batch)
            if not chunk:
                continue
            totals["loss_sum"] += float(loss_sum)
            totals["count"] += spec.count_fn(batch)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
    keys = sorted(totals)
    reduced = dict(zip(keys, reduce_sum(run, [totals[k] for k in keys])))
    reduced["loss"] = reduced["loss_sum"] / max(reduced["count"], 1.0)
    return reduced


def _step_batches(examples: Sequence[Any], run: Run, step: int, accum: int, global_batch: int, micro_per_epoch: int):
    cfg = run.cfg.train
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    batches, epoch = [], 0
    for j in range(accum):
        position = step * accum + j
        epoch, k = divmod(position, micro_per_epoch)
        indices = micro_batch_indices(len(examples), global_batch, epoch, cfg.seed)[k]
        batches.append([examples[i] for i in local_shard(indices, rank, world)])
    return batches, epoch


def train_loop(
    run: Run, model: torch.nn.Module, examples: Sequence[Any], spec: LoopSpec, budget_spent_before: float = 0.0
) -> LoopResult:
    """Train ``model`` on pre-tokenized ``examples``; checkpoints, resume, Ctrl-C and logging included.

    ``budget_spent_before``: seconds of training compute the stage spent before the loop (DPO's reference pass),
    charged to ``max_train_minutes`` on a fresh start; a resumed run reads what its checkpoint spent instead.
    """
    from transformers import get_scheduler  # imported here: it pulls in peft/bitsandbytes, too slow for `--help`

    cfg, accelerator = run.cfg.train, run.accelerator
    world = accelerator.num_processes
    global_batch = cfg.per_device_train_batch_size * world
    accum = cfg.gradient_accumulation_steps
    micro_per_epoch = math.ceil(len(examples) / global_batch)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * micro_per_epoch / accum)
    sharded = is_sharded(model)  # by shard_for_training, right after loading
    if sharded:  # an evaluation or DPO's reference pass left the root gathered
        reshard_root(model)
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    start_step, history, evals, state = 0, [], [], None
    if cfg.resume:
        state = resume_from_newest(
            run.output_dir, model=accelerator.unwrap_model(model), optimizer=optimizer, scheduler=scheduler
        )
        start_step = state["step"] if state else 0
        run.metrics.drop_steps_after(start_step)
    budget = TrainingBudget(cfg.max_train_minutes, (state or {}).get("budget_seconds_spent", budget_spent_before))
    logger.info(
        "training %d steps (%d examples, global batch %d x %d accumulation)",
        total_steps,
        len(examples),
        global_batch,
        accum,
    )
    tokens_seen, items_seen, train_seconds = 0.0, 0.0, 0.0
    first_loss: float | None = None
    bar = progress(total=total_steps, desc=f"{run.stage} train", enabled=run.is_main, initial=start_step)
    with GracefulInterrupt() as interrupt:
        for step in range(start_step, total_steps):
            t0 = time.perf_counter()
            model.train()
            batches, epoch = _step_batches(examples, run, step, accum, global_batch, micro_per_epoch)
            collated = [spec.collate_fn(b) if b else None for b in batches]
            local = [spec.count_fn(b) if b else 0 for b in collated]
            local_tokens = sum(spec.tokens_fn(b) for b in collated if b)
            local_items = sum(len(b) for b in batches)
            global_count, global_tokens, global_items = reduce_sum(run, [sum(local), local_tokens, local_items])
            loss_total = 0.0
            stats_total: dict[str, float] = {}
            for j, batch in enumerate(collated):
                # A rank whose share of a short last batch is empty still runs a zero-weighted forward and
                # backward: DDP's gradient all-reduce needs every rank, or the others wait forever.
                weight = 1.0
                if batch is None:
                    batch, weight = spec.collate_fn([examples[0]]), 0.0
                # FSDP reduce-scatters every micro-batch's gradients (its shards hold no whole gradient to sum into).
                sync = j == len(collated) - 1 or world == 1 or sharded
                with contextlib.nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                    loss_sum, stats = spec.loss_fn(model, batch)
                    accelerator.backward(loss_sum.float() * (weight * world / max(global_count, 1.0)))
                if weight == 0.0:
                    continue
                loss_total += float(loss_sum.detach())
                for key, value in stats.items():
                    stats_total[key] = stats_total.get(key, 0.0) + float(value)
            if sharded:  # torch's clip is DTensor-aware; accelerate's looks for a model it prepared
                grad_norm = to_full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
            else:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            keys = sorted(stats_total)
            reduced = reduce_sum(run, [loss_total, *[stats_total[k] for k in keys]])
            step_loss = reduced[0] / max(global_count, 1.0)
            first_loss = step_loss if first_loss is None else first_loss
            # Before the step: a non-finite or collapsed update never reaches the weights or a checkpoint.
            check_training_health(run.stage, step + 1, step_loss, float(grad_norm), first_loss)
            optimizer.step()
            fault_point("train_step", step + 1)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - t0
            train_seconds += elapsed
            budget.spend(elapsed)
            tokens_seen += global_tokens
            items_seen += global_items
            row = {
                "train/loss": step_loss,
                "train/learning_rate": scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm),
                "train/epoch": epoch + 1,
                "train/tokens_per_second": global_tokens / elapsed,
                **{f"train/{k}": v for k, v in zip(keys, reduced[1:])},
            }
            history.append(row)
            done = step + 1
            if done % cfg.logging_steps == 0 or done == total_steps:
                run.metrics.log(done, row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['train/loss']:.4f}")
            if spec.eval_fn is not None and cfg.eval_steps > 0 and done % cfg.eval_steps == 0 and done < total_steps:
                evals.append({"step": done, **spec.eval_fn()})
                run.metrics.log(done, {f"eval/{k}": v for k, v in evals[-1].items() if k != "step"})
            stop = interrupt.requested
            if stop or (cfg.save_steps > 0 and done % cfg.save_steps == 0 and done < total_steps):
                path = _save(run, model, optimizer, scheduler, done, budget.state())
                if stop:
                    raise TrainingInterrupted(path)
            if done < total_steps and budget.exhausted(run):
                logger.info(
                    "the %.1f-minute training budget is spent after %d of %d steps",
                    cfg.max_train_minutes,
                    done,
                    total_steps,
                )
                total_steps = done
                break
    bar.close()
    last = history[-max(1, min(len(history), max(1, total_steps // 10))) :] if history else []
    return LoopResult(
        steps=total_steps,
        train_loss=sum(r["train/loss"] for r in last) / max(len(last), 1),
        tokens_per_second=tokens_seen / train_seconds if train_seconds else 0.0,
        items_per_second=items_seen / train_seconds if train_seconds else 0.0,
        train_seconds=train_seconds,
        history=history,
        evals=evals,
        budget=budget.summary(),
    )


def _save(run: Run, model: torch.nn.Module, optimizer: Any, scheduler: Any, step: int, extra: dict) -> Any:
    path = None
    tensors, optimizer_state = gathered_checkpoint_state(model, optimizer)  # FSDP: whole tensors, every process
    if run.is_main:
        path = save_checkpoint(
            run.output_dir,
            step,
            model=run.accelerator.unwrap_model(model),
            optimizer=optimizer,
            scheduler=scheduler,
            extra=extra,
            save_total_limit=run.cfg.train.save_total_limit,
            tensors=tensors,
            optimizer_state=optimizer_state,
        )
    run.accelerator.wait_for_everyone()
    return path


def check_training_health(stage: str, step: int, loss: float, grad_norm: float, first_loss: float) -> None:
    """Stop before a step that would poison the weights: a non-finite loss or gradient, or a collapsed run.

    Collapse: the gradient vanished while the loss is far from zero (the weights saturated), or the loss climbed
    past three times its first value and 2 nats above it (the learning rate is far too high).
    """
    hint = "lower the learning_rate; the last checkpoint, if any, holds finite weights (resume from it)"
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise FloatingPointError(f"{stage} step {step}: loss {loss}, gradient norm {grad_norm}: {hint}")
    if grad_norm == 0.0 and loss > 1e-3:
        raise FloatingPointError(f"{stage} step {step}: the gradient vanished at loss {loss:.4g} (collapse): {hint}")
    if loss > 3 * first_loss and loss > first_loss + 2.0:
        raise FloatingPointError(
            f"{stage} step {step}: loss {loss:.4g} diverged from {first_loss:.4g} at the start: {hint}"
        )
