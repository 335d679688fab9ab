"""SFT throughput: our ``alignment.sft.train`` vs trl 1.12's ``SFTTrainer`` on the same 64 HH-RLHF demonstrations.

    python bench/bench_sft.py                 # ours, fp32 (settings: bench/README.md, "Workload and settings")
    python bench/bench_sft.py --peer          # trl 1.12 SFTTrainer in bench/.venv-trl112 (built on first use)
    python bench/bench_sft.py --quick         # 8 examples: a smoke test

Settings (both sides): SmolLM2-135M-Instruct (embedded default), LoRA r=8 alpha=16 dropout 0 all-linear, fp32
(``--bf16``: bf16 autocast), 64 examples, batch 8, 1 epoch (8 optimizer steps), max_length 256, lr 2e-4 linear,
AdamW, seed 42, loss on the last assistant turn only (the peer's prompt-completion ``completion_only_loss``).

Prints one ``BENCH_RESULT {json}`` line. Headline: ``tokens_per_s`` = non-pad tokens / wall time of the training
call (our ``train_loop``, trl's ``trainer.train()``). Ours packs each batch padding-free, so it computes on no pad
tokens; trl pads to the longest sequence in the batch (``padded_tokens``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

T_PROCESS = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    LORA_SETTINGS,
    QUICK,
    SFT_SETTINGS,
    WORK_DIR,
    StepClock,
    add_common_args,
    base_parameters,
    cpu_window,
    emit_result,
    ensure_pools,
    finalize,
    ours_run_settings,
    pool_path,
    record_latest,
    run_peer_stage,
    steady_state,
    train_flops,
)


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import alignment.sft as sft
    from alignment.core.config_parsing import build_config

    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir, shared = ours_run_settings(args, "sft")
    cfg = build_config(
        sft.CONFIG_TYPES,
        {
            **shared,
            "dataset_name": str(pool_path("sft", args.quick)),
            "learning_rate": SFT_SETTINGS["learning_rate"],
            "num_train_epochs": SFT_SETTINGS["epochs"],
            "per_device_train_batch_size": SFT_SETTINGS["batch_size"],
            "max_length": SFT_SETTINGS["max_length"],
            "lr_scheduler_type": "linear",
            "save_steps": 0,
            "logging_steps": 1,
            "bf16": args.bf16,
            "train_on": "last",
        },
    )
    captured: dict[str, Any] = {"tokens": [], "loss_tokens": []}
    original_loop = sft.train_loop

    def timed_train_loop(run, model, examples, spec):
        captured["n_params"] = base_parameters(model)
        captured["examples"] = len(examples)
        tokens_fn, count_fn = spec.tokens_fn, spec.count_fn

        def counting_tokens(batch):
            n = tokens_fn(batch)
            captured["tokens"].append(n)
            return n

        def counting_loss_tokens(batch):
            n = count_fn(batch)
            captured["loss_tokens"].append(n)
            return n

        spec.tokens_fn, spec.count_fn = counting_tokens, counting_loss_tokens
        clock = StepClock()
        with cpu_window() as window:
            clock.start()
            try:
                result = original_loop(run, model, examples, spec)
            finally:
                clock.stop()
        captured.update(window=window, clock=clock, loop=result)
        return result

    sft.train_loop = timed_train_loop
    try:
        metrics = sft.train(cfg)
    finally:
        sft.train_loop = original_loop
    window, clock, loop = captured["window"], captured["clock"], captured["loop"]
    non_pad = float(sum(captured["tokens"]))
    flops = train_flops(captured["n_params"], non_pad, lora=True)
    result = {
        "stage": "sft",
        "side": "ours",
        "tag": args.tag,
        "quick": args.quick,
        "bf16": args.bf16,
        "examples": captured["examples"],
        "steps": loop.steps,
        "train_s": window.wall_s,
        "loop_step_s_sum": loop.train_seconds,
        "samples_per_s": captured["examples"] / window.wall_s,
        "non_pad_tokens": non_pad,
        "padded_tokens": non_pad,  # padding-free packing: every computed token is a real one
        "loss_tokens": float(sum(captured["loss_tokens"])),
        "tokens_per_s": non_pad / window.wall_s,
        "padded_tokens_per_s": non_pad / window.wall_s,
        "steady_state_tokens_per_s": steady_state(clock.step_seconds, captured["tokens"]),
        "step_s": clock.step_seconds,
        "optimizer_step_s": clock.optimizer_s,
        "train_loss": metrics["train_loss"],
        "n_params": captured["n_params"],
        "output_dir": str(output_dir),
    }
    return finalize(result, window, flops, args.bf16, not args.no_peak, T_PROCESS)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "--output-dir", default=None, help="stage output dir (default bench/work/runs/<side>/sft-<tag>)"
    )
    args = parser.parse_args(argv)
    ensure_pools()
    if args.peer:
        output_dir = args.output_dir or str(WORK_DIR / "runs" / "peer" / f"sft-{args.tag}")
        extra = ["--data", str(pool_path("sft", args.quick)), "--output-dir", output_dir, "--tag", args.tag]
        extra += ["--bf16"] * args.bf16 + ["--quick"] * args.quick + ["--no-peak"] * args.no_peak
        extra += ["--threads", str(args.threads)] if args.threads else []
        result = run_peer_stage("sft", extra)
    else:
        result = run_ours(args)
    record_latest(result["side"], "sft", args.quick, result["output_dir"])
    result["settings"] = {**SFT_SETTINGS, "lora": LORA_SETTINGS, "quick": QUICK if args.quick else None}
    emit_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
