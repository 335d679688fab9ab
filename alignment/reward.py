"""Reward model stage: pairwise ranking on comparisons, K ranked responses per prompt as one group.

Loss ``-log sigma(r(x, y_w) - r(x, y_l) - margin)`` averaged over the C(K, 2) pairs of each prompt,
then over prompts (InstructGPT, Ouyang et al. 2022, sec. 3.5): all K responses of a prompt are
scored in one forward so the group is not over-fitted pair by pair. An optional centring term
``coef * mean(r^2)`` keeps rewards near zero (Eisenstein et al. 2023).

The model is any ``AutoModelForSequenceClassification`` with one label: a causal LM (the base or
the SFT output, with a fresh scalar head) or an encoder such as BERT or DeBERTa. Reward statistics
over a reference set are saved beside it (``reward_stats.json``) for PPO and evaluation to
normalise with. Uses the shared loop (``alignment.training.loop``) because trl's ``RewardTrainer`` cannot feed
K-response groups.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from alignment.core.config import Config, DataConfig, LoraConfig, ModelConfig, QuantConfig, TrainConfig
from alignment.core.config_parsing import parse_config
from alignment.core.run import mark_done, start_run
from alignment.core.sharding import gathered_model_state
from alignment.core.stats import pair_accuracy
from alignment.core.tracking import metrics_text, write_json_atomic
from alignment.data.load import load_records
from alignment.data.reward_batches import RewardCollator
from alignment.modeling.attention import supports_flat_packing, supports_shared_prefixes, varlen_kwargs
from alignment.modeling.module_utils import disable_dropout, unwrap_transformers_model
from alignment.rl.losses import ranked_groups_loss
from alignment.training.loop import LoopSpec, evaluate_loss, load_device, shard_for_training, train_loop

logger = logging.getLogger(__name__)


@dataclass
class RewardConfig:
    margin: float = field(default=0.0, metadata={"help": "Margin subtracted from every reward difference."})
    center_rewards_coefficient: float = field(default=0.0, metadata={"help": "Weight of the mean(r^2) centring term."})
    eval_only: bool = field(
        default=False, metadata={"help": "Only evaluate model_name_or_path on the data; no training."}
    )
    padding_free: bool = field(
        default=True,
        metadata={"help": "Pack each batch's responses into rows without padding (decoder-only reward models)."},
    )
    share_prompts: bool = field(
        default=True,
        metadata={
            "help": "Compute each comparison's prompt once for all its responses (packed batches, sdpa_varlen "
            "attention): the same rewards from fewer positions."
        },
    )


CONFIG_TYPES = (ModelConfig, LoraConfig, QuantConfig, DataConfig, TrainConfig, RewardConfig)


def score_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The per-position ``score`` head of a decoder-only reward model, or None.

    transformers' decoder ``*ForSequenceClassification`` classes apply ``score`` to every position
    and then read the last token; encoders (BERT's ``classifier``) pool differently and cannot be packed.
    """

    return getattr(unwrap_transformers_model(model), "score", None)


def packed_rewards(model: torch.nn.Module, head: torch.nn.Module, batch: dict[str, Any], device) -> torch.Tensor:
    """``(N,)`` rewards of a packed batch, read at each sequence's last token.

    The model is still called as a whole (so DDP's hooks run); its pooled output reads one token per
    packed row and is ignored. The head's per-position output is taken with a forward hook instead.
    """

    captured: list[torch.Tensor] = []
    extra = (
        varlen_kwargs(batch["cu_seq_lens"].to(device), batch.get("branch_lengths")) if "cu_seq_lens" in batch else {}
    )
    handle = head.register_forward_hook(lambda _module, _args, output: captured.append(output))
    try:
        model(
            input_ids=batch["input_ids"].to(device),
            position_ids=batch["position_ids"].to(device),
            use_cache=False,
            **extra,
        )
    finally:
        handle.remove()
    return captured[-1].reshape(-1)[batch["last_token_index"].to(device)]


def reward_loop_spec(
    tokenizer,
    max_length: int,
    margin: float,
    center_coef: float,
    packed_head: torch.nn.Module | None = None,
    flat_rows: bool = False,
    row_multiple: int = 1,
    share_prompts: bool = False,
) -> LoopSpec:
    """Loss and batching; with ``packed_head`` (see :func:`score_head`) batches are packed without padding,
    in one row without filler with ``flat_rows`` (``alignment.modeling.attention.supports_flat_packing``), rounded
    up to a multiple of ``row_multiple`` (``Run.flat_row_multiple``), each record's prompt computed once for all its
    responses with ``share_prompts`` (``supports_shared_prefixes``)."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(p for p in model.parameters()).device
        if "position_ids" in batch:
            rewards = packed_rewards(model, packed_head, batch, device)
        else:
            rewards = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits[:, 0]
        groups = batch["group_ids"].to(device)
        loss, n_pairs, n_correct = ranked_groups_loss(rewards, batch["ranks"].to(device), groups, margin)
        n_groups = int(groups.unique().numel())
        loss_sum = loss * n_groups
        if center_coef:
            loss_sum = loss_sum + center_coef * rewards.float().pow(2).mean() * n_groups
        stats = {
            "n_pairs": float(n_pairs),
            "n_correct": float(n_correct),
            "reward_sum": float(rewards.detach().sum()),
            "reward_sq_sum": float(rewards.detach().float().pow(2).sum()),
            "n_responses": float(rewards.numel()),
        }
        return loss_sum, stats

    return LoopSpec(
        loss_fn=loss_fn,
        count_fn=lambda b: int(b["group_ids"].unique().numel()),
        collate_fn=RewardCollator(
            tokenizer,
            max_length,
            padding_free=packed_head is not None,
            flat_rows=flat_rows,
            row_multiple=row_multiple,
            share_prompts=share_prompts,
        ),
        tokens_fn=lambda b: int(b["num_tokens"]) if "num_tokens" in b else int(b["attention_mask"].sum()),
    )


def summarize_eval(result: dict[str, float]) -> dict[str, float]:
    """Accuracy with a Wilson 95% interval, loss, and the reward mean/std over the evaluated responses."""

    n = max(result["n_responses"], 1.0)
    mean = result["reward_sum"] / n
    std = math.sqrt(max(result["reward_sq_sum"] / n - mean * mean, 0.0))
    return {
        **pair_accuracy(result["n_correct"], result["n_pairs"]),
        "eval_loss": result["loss"],
        "reward_mean": mean,
        "reward_std": std,
    }


def train(cfg: Config) -> dict[str, Any]:
    """Train (or with ``eval_only`` just evaluate) a reward model; returns the metrics written to ``metrics.json``."""
    from alignment.modeling.load import load_reward_model
    from alignment.modeling.stage_dir import save_stage_model
    from alignment.modeling.tokenizer import load_tokenizer

    # An evaluation alone rewrites its metrics on every run and trains nothing that a re-run could mix up.
    with start_run(cfg, "reward", rewrites_outputs=cfg.reward.eval_only) as run:
        tokenizer = load_tokenizer(cfg.model)
        records = load_records(cfg.data, "comparison", seed=cfg.train.seed)
        model = load_reward_model(
            cfg.model, cfg.lora, cfg.quant, trainable=not cfg.reward.eval_only, device=load_device(run)
        )
        disable_dropout(model)
        shard_for_training(run, model)
        head = score_head(model) if cfg.reward.padding_free else None
        if cfg.reward.padding_free and head is None:
            logger.info("%s is not a decoder with a score head: batches stay padded", type(model).__name__)
        spec = reward_loop_spec(
            tokenizer,
            cfg.train.max_length,
            cfg.reward.margin,
            cfg.reward.center_rewards_coefficient,
            head,
            flat_rows=head is not None and supports_flat_packing(model),
            row_multiple=run.flat_row_multiple,
            share_prompts=cfg.reward.share_prompts and head is not None and supports_shared_prefixes(model),
        )
        if cfg.reward.eval_only:  # every record is held out; max_eval_samples caps them, as for a held-out split
            eval_records = list(records.records)[: cfg.data.max_eval_samples or None]
        else:
            eval_records = list(records.eval_records)
        batch_size = cfg.train.per_device_eval_batch_size
        evaluate = lambda: summarize_eval(evaluate_loss(run, model, eval_records, spec, batch_size))  # noqa: E731
        if cfg.reward.eval_only:
            metrics = {**evaluate(), "model": cfg.model.model_name_or_path}
        else:
            spec.eval_fn = evaluate if eval_records else None
            before = evaluate() if eval_records else {}
            result = train_loop(run, model, list(records.records), spec)
            after = evaluate() if eval_records else {}
            metrics = {**after, "eval_accuracy_before": before.get("eval_accuracy"), "train_loss": result.train_loss}
            metrics.update(
                pairs_per_second=result.rate("train/n_pairs"), train_seconds=result.train_seconds, steps=result.steps
            )
            metrics.update(result.budget)
            metrics.update(num_train_records=len(records.records), num_truncated=spec.collate_fn.num_truncated)
            stats = after or summarize_eval(evaluate_loss(run, model, list(records.records)[:256], spec, batch_size))
            gathered = gathered_model_state(model)  # FSDP: the whole weights, gathered by every process
            if run.is_main:
                save_stage_model(
                    run.accelerator.unwrap_model(model), tokenizer, run.output_dir, cfg.model, state_dict=gathered
                )
                write_json_atomic(
                    run.output_dir / "reward_stats.json",
                    {
                        "mean": stats["reward_mean"],
                        "std": stats["reward_std"],
                        "reference": "held-out responses" if after else "training responses",
                    },
                )
        metrics["num_skipped_invalid"] = records.skipped.total
        if run.is_main:
            run.metrics.write_metrics(metrics)
            if not cfg.reward.eval_only:
                mark_done(run.output_dir)
        run.accelerator.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``alignment reward``: the recipe (``--config``) and flags parsed, then :func:`train`; returns its metrics."""
    return train(parse_config(CONFIG_TYPES, argv, prog="alignment reward"))


summary_text = metrics_text  # what ``alignment reward`` prints when it ends
