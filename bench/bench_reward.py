"""Reward-model throughput: our ``alignment.reward.train`` vs trl 1.12's ``RewardTrainer`` on 128 HH-RLHF pairs.

    python bench/bench_reward.py              # ours, fp32 (settings: bench/README.md, "Workload and settings")
    python bench/bench_reward.py --peer       # trl 1.12 RewardTrainer in bench/.venv-trl112
    python bench/bench_reward.py --quick      # 8 pairs: a smoke test

Settings (both sides): SmolLM2-135M-Instruct with a fresh scalar head (sequence classification, num_labels=1),
LoRA r=8 alpha=16 all-linear (+ trainable head), fp32 (``--bf16``: autocast), 128 pairs, batch 8 pairs (16
sequences per forward), 1 epoch (16 steps), max_length 256, lr 1e-4 linear, AdamW, seed 42; each sequence is the
chat-templated conversation cut after the final ``<|im_end|>`` (the reward is read there). After training, both
sides score the 200 held-out pairs (batch 8 pairs, no grad): ``eval_pairs_per_s`` and ``eval_accuracy``.

Headline: ``pairs_per_s`` = 128 / wall time of the training call. Ours skips its stage's "before training"
held-out evaluation (the peer has none; ``--eval-before`` keeps it), so both processes do the same work.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

T_PROCESS = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    LORA_SETTINGS,
    QUICK,
    RM_SETTINGS,
    WORK_DIR,
    StepClock,
    add_common_args,
    base_parameters,
    cpu_window,
    emit_result,
    ensure_pools,
    finalize,
    forward_flops,
    ours_run_settings,
    pool_path,
    record_latest,
    run_peer_stage,
    steady_state,
    train_flops,
)

_EMPTY_EVAL = {
    "loss_sum": 0.0,
    "count": 0.0,
    "loss": math.nan,
    "n_pairs": 0.0,
    "n_correct": 0.0,
    "reward_sum": 0.0,
    "reward_sq_sum": 0.0,
    "n_responses": 0.0,
}


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import alignment.reward as reward
    from alignment.core.config_parsing import build_config

    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir, shared = ours_run_settings(args, "reward")
    cfg = build_config(
        reward.CONFIG_TYPES,
        {
            **shared,
            "dataset_name": str(pool_path("rm_train", args.quick)),
            "eval_dataset_name": str(pool_path("rm_eval", args.quick)),
            "learning_rate": RM_SETTINGS["learning_rate"],
            "num_train_epochs": RM_SETTINGS["epochs"],
            "per_device_train_batch_size": RM_SETTINGS["batch_size"],
            "per_device_eval_batch_size": RM_SETTINGS["batch_size"],
            "max_length": RM_SETTINGS["max_length"],
            "lr_scheduler_type": "linear",
            "save_steps": 0,
            "logging_steps": 1,
            "bf16": args.bf16,
            "share_prompts": not args.no_share_prompts,
        },
    )
    captured: dict[str, Any] = {"tokens": [], "groups": [], "padded": [], "evals": []}
    original_loop, original_eval = reward.train_loop, reward.evaluate_loss

    def timed_train_loop(run, model, examples, spec):
        captured["n_params"] = base_parameters(model)
        captured["pairs"] = len(examples)
        tokens_fn, count_fn, collate_fn = spec.tokens_fn, spec.count_fn, spec.collate_fn

        def counting_tokens(batch):
            n = tokens_fn(batch)
            captured["tokens"].append(n)
            captured["padded"].append(int(batch["input_ids"].numel()))
            return n

        def counting_groups(batch):
            n = count_fn(batch)
            captured["groups"].append(n)
            return n

        spec.tokens_fn, spec.count_fn, spec.collate_fn = counting_tokens, counting_groups, collate_fn
        clock = StepClock()
        with cpu_window() as window:
            clock.start()
            try:
                result = original_loop(run, model, examples, spec)
            finally:
                clock.stop()
        spec.tokens_fn, spec.count_fn = tokens_fn, count_fn  # evaluation must not add to the training counts
        captured.update(window=window, clock=clock, loop=result)
        return result

    def timed_eval(run, model, examples, spec, batch_size):
        if "loop" not in captured and not args.eval_before:
            return dict(_EMPTY_EVAL)  # the peer evaluates once, after training
        tokens: list[int] = []
        collate_fn, spec_tokens = spec.collate_fn, spec.tokens_fn

        def counting_collate(batch):
            out = collate_fn(batch)
            tokens.append(spec_tokens(out))
            return out

        spec.collate_fn = counting_collate
        try:
            with cpu_window() as window:
                out = original_eval(run, model, examples, spec, batch_size)
        finally:
            spec.collate_fn = collate_fn
        captured["evals"].append({"pairs": len(examples), "seconds": window.wall_s, "tokens": sum(tokens)})
        return out

    reward.train_loop, reward.evaluate_loss = timed_train_loop, timed_eval
    try:
        metrics = reward.train(cfg)
    finally:
        reward.train_loop, reward.evaluate_loss = original_loop, original_eval
    window, clock, loop = captured["window"], captured["clock"], captured["loop"]
    non_pad, padded = float(sum(captured["tokens"])), float(sum(captured["padded"]))
    held_out = captured["evals"][-1] if captured["evals"] else None
    result = {
        "stage": "reward",
        "side": "ours",
        "tag": args.tag,
        "quick": args.quick,
        "bf16": args.bf16,
        "pairs": captured["pairs"],
        "steps": loop.steps,
        "train_s": window.wall_s,
        "loop_step_s_sum": loop.train_seconds,
        "pairs_per_s": captured["pairs"] / window.wall_s,
        "steady_state_pairs_per_s": steady_state(clock.step_seconds, captured["groups"]),
        "non_pad_tokens": non_pad,
        "padded_tokens": padded,
        "tokens_per_s": non_pad / window.wall_s,
        "padded_tokens_per_s": padded / window.wall_s,
        "step_s": clock.step_seconds,
        "optimizer_step_s": clock.optimizer_s,
        "train_loss": metrics.get("train_loss"),
        "eval_pairs": held_out["pairs"] if held_out else 0,
        "eval_s": held_out["seconds"] if held_out else None,
        "eval_pairs_per_s": held_out["pairs"] / held_out["seconds"] if held_out else None,
        "eval_accuracy": metrics.get("eval_accuracy"),
        "eval_flops": forward_flops(captured["n_params"], held_out["tokens"]) if held_out else None,
        "n_params": captured["n_params"],
        "output_dir": str(output_dir),
    }
    flops = train_flops(captured["n_params"], non_pad, lora=True)
    return finalize(result, window, flops, args.bf16, not args.no_peak, T_PROCESS)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "--output-dir", default=None, help="stage output dir (default bench/work/runs/<side>/reward-<tag>)"
    )
    parser.add_argument("--eval-before", action="store_true", help="ours: keep the held-out eval before training")
    parser.add_argument(
        "--no-share-prompts", action="store_true", help="ours: compute each pair's prompt twice (share_prompts false)"
    )
    args = parser.parse_args(argv)
    ensure_pools()
    if args.peer:
        output_dir = args.output_dir or str(WORK_DIR / "runs" / "peer" / f"reward-{args.tag}")
        extra = ["--data", str(pool_path("rm_train", args.quick)), "--eval-data", str(pool_path("rm_eval", args.quick))]
        extra += ["--output-dir", output_dir, "--tag", args.tag]
        extra += ["--bf16"] * args.bf16 + ["--quick"] * args.quick + ["--no-peak"] * args.no_peak
        extra += ["--threads", str(args.threads)] if args.threads else []
        result = run_peer_stage("reward", extra)
    else:
        result = run_ours(args)
    record_latest(result["side"], "reward", args.quick, result["output_dir"])
    result["settings"] = {**RM_SETTINGS, "lora": LORA_SETTINGS, "quick": QUICK if args.quick else None}
    emit_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
