"""SFT stage: fine-tune a causal LM on demonstrations, with the loss on assistant tokens only.

Uses the shared loop in ``alignment.training.loop`` rather than ``trl.SFTTrainer`` (the reasons are in that
module's docstring: one checkpoint/resume/Ctrl-C path for every stage, exact token-mean loss
across accumulation and processes, padding-free batches). The chat template renders every
demonstration and ``alignment.data.collate.render_sft_example`` labels exactly the assistant turns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from alignment.core.config import Config, DataConfig, LoraConfig, ModelConfig, QuantConfig, TrainConfig
from alignment.core.config_parsing import parse_config
from alignment.core.run import mark_done, start_run
from alignment.core.sharding import gathered_model_state
from alignment.core.tracking import metrics_text
from alignment.data.collate import SFTCollator, count_tokens, tokenize_demonstrations
from alignment.data.load import load_records
from alignment.modeling.attention import supports_flat_packing, supports_shared_prefixes
from alignment.modeling.target_logits import output_head, target_logits
from alignment.training.loop import LoopSpec, evaluate_loss, load_device, shard_for_training, train_loop


@dataclass
class SFTConfig:
    train_on: str = field(default="all", metadata={"help": "Learn 'all' assistant turns or only the 'last' one."})
    padding_free: bool = field(default=True, metadata={"help": "Pack each batch into one row without padding."})
    share_prefixes: bool = field(
        default=True,
        metadata={
            "help": "Compute the tokens that several demonstrations of a batch open with (a chat template's default "
            "system turn) once (packed batches, sdpa_varlen attention): the same loss from fewer positions."
        },
    )
    merge_adapter: bool = field(
        default=False, metadata={"help": "Also export merged full weights to <output_dir>/merged."}
    )


CONFIG_TYPES = (ModelConfig, LoraConfig, QuantConfig, DataConfig, TrainConfig, SFTConfig)


def sft_loop_spec(
    tokenizer,
    padding_free: bool,
    head: torch.nn.Module | None = None,
    flat_rows: bool = False,
    row_multiple: int = 1,
    share_prefixes: bool = False,
) -> LoopSpec:
    """Loss and batching. With ``head`` (see :func:`output_head`) the LM head runs only where a label is predicted.

    ``flat_rows``: pack each batch into one row without filler (the model's attention must take
    sequence boundaries: ``alignment.modeling.attention.supports_flat_packing``), rounded up to a multiple of
    ``row_multiple`` (``Run.flat_row_multiple``); ``share_prefixes``: see :class:`SFTCollator`.

    Most positions are prompt (the peer workload: 1,816 target tokens of 8,982): the head runs on the target
    positions only (:func:`~alignment.modeling.target_logits.target_logits`).
    """

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, targets, _ = target_logits(model, head, batch)
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"), {}

    return LoopSpec(
        loss_fn=loss_fn,
        count_fn=lambda b: count_tokens(b).loss_tokens,
        collate_fn=SFTCollator(
            tokenizer.pad_token_id,
            padding_free=padding_free,
            flat_rows=flat_rows,
            row_multiple=row_multiple,
            share_prefixes=share_prefixes,
        ),
        tokens_fn=lambda b: count_tokens(b).non_pad_tokens,
    )


def train(cfg: Config) -> dict[str, Any]:
    """Run SFT; returns the metrics written to ``metrics.json``."""
    from alignment.modeling.export import load_stage_output, merge_and_export
    from alignment.modeling.load import load_causal_lm
    from alignment.modeling.stage_dir import save_stage_model
    from alignment.modeling.tokenizer import load_tokenizer

    with start_run(cfg, "sft") as run:
        tokenizer = load_tokenizer(cfg.model)
        records = load_records(cfg.data, "demonstration", seed=cfg.train.seed)
        examples, rejected, truncated = tokenize_demonstrations(
            tokenizer, records.records, cfg.train.max_length, cfg.sft.train_on
        )
        eval_examples, _, _ = tokenize_demonstrations(
            tokenizer, records.eval_records, cfg.train.max_length, cfg.sft.train_on
        )
        if not examples:
            raise ValueError(f"no demonstration can be trained on (rejected: {dict(rejected)})")
        model = load_causal_lm(cfg.model, cfg.lora, cfg.quant, trainable=True, device=load_device(run))
        shard_for_training(run, model)
        flat = cfg.sft.padding_free and supports_flat_packing(model)
        spec = sft_loop_spec(
            tokenizer,
            cfg.sft.padding_free,
            output_head(model),
            flat,
            run.flat_row_multiple,
            share_prefixes=flat and cfg.sft.share_prefixes and supports_shared_prefixes(model),
        )
        batch_size = cfg.train.per_device_eval_batch_size
        spec.eval_fn = (lambda: evaluate_loss(run, model, eval_examples, spec, batch_size)) if eval_examples else None
        before = spec.eval_fn() if spec.eval_fn else None
        result = train_loop(run, model, examples, spec)
        after = evaluate_loss(run, model, eval_examples, spec, batch_size) if eval_examples else None
        metrics: dict[str, Any] = {
            "train_loss": result.train_loss,
            "train_tokens_per_second": result.tokens_per_second,
            "train_seconds": result.train_seconds,
            "steps": result.steps,
            **result.budget,
            "num_examples": len(examples),
            "num_eval_examples": len(eval_examples),
            "num_truncated": truncated,
            "num_rejected": sum(rejected.values()),
            "rejected_by_reason": dict(rejected),
            "num_skipped_invalid": records.skipped.total,
        }
        if before is not None:
            metrics.update(eval_loss_before=before["loss"], eval_loss=after["loss"])
            metrics.update(eval_perplexity_before=_ppl(before["loss"]), eval_perplexity=_ppl(after["loss"]))
            run.metrics.log(result.steps, {"eval/loss": after["loss"], "eval/loss_before": before["loss"]})
        gathered = gathered_model_state(model)  # FSDP: the whole weights, gathered by every process
        if run.is_main:
            unwrapped = run.accelerator.unwrap_model(model)
            save_stage_model(unwrapped, tokenizer, run.output_dir, cfg.model, state_dict=gathered)
            if cfg.sft.merge_adapter:
                # A sharded model cannot be merged in place: the saved output is loaded whole and merged.
                merged = unwrapped if gathered is None else load_stage_output(run.output_dir, cfg.model)
                merge_and_export(merged, tokenizer, run.output_dir / "merged")
            run.metrics.write_metrics(metrics)
            mark_done(run.output_dir)
        run.accelerator.wait_for_everyone()
    return metrics


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``alignment sft``: the recipe (``--config``) and flags parsed, then :func:`train`; returns its metrics."""
    return train(parse_config(CONFIG_TYPES, argv, prog="alignment sft"))


summary_text = metrics_text  # what ``alignment sft`` prints when it ends
