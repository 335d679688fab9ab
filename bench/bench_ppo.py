"""PPO throughput and memory: our ``alignment.ppo.stage.train`` vs trl 1.12's ``PPOTrainer`` on 64 HH-RLHF prompts.

    python bench/bench_ppo.py                 # ours, fp32 (settings: bench/README.md, "Workload and settings")
    python bench/bench_ppo.py --peer          # trl.experimental.ppo.PPOTrainer 1.12 in bench/.venv-trl112
    python bench/bench_ppo.py --quick         # 16 prompts, 2 updates, 8-token responses: a smoke test
    python bench/bench_ppo.py --algorithm grpo --samples-per-prompt 4   # ours, critic-free: 2 prompts x 4 samples

Settings (both sides): 64 prompts, 8 per update, 8 updates, 1 PPO epoch, 1 minibatch, 48-token responses sampled
at temperature 0.7 (top_k 0, top_p 1), stop at ``<|im_end|>``, KL coefficient 0.05 (k1), missing-EOS penalty 1.0,
lr 3e-6, fp32, seed 42, no sample generations or held-out evaluation during training.

Inputs: an SFT and a reward stage output of the same side (``--sft-dir``, ``--reward-dir``); by default the latest
ones that ``bench_sft.py`` / ``bench_reward.py`` wrote (``bench/work/latest/``), else they are made first in their
own subprocesses (so that their memory does not count here). Layouts:

- ours: one base model carrying the SFT adapter (reference), a policy adapter (copy of SFT), the reward adapter
  with its head, and a value adapter + head initialised from the reward model (``alignment/ppo/adapters.py``);
- peer: trl's documented peft path: merged SFT model + a fresh LoRA (policy; reference = adapter disabled), a full
  reward model, and a full value model initialised from the reward model and trained in full, so 3 full fp32
  models in memory (bench/README.md, "Where trl 1.12 differs").

Figures: ``episodes_per_s`` = episodes / wall time of the PPO loop (our ``ppo_loop``, trl's ``trainer.train()``);
``valid_generated_tokens_per_s`` (up to and including the first ``<|im_end|>``) end to end, and
``generate_positions_per_s`` inside generation; a time split (``phases``) by wrapping each side's functions:

- rollout: generate / policy log-probs (ours under bf16: the packed recomputation pass) / reference forward / value
  forward / reward forward / other (tokenising, log-probs from generation's logits, decode);
- train: policy forward / value forward / backward / optimizer step (incl. grad clipping) / other;
- other: statistics, logging, GAE and whitening between the two.
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
    BENCH_DIR,
    LORA_SETTINGS,
    PPO_SETTINGS,
    QUICK,
    REPO_ROOT,
    WORK_DIR,
    PhaseTimer,
    StepClock,
    add_common_args,
    base_parameters,
    cpu_window,
    emit_result,
    ensure_pools,
    finalize,
    forward_flops,
    latest_file,
    ours_run_settings,
    parse_results,
    pool_path,
    record_latest,
    run_peer_stage,
    train_flops,
)

# rollout/policy_logprobs: the packed pass that recomputes the rollout's log-probs under bf16/fp16 (ours only)
ROLLOUT_PHASES = (
    "rollout/generate",
    "rollout/policy_logprobs",
    "rollout/reference",
    "rollout/value",
    "rollout/reward",
)
TRAIN_PHASES = ("train/policy_forward", "train/value_forward", "train/backward", "train/optimizer_step")


def stage_ready(side: str, stage: str, directory: Path) -> bool:
    if side == "ours":
        return (directory / "DONE").is_file()
    return (directory / ("sft_merged" if stage == "sft" else "rm_merged") / "config.json").is_file()


def ensure_inputs(side: str, quick: bool, sft_dir: str | None, reward_dir: str | None) -> tuple[str, str]:
    """The SFT and reward outputs PPO starts from; missing ones are trained first, each in its own process."""
    found = {}
    for stage, given in (("sft", sft_dir), ("reward", reward_dir)):
        if given:
            found[stage] = given
            continue
        latest = latest_file(side, stage, quick)
        directory = Path(latest.read_text(encoding="utf-8").strip()) if latest.is_file() else None
        if directory is None or not stage_ready(side, stage, directory):
            script = BENCH_DIR / f"bench_{stage}.py"
            command = [sys.executable, str(script), "--tag", "ppo-setup", "--no-peak"]
            command += ["--peer"] * (side == "peer") + ["--quick"] * quick
            sys.stderr.write(f"making the {side} {stage} output PPO starts from: {' '.join(command)}\n")
            proc = subprocess.run(command, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, text=True)
            results = parse_results(proc.stdout)
            if proc.returncode != 0 or not results:
                raise SystemExit(f"setup run {' '.join(command)} failed (exit {proc.returncode})")
            directory = Path(results[-1]["output_dir"])
            record_latest(side, stage, quick, str(directory))
        found[stage] = str(directory)
    return found["sft"], found["reward"]


def ppo_sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"updates": QUICK["ppo_updates"], "response_length": QUICK["response_length"]}
    return {"updates": PPO_SETTINGS["updates"], "response_length": PPO_SETTINGS["response_length"]}


def run_ours(args: argparse.Namespace, sft_dir: str, reward_dir: str) -> dict[str, Any]:
    import torch

    import alignment.ppo.loop as ppo_loop_module
    import alignment.ppo.rollout as ppo_rollout_module
    import alignment.ppo.stage as ppo
    from alignment.core.config_parsing import build_config
    from alignment.ppo.actor_critic import ActorCritic

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = ppo_sizes(args.quick)
    batch = PPO_SETTINGS["batch_size"]
    output_dir, shared = ours_run_settings(args, "ppo")
    cfg = build_config(
        ppo.CONFIG_TYPES,
        {
            **shared,
            "dataset_name": str(pool_path("ppo_prompts", args.quick)),
            "learning_rate": PPO_SETTINGS["learning_rate"],
            "save_steps": 0,
            "logging_steps": 1,
            "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing,
            "sft_model_path": sft_dir,
            "reward_model_paths": [reward_dir],
            # A critic-free run samples the same 8 responses per update: batch / K prompts, K samples each.
            "algorithm": args.algorithm,
            "samples_per_prompt": args.samples_per_prompt,
            "total_episodes": sizes["updates"] * (batch // args.samples_per_prompt),
            "rollout_batch_size": batch // args.samples_per_prompt,
            "mini_batch_size": batch // PPO_SETTINGS["mini_batches"],
            "ppo_epochs": PPO_SETTINGS["ppo_epochs"],
            "max_new_tokens": sizes["response_length"],
            "max_prompt_length": 256 - PPO_SETTINGS["response_length"],
            "temperature": PPO_SETTINGS["temperature"],
            "kl_coef": PPO_SETTINGS["kl_coef"],
            "missing_eos_penalty": PPO_SETTINGS["missing_eos_penalty"],
            "eval_prompts": 0,
            "sample_table_steps": 0,
        },
    )
    timer = PhaseTimer(memory=args.memory_phases)
    counts = {"gen_positions": 0, "prompt_tokens": 0, "valid_tokens": 0, "responses": 0, "with_eos": 0}

    def mask_tokens(_phase, args_, _kwargs, _result):
        return float(args_[1].attention_mask.sum())

    def generate_tokens(_phase, args_, _kwargs, result):
        response_ids = result[0]
        counts["gen_positions"] += response_ids.numel()
        counts["prompt_tokens"] += int(args_[2].sum())
        return float(response_ids.numel())

    # The rollout's critic and recomputed policy passes may keep their graphs (grad on): label them by caller.
    in_rollout = {"now": False}

    def logprob_phase(args_, kwargs):
        role = kwargs.get("role", args_[4] if len(args_) > 4 else "policy")
        if role == "reference":
            return "rollout/reference"
        return "rollout/policy_logprobs" if in_rollout["now"] else "train/policy_forward"

    if timer.memory is not None:  # loading is not timed (it is outside the training window), but it may hold memory
        import alignment.ppo.policy as ppo_policy_module
        import alignment.ppo.rewards as ppo_rewards_module

        timer.wrap(ppo_policy_module, "build_actor_critic", lambda a, k: "load/actor_critic")
        timer.wrap(ppo_rewards_module, "build_rewards", lambda a, k: "load/rewards")
    timer.wrap(ActorCritic, "generate", lambda a, k: "rollout/generate", generate_tokens)
    timer.wrap(ActorCritic, "response_logprobs", logprob_phase, mask_tokens)
    timer.wrap(
        ActorCritic,
        "response_values",
        lambda a, k: "rollout/value" if in_rollout["now"] else "train/value_forward",
        mask_tokens,
    )
    timer.wrap(ActorCritic, "reward_scores", lambda a, k: "rollout/reward", mask_tokens)
    timer.wrap(torch.Tensor, "backward", lambda a, k: "train/backward")
    timer.wrap(torch.nn.utils, "clip_grad_norm_", lambda a, k: "train/clip_grad")
    # The loop looks these up in its own module (alignment.ppo.loop), the rollout its EOS mask in alignment.ppo.rollout.
    timer.wrap(ppo_loop_module, "collect_rollout", lambda a, k: "total/rollout")
    timed_rollout = ppo_loop_module.collect_rollout

    def flagged_rollout(*a, **k):
        in_rollout["now"] = True
        try:
            return timed_rollout(*a, **k)
        finally:
            in_rollout["now"] = False

    ppo_loop_module.collect_rollout = flagged_rollout
    timer.wrap(ppo_loop_module, "ppo_update_synced", lambda a, k: "total/update")
    original_mask = ppo_rollout_module.first_eos_mask

    def counting_mask(*a, **k):
        response_mask, has_eos = original_mask(*a, **k)
        counts["valid_tokens"] += int(response_mask.sum())
        counts["responses"] += int(has_eos.numel())
        counts["with_eos"] += int(has_eos.sum())
        return response_mask, has_eos

    ppo_rollout_module.first_eos_mask = counting_mask
    captured: dict[str, Any] = {}
    original_loop = ppo_loop_module.ppo_loop

    def timed_loop(run, ac, rewards, prompts, eval_prompts, tokenizer):
        captured["n_params"] = base_parameters(ac.model)
        captured["trainable_params"] = sum(p.numel() for p in ac.trainable_parameters())
        clock = StepClock()
        with cpu_window() as window:
            clock.start()
            try:
                out = original_loop(run, ac, rewards, prompts, eval_prompts, tokenizer)
            finally:
                clock.stop()
        captured.update(window=window, clock=clock)
        return out

    ppo_loop_module.ppo_loop = timed_loop
    try:
        metrics = ppo.train(cfg)
    finally:
        ppo_loop_module.ppo_loop, ppo_rollout_module.first_eos_mask = original_loop, original_mask
        timer.restore()
    window, clock = captured["window"], captured["clock"]
    timer.add("train/optimizer_step", clock.optimizer_s)
    steps = [json.loads(line) for line in (output_dir / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    steps = [row for row in steps if "time/rollout_s" in row]
    result = summarize(
        side="ours",
        args=args,
        window=window,
        timer=timer,
        counts=counts,
        update_s=[row["time/rollout_s"] + row["time/update_s"] for row in steps],
        n_params=captured["n_params"],
        value_training="lora",
    )
    result.update(
        trainable_params=captured["trainable_params"],
        reward_mean_first=metrics.get("reward_mean_first"),
        reward_mean_last=metrics.get("reward_mean_last"),
        kl_last=metrics.get("kl_last"),
        sft_dir=sft_dir,
        reward_dir=reward_dir,
        output_dir=str(output_dir),
    )
    if timer.memory is not None:
        result["memory_phases"] = timer.memory.as_dict()
    flops = result.pop("_model_flops")
    return finalize(result, window, flops, args.bf16, not args.no_peak, T_PROCESS)


def summarize(
    side: str,
    args: argparse.Namespace,
    window: Any,
    timer: PhaseTimer,
    counts: dict[str, int],
    update_s: list[float],
    n_params: int,
    value_training: str,
) -> dict[str, Any]:
    """The PPO result fields shared by ours and the peer (the peer script imports this)."""
    sec, tok = timer.seconds, timer.tokens
    wall = window.wall_s
    episodes = counts["responses"]
    rollout_total = sec.get("total/rollout", 0.0)
    update_total = sec.get("total/update", 0.0)
    phases = {name: sec.get(name, 0.0) for name in ROLLOUT_PHASES}
    phases["rollout/other"] = max(0.0, rollout_total - sum(phases.values()))
    train = {name: sec.get(name, 0.0) for name in TRAIN_PHASES}
    train["train/optimizer_step"] += sec.get("train/clip_grad", 0.0)
    train["train/other"] = max(0.0, update_total - sum(train.values()))
    phases.update(train)
    phases["other"] = max(0.0, wall - rollout_total - update_total)
    useful_generated = counts["prompt_tokens"] + counts["valid_tokens"]
    flops = forward_flops(n_params, useful_generated)
    for name in ("rollout/policy_logprobs", "rollout/reference", "rollout/value", "rollout/reward"):
        flops += forward_flops(n_params, tok.get(name, 0.0))
    flops += train_flops(n_params, tok.get("train/policy_forward", 0.0), lora=True)
    flops += train_flops(n_params, tok.get("train/value_forward", 0.0), lora=value_training == "lora")
    if side == "ours" and PPO_SETTINGS["mini_batches"] == 1:
        # the rollout's critic and recomputed policy passes are back-propagated (kept graphs)
        for name in ("rollout/value", "rollout/policy_logprobs"):
            kept = tok.get(name, 0.0)
            flops += train_flops(n_params, kept, lora=True) - forward_flops(n_params, kept)
    steady = None
    if len(update_s) > 1:
        steady = (episodes - episodes / len(update_s)) / sum(update_s[1:])
    return {
        "stage": "ppo",
        "side": side,
        "tag": args.tag,
        "quick": args.quick,
        "bf16": args.bf16,
        "episodes": episodes,
        "updates": len(update_s),
        "train_s": wall,
        "episodes_per_s": episodes / wall,
        "steady_state_episodes_per_s": steady,
        "update_s": update_s,
        "valid_generated_tokens": counts["valid_tokens"],
        "responses_with_eos": counts["with_eos"],
        "generated_positions": counts["gen_positions"],
        "valid_generated_tokens_per_s": counts["valid_tokens"] / wall,
        "generate_positions_per_s": counts["gen_positions"] / sec["rollout/generate"]
        if sec.get("rollout/generate")
        else None,
        "rollout_s": rollout_total,
        "update_total_s": update_total,
        "rollout_share": rollout_total / wall,
        "phases": phases,
        "phase_share": {k: v / wall for k, v in phases.items()},
        "phase_tokens": dict(tok),
        "phase_calls": dict(timer.calls),
        "value_training": value_training,
        "n_params": n_params,
        "_model_flops": flops,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "--output-dir", default=None, help="stage output dir (default bench/work/runs/<side>/ppo-<tag>)"
    )
    parser.add_argument("--sft-dir", default=None, help="SFT output of the same side (default: the latest)")
    parser.add_argument("--reward-dir", default=None, help="reward output of the same side (default: the latest)")
    parser.add_argument("--algorithm", default="ppo", help="ours: ppo, rloo, grpo or reinforce_pp (memory, speed)")
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="ours: K responses per prompt")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="ours: recompute activations in the update's backward"
    )
    parser.add_argument(
        "--memory-phases", action="store_true", help="ours: which phase raised peak resident memory, by how much"
    )
    args = parser.parse_args(argv)
    if args.peer and args.algorithm != "ppo":
        parser.error("--algorithm is ours only: the peer is trl 1.12's PPOTrainer")
    ensure_pools()
    side = "peer" if args.peer else "ours"
    sft_dir, reward_dir = ensure_inputs(side, args.quick, args.sft_dir, args.reward_dir)
    if args.peer:
        sizes = ppo_sizes(args.quick)
        output_dir = args.output_dir or str(WORK_DIR / "runs" / "peer" / f"ppo-{args.tag}")
        extra = ["--data", str(pool_path("ppo_prompts", args.quick))]
        extra += ["--eval-data", str(pool_path("ppo_eval_prompts", args.quick))]
        extra += ["--sft-dir", sft_dir, "--reward-dir", reward_dir, "--output-dir", output_dir, "--tag", args.tag]
        extra += ["--updates", str(sizes["updates"]), "--response-length", str(sizes["response_length"])]
        extra += ["--bf16"] * args.bf16 + ["--quick"] * args.quick + ["--no-peak"] * args.no_peak
        extra += ["--threads", str(args.threads)] if args.threads else []
        result = run_peer_stage("ppo", extra)
    else:
        result = run_ours(args, sft_dir, reward_dir)
    result["settings"] = {**PPO_SETTINGS, **ppo_sizes(args.quick), "lora": LORA_SETTINGS}
    result["algorithm"], result["samples_per_prompt"] = args.algorithm, args.samples_per_prompt
    emit_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
