"""Per-process peak memory and speed of FSDP against DDP: 2 processes (torchrun, gloo on a CPU) on the embedded
SmolLM2-135M, every run in its own process group, interleaved (ddp, fsdp, ..., ddp, fsdp, ...).

    python bench/bench_fsdp.py                       # SFT full fine-tuning and PPO (LoRA, shared-base reward)
    python bench/bench_fsdp.py --repeats 2 --stages ppo

Workload (the project's demo data, so it runs from the repository alone):

- ``sft``: full fine-tuning (every weight trained: gradients and AdamW state are 3x the weights, which is what
  FSDP shards), 6 steps of 2 demonstrations per process, max_length 256.
- ``ppo``: LoRA r16 policy and critic on one base with a shared-base reward model (a reward LoRA trained here
  first, 1 process, 8 steps), 3 updates of 4 prompts per process, 32 new tokens; under FSDP the base's blocks are
  sharded and the embeddings stay whole; ``fsdp_full`` gathers the blocks once per rollout for sampling.

Each worker prints ``BENCH_RESULT {json}`` with its rank, the stage's throughput and three memory figures:
``peak_rss_mib``, the resident high-water mark of the training phase (from the optimizer's creation, right after
the model is sharded, to the end of training and saving; freed heap returned first); ``rss_at_training_start_mib``;
and ``peak_rss_before_training_mib``, the high-water mark of loading, where every process still reads the whole
model before sharding it (on a GPU the shards go to the device and the whole copy stays in host memory). Results:
``bench/results-fsdp.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BENCH_DIR,
    MODEL_NAME,
    WORK_DIR,
    emit_result,
    machine_info,
    parse_results,
)

RESULTS = BENCH_DIR / "results-fsdp.json"
OUT = WORK_DIR / "fsdp"
SFT = {
    "model_name_or_path": MODEL_NAME,
    "dataset_name": "demo",
    "use_lora": False,
    "max_steps": 6,
    "per_device_train_batch_size": 2,
    "max_length": 256,
    "learning_rate": 1e-5,
    "eval_split_size": 0,
    "save_steps": 0,
}
REWARD = {
    "model_name_or_path": MODEL_NAME,
    "dataset_name": "demo",
    "max_steps": 8,
    "per_device_train_batch_size": 8,
    "max_length": 256,
    "learning_rate": 3e-4,
    "eval_split_size": 0,
    "save_steps": 0,
}
PPO = {
    "model_name_or_path": MODEL_NAME,
    "dataset_name": "demo",
    "max_samples": 64,
    "eval_split_size": 0,
    "eval_prompts": 0,
    "total_episodes": 24,  # 3 updates of 2 x 4 prompts
    "rollout_batch_size": 4,
    "mini_batch_size": 4,
    "max_new_tokens": 32,
    "max_prompt_length": 192,
    "save_steps": 0,
    "policy_snapshots": False,
}
MODES = {"sft": ("ddp", "fsdp"), "ppo": ("ddp", "fsdp", "fsdp_full")}


def worker(stage: str, values: dict[str, Any]) -> None:
    """One rank of one run: train, then report this process's peak memory and the stage's throughput."""
    import torch.distributed as dist

    from alignment.core.config_parsing import build_config
    from alignment.core.peak_memory import peak_memory_mib, reset_peak_memory

    if stage == "sft":
        from alignment import sft as module
        from alignment.training import loop as hooked  # its optimizer is built right after the model is sharded

        name = "build_optimizer"
    else:
        from alignment.ppo import loop as hooked
        from alignment.ppo import stage as module

        name = "ppo_optimizer"
    original, marks = getattr(hooked, name), {}

    def reset_then_build(*args: Any, **kwargs: Any) -> Any:
        # The training phase starts here: the model is loaded (and sharded), nothing of training is allocated yet.
        # Freed heap is returned first, so the full copy each process loaded before sharding does not count.
        marks["whole_process"] = peak_memory_mib().get("peak_rss_mib")
        reset_peak_memory()
        marks["at_training_start"] = peak_memory_mib().get("peak_rss_mib")
        return original(*args, **kwargs)

    setattr(hooked, name, reset_then_build)
    metrics = module.train(build_config(module.CONFIG_TYPES, values))
    rank = dist.get_rank() if dist.is_initialized() else 0
    speed = {
        "sft": {"tokens_per_second": metrics.get("train_tokens_per_second")},
        "ppo": {"episodes_per_second": metrics.get("episodes_per_second")},
    }[stage]
    training_peak = peak_memory_mib().get("peak_rss_mib")
    emit_result(
        {
            "stage": stage,
            "rank": rank,
            "peak_rss_mib": training_peak,  # from the optimizer's creation to the end (training, saving)
            "rss_at_training_start_mib": marks.get("at_training_start"),
            "peak_rss_before_training_mib": marks.get("whole_process"),  # loading the model (whole, every process)
            **speed,
        }
    )
    if dist.is_initialized():
        dist.destroy_process_group()


def run_mode(
    stage: str, mode: str, tag: str, reward_dir: Path | None, glibc_default: bool = False
) -> list[dict[str, Any]]:
    values = dict(SFT if stage == "sft" else PPO)
    if stage == "ppo":
        values["reward_model_paths"] = [str(reward_dir)]
    if mode != "ddp":
        values["fsdp"] = True
    if mode == "fsdp_full":
        values["fsdp_generation"] = "full"
    values["output_dir"] = str(OUT / f"{stage}-{mode}-{tag}{'-glibc' if glibc_default else ''}")
    values["overwrite"] = True  # a re-run of the benchmark measures again
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        "--worker",
        stage,
        json.dumps(values),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ALIGNMENT_NO_PROGRESS": "1"}
    if glibc_default:  # glibc's own mmap threshold: the stages then leave the allocator alone (core.cpu_memory)
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{stage} {mode} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    results = parse_results(done.stdout)
    for result in results:
        result.update(mode=mode, tag=tag, wall_s=round(time.perf_counter() - started, 1), glibc_default=glibc_default)
    return results


def train_reward() -> Path:
    """The shared-base reward model PPO scores with: a reward LoRA on the same base (1 process)."""
    from alignment import reward
    from alignment.core.config_parsing import build_config

    out = OUT / "reward"
    if not (out / "DONE").is_file():
        reward.train(build_config(reward.CONFIG_TYPES, {**REWARD, "output_dir": str(out), "overwrite": True}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="sft,ppo")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc thresholds at their defaults (freed blocks go back to the kernel): live memory",
    )
    parser.add_argument("--modes", default="", help="only these modes (e.g. ddp,fsdp_full)")
    parser.add_argument("--worker", nargs=2, metavar=("STAGE", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], json.loads(args.worker[1]))
        return
    stages = [s for s in args.stages.split(",") if s]
    reward_dir = train_reward() if "ppo" in stages else None
    results: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for stage in stages:
            for mode in MODES[stage]:  # interleaved: every mode once per repeat
                if args.modes and mode not in args.modes.split(","):
                    continue
                results.extend(run_mode(stage, mode, f"r{repeat + 1}", reward_dir, args.glibc_default))
                print(json.dumps(results[-2:]), flush=True)
    out = RESULTS.with_name("results-fsdp-glibc-default.json") if args.glibc_default else RESULTS
    # Merged with the file's earlier results: a run of some stages or modes replaces only what it measured.
    fresh = {(r["stage"], r["mode"]) for r in results}
    earlier = json.loads(out.read_text(encoding="utf-8"))["results"] if out.is_file() else []
    results = [r for r in earlier if (r["stage"], r["mode"]) not in fresh] + results
    out.write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2) + "\n", encoding="utf-8")
    print(summary_table(results))


def summary_table(results: list[dict[str, Any]]) -> str:
    """Markdown: per stage and mode, the mean over repeats of the larger rank's peak and of the throughput."""
    lines = [
        "| stage | mode | training peak RSS per process (MiB, larger rank) | loading peak | throughput | runs |",
        "|---|---|---|---|---|---|",
    ]
    for stage, modes in MODES.items():
        for mode in modes:
            runs: dict[str, list[dict[str, Any]]] = {}
            for r in results:
                if r["stage"] == stage and r["mode"] == mode:
                    runs.setdefault(r["tag"], []).append(r)
            if not runs:
                continue
            peaks = [max(x["peak_rss_mib"] for x in ranks) for ranks in runs.values()]
            loading = [max(x["peak_rss_before_training_mib"] or 0.0 for x in ranks) for ranks in runs.values()]
            key = "tokens_per_second" if stage == "sft" else "episodes_per_second"
            speeds = [ranks[0].get(key) or 0.0 for ranks in runs.values()]
            lines.append(
                f"| {stage} | {mode} | {sum(peaks) / len(peaks):.0f} ({', '.join(f'{p:.0f}' for p in peaks)}) | "
                f"{sum(loading) / len(loading):.0f} | {sum(speeds) / len(speeds):.3g} {key.replace('_', ' ')} | "
                f"{len(runs)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
