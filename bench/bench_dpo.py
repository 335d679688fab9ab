"""DPO throughput and memory: our ``alignment.dpo.train`` vs trl's ``DPOTrainer`` on the 128 HH-RLHF reward pairs.

    python bench/bench_dpo.py                 # ours, fp32
    python bench/bench_dpo.py --peer          # trl's DPOTrainer (the version installed here), fp32
    python bench/bench_dpo.py --quick         # 8 pairs: a smoke test

This decided that the DPO stage is built on our loop, not trl's ``DPOTrainer`` (the figures are in
``alignment/dpo.py`` and bench/RESULTS.md). Unlike the other benchmarks, the peer is a current trl in the main
environment (DPO is current in trl, not a removed trainer): ``pip install -e .[peer]``, run in its own process like
ours.

Settings (both sides): SmolLM2-135M-Instruct as the start policy, LoRA r=8 alpha=16 all-linear, dropout off, fp32,
128 pairs (``bench/work/rm_train.jsonl``), batch 8 pairs, 1 epoch (16 steps), max_length 256, lr 1e-4 linear,
AdamW, beta 0.1, seed 42. The reference is the start policy: trl takes it with the adapter disabled, one extra
forward per step (its default; ``precompute_ref_log_probs`` is off); ours takes the reference log-probs once
before training.

Headline: ``pairs_per_s`` = 128 / (the reference pass, ours only + the training call). Peak memory: ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

T_PROCESS = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    LORA_SETTINGS,
    MODEL_NAME,
    RM_SETTINGS,
    WORK_DIR,
    add_common_args,
    cpu_window,
    emit_result,
    ensure_pools,
    finalize,
    ours_run_settings,
    parse_results,
    pool_path,
)

BETA = 0.1


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import alignment.dpo as dpo
    from alignment.core.config_parsing import build_config

    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir, shared = ours_run_settings(args, "dpo")
    cfg = build_config(
        dpo.CONFIG_TYPES,
        {
            **shared,
            "dataset_name": str(pool_path("rm_train", args.quick)),
            "eval_split_size": 0,
            "learning_rate": RM_SETTINGS["learning_rate"],
            "num_train_epochs": RM_SETTINGS["epochs"],
            "per_device_train_batch_size": RM_SETTINGS["batch_size"],
            "per_device_eval_batch_size": RM_SETTINGS["batch_size"],
            "max_length": RM_SETTINGS["max_length"],
            "lr_scheduler_type": "linear",
            "save_steps": 0,
            "logging_steps": 1,
            "beta": BETA,
            "bf16": args.bf16,
        },
    )
    captured: dict[str, Any] = {}
    original_reference, original_loop = dpo.with_reference_logps, dpo.train_loop

    def timed_reference(model, head, examples, collator, batch_size):
        with cpu_window() as window:
            out = original_reference(model, head, examples, collator, batch_size)
        captured["reference_s"] = captured.get("reference_s", 0.0) + window.wall_s
        captured["pairs"] = captured.get("pairs") or len(examples)
        return out

    def timed_loop(run, model, examples, spec, **kwargs):
        with cpu_window() as window:
            result = original_loop(run, model, examples, spec, **kwargs)
        captured.update(window=window, loop=result)
        return result

    dpo.with_reference_logps, dpo.train_loop = timed_reference, timed_loop
    try:
        metrics = dpo.train(cfg)
    finally:
        dpo.with_reference_logps, dpo.train_loop = original_reference, original_loop
    window = captured["window"]
    seconds = window.wall_s + captured["reference_s"]
    result = {
        "stage": "dpo",
        "side": "ours",
        "tag": args.tag,
        "quick": args.quick,
        "bf16": args.bf16,
        "pairs": captured["pairs"],
        "steps": captured["loop"].steps,
        "reference_s": captured["reference_s"],
        "train_s": window.wall_s,
        "pairs_per_s": captured["pairs"] / seconds,
        "train_loss": metrics.get("train_loss"),
        "output_dir": str(output_dir),
    }
    return finalize(result, window, 0.0, args.bf16, not args.no_peak, T_PROCESS)


def run_peer(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    try:
        import trl
    except ImportError as e:
        raise SystemExit("the DPO peer is trl's DPOTrainer: pip install -e .[peer]") from e
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.modeling.embedded import embedded_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    rows = [json.loads(line) for line in pool_path("rm_train", args.quick).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list(
        [
            {
                "prompt": row["prompt"],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }
            for row in rows
        ]
    )
    model_dir = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    output_dir = WORK_DIR / "runs" / "peer" / f"dpo-{args.tag}"
    config = trl.DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=RM_SETTINGS["batch_size"],
        num_train_epochs=RM_SETTINGS["epochs"],
        learning_rate=RM_SETTINGS["learning_rate"],
        lr_scheduler_type="linear",
        max_length=RM_SETTINGS["max_length"],
        beta=BETA,
        bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        seed=42,
    )
    lora = LoraConfig(
        r=LORA_SETTINGS["r"],
        lora_alpha=LORA_SETTINGS["alpha"],
        lora_dropout=LORA_SETTINGS["dropout"],
        target_modules=LORA_SETTINGS["target_modules"],
        task_type="CAUSAL_LM",
    )
    trainer = trl.DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
    )
    with cpu_window() as window:
        out = trainer.train()
    result = {
        "stage": "dpo",
        "side": "peer",
        "trl": trl.__version__,
        "tag": args.tag,
        "quick": args.quick,
        "bf16": args.bf16,
        "pairs": len(rows),
        "steps": out.global_step,
        "reference_s": 0.0,
        "train_s": window.wall_s,
        "pairs_per_s": len(rows) / window.wall_s,
        "train_loss": out.training_loss,
        "output_dir": str(output_dir),
        "model": MODEL_NAME,
    }
    return finalize(result, window, 0.0, args.bf16, not args.no_peak, T_PROCESS)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--output-dir", default=None, help="ours: stage output dir")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ensure_pools()
    if args.peer and not args.in_process:  # its own process, so its peak memory is its own
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--in-process"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"peer run failed:\n{done.stderr[-3000:]}")
        result = parse_results(done.stdout)[-1]
        emit_result(result, args.out)
        return result
    result = run_peer(args) if args.peer else run_ours(args)
    result["settings"] = {**RM_SETTINGS, "beta": BETA, "lora": LORA_SETTINGS}
    emit_result(result, None if args.in_process else args.out)
    return result


if __name__ == "__main__":
    main()
