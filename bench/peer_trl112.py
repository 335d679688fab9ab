"""The peer: trl 1.12's SFTTrainer, RewardTrainer and PPOTrainer on the benchmark pools.

Runs inside ``bench/.venv-trl112`` (made by ``bench/common.py:ensure_peer_venv``; never in the project's own
environment) and is started by ``bench/bench_{sft,reward,ppo}.py --peer``. Its setup (bench/README.md, "Workload
and settings"): seed 42 (``transformers.set_seed``), fp32 weights and compute (``bf16=False, fp16=False``),
gradient checkpointing off, ``use_cpu`` (unless a GPU is present), no dataloader workers, ``report_to="none"``, no
checkpoints; ``LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", bias="none")``; pad
token ``<|endoftext|>`` (id 0) everywhere, because PPOTrainer masks every ``pad_token_id`` and SmolLM2's default pad
is ``<|im_end|>`` (bench/README.md, "Where trl 1.12 differs").

- ``--stage sft``: SFTTrainer on a conversational prompt-completion dataset (completion-only loss), max_length
  256, batch 8, 1 epoch, lr 2e-4 linear, fused AdamW; saves the adapter and the merged model (``sft_merged``).
- ``--stage reward``: RewardTrainer on pre-tokenized ``chosen_ids``/``rejected_ids`` (chat template, trailing
  ``\\n`` after the final ``<|im_end|>`` removed, so the reward is read at ``<|im_end|>`` as in PPO), batch 8
  pairs, lr 1e-4; then a no-grad held-out loop (batch 8 pairs, right padding with id 0, the model's own
  last-non-pad pooling); merges to ``rm_merged``.
- ``--stage ppo``: ``trl.experimental.ppo.PPOTrainer`` laid out as trl's ``examples/scripts/ppo/ppo.py``: policy =
  merged SFT model + ``peft_config`` (reference = adapter disabled), reward and value models loaded from
  ``rm_merged`` (value trained in full), ``stop_token="eos"``, ``missing_eos_penalty=1.0``,
  ``num_sample_generations=0``, 1 PPO epoch, 1 minibatch.

Timing wraps trl's functions from outside (trl logs no timings). Prints one ``BENCH_RESULT``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

T_PROCESS = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from bench.common import (  # noqa: E402
    LORA_SETTINGS,
    PPO_SETTINGS,
    RM_SETTINGS,
    SFT_SETTINGS,
    PhaseTimer,
    StepClock,
    base_parameters,
    cpu_window,
    emit_result,
    finalize,
    forward_flops,
    steady_state,
    train_flops,
)

PAD_TOKEN = "<|endoftext|>"
SEED = 42


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_tokenizer(model_dir: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.padding_side = padding_side
    return tokenizer


def lora_config(task_type: str):
    from peft import LoraConfig

    return LoraConfig(
        r=LORA_SETTINGS["r"],
        lora_alpha=LORA_SETTINGS["alpha"],
        lora_dropout=LORA_SETTINGS["dropout"],
        target_modules=LORA_SETTINGS["target_modules"],
        bias="none",
        task_type=task_type,
    )


def common_args(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    return {
        "output_dir": str(Path(args.output_dir) / "trainer"),
        "seed": SEED,
        "bf16": args.bf16,
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
    }


class CountingCollator:
    """Wraps a trainer's collator: non-pad, padded and loss tokens of every batch it produced.

    Which tokens count: bench/README.md, "How we measure".
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.non_pad: list[int] = []
        self.padded: list[int] = []
        self.loss: list[int] = []

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.inner(examples)
        mask = batch.get("attention_mask")
        self.non_pad.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        self.padded.append(int(batch["input_ids"].numel()))
        if "labels" in batch:
            self.loss.append(int((batch["labels"][:, 1:] != -100).sum()))
        return batch


def timed_train(trainer: Any) -> tuple[Any, Any, Any]:
    clock = StepClock()
    with cpu_window() as window:
        clock.start()
        try:
            output = trainer.train()
        finally:
            clock.stop()
    return output, window, clock


# ------------------------------------------------------------------------------------------ SFT


def run_sft(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(SEED)
    tokenizer = load_tokenizer(args.model_dir)
    rows = read_jsonl(args.data)
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = SFTConfig(
        **common_args(args),
        per_device_train_batch_size=SFT_SETTINGS["batch_size"],
        num_train_epochs=SFT_SETTINGS["epochs"],
        max_length=SFT_SETTINGS["max_length"],
        learning_rate=SFT_SETTINGS["learning_rate"],
        lr_scheduler_type="linear",
        optim="adamw_torch_fused",
        pad_token=PAD_TOKEN,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config("CAUSAL_LM"),
    )
    collator = CountingCollator(trainer.data_collator)
    trainer.data_collator = collator
    output, window, clock = timed_train(trainer)
    n_params = base_parameters(trainer.model)
    out_dir = Path(args.output_dir)
    trainer.model.save_pretrained(str(out_dir / "sft_adapter"))
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(str(out_dir / "sft_merged"))
    tokenizer.save_pretrained(str(out_dir / "sft_merged"))
    non_pad, padded = float(sum(collator.non_pad)), float(sum(collator.padded))
    result = {
        "stage": "sft",
        "side": "peer",
        "tag": args.tag,
        "quick": args.quick,
        "bf16": args.bf16,
        "examples": len(rows),
        "steps": output.global_step,
        "train_s": window.wall_s,
        "samples_per_s": len(rows) / window.wall_s,
        "non_pad_tokens": non_pad,
        "padded_tokens": padded,
        "loss_tokens": float(sum(collator.loss)),
        "tokens_per_s": non_pad / window.wall_s,
        "padded_tokens_per_s": padded / window.wall_s,
        "steady_state_tokens_per_s": steady_state(clock.step_seconds, collator.non_pad),
        "step_s": clock.step_seconds,
        "optimizer_step_s": clock.optimizer_s,
        "train_loss": output.training_loss,
        "n_params": n_params,
        "output_dir": str(out_dir),
    }
    return finalize(result, window, train_flops(n_params, non_pad, lora=True), args.bf16, not args.no_peak, T_PROCESS)


# ------------------------------------------------------------------------------------------ reward


def reward_ids(tokenizer, prompt: list[dict], reply: str) -> list[int]:
    """The conversation through the chat template, without the ``\\n`` after the final ``<|im_end|>``.

    PPO reads the reward at ``<|im_end|>`` (the last non-pad token), so the reward model is trained to score there.
    """
    messages = [*prompt, {"role": "assistant", "content": reply}]
    ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    if ids and tokenizer.decode(ids[-1:]) == "\n":
        ids = ids[:-1]
    return ids


def heldout_accuracy(model, tokenizer, rows: list[dict], batch_pairs: int) -> dict[str, Any]:
    import torch

    model.eval()
    correct, margins, tokens = 0, [], 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_pairs):
            chunk = rows[start : start + batch_pairs]
            seqs = [reward_ids(tokenizer, r["prompt"], r["chosen"]) for r in chunk]
            seqs += [reward_ids(tokenizer, r["prompt"], r["rejected"]) for r in chunk]
            width = max(len(s) for s in seqs)
            input_ids = torch.zeros(len(seqs), width, dtype=torch.long)
            attention = torch.zeros(len(seqs), width, dtype=torch.long)
            for i, s in enumerate(seqs):
                input_ids[i, : len(s)] = torch.tensor(s)
                attention[i, : len(s)] = 1
            tokens += int(attention.sum())
            scores = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits[:, 0]
            chosen, rejected = scores[: len(chunk)], scores[len(chunk) :]
            correct += int((chosen > rejected).sum())
            margins += (chosen - rejected).tolist()
    return {"accuracy": correct / len(rows), "mean_margin": sum(margins) / len(margins), "tokens": tokens}


def run_reward(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    set_seed(SEED)
    tokenizer = load_tokenizer(args.model_dir)
    rows = read_jsonl(args.data)
    dataset = Dataset.from_list(
        [
            {
                "chosen_ids": reward_ids(tokenizer, r["prompt"], r["chosen"]),
                "rejected_ids": reward_ids(tokenizer, r["prompt"], r["rejected"]),
            }
            for r in rows
        ]
    )
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    config = RewardConfig(
        **common_args(args),
        per_device_train_batch_size=RM_SETTINGS["batch_size"],
        num_train_epochs=RM_SETTINGS["epochs"],
        max_length=RM_SETTINGS["max_length"],
        learning_rate=RM_SETTINGS["learning_rate"],
        lr_scheduler_type="linear",
        optim="adamw_torch_fused",
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config("SEQ_CLS"),
    )
    collator = CountingCollator(trainer.data_collator)
    trainer.data_collator = collator
    output, window, clock = timed_train(trainer)
    n_params = base_parameters(trainer.model)
    eval_rows = read_jsonl(args.eval_data)
    with cpu_window() as eval_window:
        held_out = heldout_accuracy(trainer.model, tokenizer, eval_rows, RM_SETTINGS["batch_size"])
    out_dir = Path(args.output_dir)
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(str(out_dir / "rm_merged"))
    tokenizer.save_pretrained(str(out_dir / "rm_merged"))
    non_pad, padded = float(sum(collator.non_pad)), float(sum(collator.padded))
    pairs_per_step = [RM_SETTINGS["batch_size"]] * len(clock.step_seconds)  # batches in order; the last may be short
    if pairs_per_step:
        pairs_per_step[-1] = len(rows) - RM_SETTINGS["batch_size"] * (len(pairs_per_step) - 1)
    result = {
        "stage": "reward",
        "side": "peer",
        "tag": args.tag,
        "quick": args.quick,
        "bf16": args.bf16,
        "pairs": len(rows),
        "steps": output.global_step,
        "train_s": window.wall_s,
        "pairs_per_s": len(rows) / window.wall_s,
        "steady_state_pairs_per_s": steady_state(clock.step_seconds, pairs_per_step),
        "non_pad_tokens": non_pad,
        "padded_tokens": padded,
        "tokens_per_s": non_pad / window.wall_s,
        "padded_tokens_per_s": padded / window.wall_s,
        "step_s": clock.step_seconds,
        "optimizer_step_s": clock.optimizer_s,
        "train_loss": output.training_loss,
        "eval_pairs": len(eval_rows),
        "eval_s": eval_window.wall_s,
        "eval_pairs_per_s": len(eval_rows) / eval_window.wall_s,
        "eval_accuracy": held_out["accuracy"],
        "eval_mean_margin": held_out["mean_margin"],
        "eval_flops": forward_flops(n_params, held_out["tokens"]),
        "eval_window": eval_window.as_dict(),
        "n_params": n_params,
        "output_dir": str(out_dir),
    }
    return finalize(result, window, train_flops(n_params, non_pad, lora=True), args.bf16, not args.no_peak, T_PROCESS)


# ------------------------------------------------------------------------------------------ PPO


def run_ppo(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    from bench.bench_ppo import summarize

    set_seed(SEED)
    sft_merged = str(Path(args.sft_dir) / "sft_merged")
    rm_merged = str(Path(args.reward_dir) / "rm_merged")
    tokenizer = load_tokenizer(sft_merged, padding_side="left")

    def tokenized(path: str) -> Any:
        ids = [
            list(
                tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
                    "input_ids"
                ]
            )
            for r in read_jsonl(path)
        ]
        return Dataset.from_dict({"input_ids": ids})

    train_dataset, eval_dataset = tokenized(args.data), tokenized(args.eval_data)
    policy = AutoModelForCausalLM.from_pretrained(sft_merged, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm_merged, num_labels=1, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(rm_merged, num_labels=1, dtype=torch.float32)
    batch = PPO_SETTINGS["batch_size"]
    config = PPOConfig(
        **common_args(args),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_mini_batches=PPO_SETTINGS["mini_batches"],
        num_ppo_epochs=PPO_SETTINGS["ppo_epochs"],
        total_episodes=args.updates * batch,
        local_rollout_forward_batch_size=batch,
        response_length=args.response_length,
        stop_token="eos",
        missing_eos_penalty=PPO_SETTINGS["missing_eos_penalty"],
        temperature=PPO_SETTINGS["temperature"],
        kl_coef=PPO_SETTINGS["kl_coef"],
        kl_estimator="k1",
        learning_rate=PPO_SETTINGS["learning_rate"],
        num_sample_generations=0,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=lora_config("CAUSAL_LM"),
    )
    pad_id = tokenizer.pad_token_id
    timer = PhaseTimer()
    counts = {"gen_positions": 0, "prompt_tokens": 0, "valid_tokens": 0, "responses": 0, "with_eos": 0}
    marks: dict[str, Any] = {"rollout_start": None, "rollout_end": None, "update_start": None, "opt_end": None}

    def close_update() -> None:
        if marks["update_start"] is not None and marks["opt_end"] is not None:
            timer.add("total/update", marks["opt_end"] - marks["update_start"])
        marks["update_start"] = marks["opt_end"] = None

    def rollout_started(args_, kwargs):
        close_update()
        marks["rollout_start"] = time.perf_counter()
        return "rollout/generate"

    def generate_tokens(_phase, args_, _kwargs, result):
        queries, query_responses = args_[1], result[0]
        counts["prompt_tokens"] += int((queries != pad_id).sum())
        counts["gen_positions"] += query_responses.shape[0] * (query_responses.shape[1] - queries.shape[1])
        marks["rollout_end"] = time.perf_counter()
        return float(query_responses.shape[0] * (query_responses.shape[1] - queries.shape[1]))

    def rollout_tokens(_phase, args_, _kwargs, _result):
        marks["rollout_end"] = time.perf_counter()
        return float((args_[1] != pad_id).sum())

    def reward_phase(args_, kwargs):
        return "rollout/reward" if args_[0] is reward_model else "rollout/value"

    def reward_tokens(phase, args_, _kwargs, result):
        query_responses, context_length = args_[1], args_[3]
        if phase == "rollout/reward":
            responses = query_responses[:, context_length:]
            counts["valid_tokens"] += int((responses != pad_id).sum())
            counts["responses"] += responses.shape[0]
            counts["with_eos"] += int((responses == tokenizer.eos_token_id).any(dim=1).sum())
        return rollout_tokens(phase, args_, _kwargs, result)

    timer.wrap(trl_ppo, "batch_generation", rollout_started, generate_tokens)
    timer.wrap(trl_ppo, "get_reward", reward_phase, reward_tokens)
    timer.wrap(
        trl_ppo, "forward", lambda a, k: None if torch.is_grad_enabled() else "rollout/reference", rollout_tokens
    )

    def timed_wrapper_forward(self, **kwargs):
        # PolicyAndValueWrapper.forward, split in its two backbone passes (same three statements as trl's).
        if marks["update_start"] is None:
            marks["update_start"] = time.perf_counter()
            if marks["rollout_start"] is not None and marks["rollout_end"] is not None:
                timer.add("total/rollout", marks["rollout_end"] - marks["rollout_start"])
            marks["rollout_start"] = None
        tokens = float(kwargs["attention_mask"].sum())
        t0 = time.perf_counter()
        output = self.critic_backbone(**kwargs)
        logits = self.value_model.score(output.hidden_states[-1])
        t1 = time.perf_counter()
        policy_output = self.policy(**kwargs)
        timer.add("train/value_forward", t1 - t0, tokens)
        timer.add("train/policy_forward", time.perf_counter() - t1, tokens)
        return policy_output, logits

    timer._patches.append((trl_ppo.PolicyAndValueWrapper, "forward", trl_ppo.PolicyAndValueWrapper.forward))
    trl_ppo.PolicyAndValueWrapper.forward = timed_wrapper_forward
    import accelerate

    timer.wrap(accelerate.Accelerator, "backward", lambda a, k: "train/backward")
    clock = StepClock()
    original_post = clock._post

    def post_with_mark(*a: Any) -> None:
        original_post(*a)
        marks["opt_end"] = time.perf_counter()

    clock._post = post_with_mark  # type: ignore[method-assign]
    with cpu_window() as window:
        clock.start()
        try:
            trainer.train()
        finally:
            clock.stop()
            close_update()
    timer.restore()
    timer.add("train/optimizer_step", clock.optimizer_s)
    n_params = base_parameters(trainer.model.policy)
    update_ends = clock.ends
    update_s = [b - a for a, b in zip([clock.t_start, *update_ends], update_ends)]
    result = summarize(
        side="peer",
        args=args,
        window=window,
        timer=timer,
        counts=counts,
        update_s=update_s,
        n_params=n_params,
        value_training="full",
    )
    logs = [row for row in trainer.state.log_history if "objective/scores" in row]
    result.update(
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        reward_mean_first=logs[0]["objective/scores"] if logs else None,
        reward_mean_last=logs[-1]["objective/scores"] if logs else None,
        kl_last=logs[-1]["objective/kl"] if logs else None,
        sft_dir=args.sft_dir,
        reward_dir=args.reward_dir,
        output_dir=args.output_dir,
        bf16_note="PPOTrainer 1.12 builds its Accelerator without mixed precision: --bf16 has no effect",
    )
    flops = result.pop("_model_flops")
    return finalize(result, window, flops, args.bf16, not args.no_peak, T_PROCESS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, choices=("sft", "reward", "ppo"))
    parser.add_argument("--model-dir", required=True, help="the embedded model's safetensors dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--eval-data", default=None)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sft-dir", default=None)
    parser.add_argument("--reward-dir", default=None)
    parser.add_argument("--updates", type=int, default=PPO_SETTINGS["updates"])
    parser.add_argument("--response-length", type=int, default=PPO_SETTINGS["response_length"])
    parser.add_argument("--tag", default="r1")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-peak", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.stage != "ppo":
        shutil.rmtree(args.output_dir, ignore_errors=True)
    else:
        shutil.rmtree(Path(args.output_dir) / "trainer", ignore_errors=True)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    run = {"sft": run_sft, "reward": run_reward, "ppo": run_ppo}[args.stage]
    result = run(args)
    result["peer"] = "trl 1.12.0"
    emit_result(result)


if __name__ == "__main__":
    main()
