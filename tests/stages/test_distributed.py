"""Real multi-process training on the CPU: ``torchrun --nproc_per_node 2`` (gloo) on a tiny random Llama.

The supervised loop promises that 2 processes x ``per_device_train_batch_size`` B make the same optimizer steps as
1 process x 2B (the global micro-batch is cut from one seeded permutation, each rank takes a contiguous shard, and the
loss is a sum over the *global* unit count, so DDP's gradient averaging gives the single-process update). These tests
check that promise on what the library writes: per-step ``train/loss`` in ``log.jsonl`` and the final LoRA weights.
PPO is checked for completing under 2 processes with every rank ending on the same weights, and the stage outputs for
being written once (rank 0), not once per process.

The 2-process runs go through ``distributed_driver.py`` (which also makes every rank dump its trainable parameters
and the rows it logged); the 1-process references run in this process, on one thread like each torchrun worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignment import reward, sft
from alignment.core.tracking import read_log
from tests.stages.distributed_helpers import (
    COMMON,
    LOSS_RTOL,
    PER_DEVICE_BATCH,
    WEIGHT_TOL,
    assert_ranks_agree,
    assert_same_metrics,
    assert_same_steps,
    assert_same_tensors,
    assert_written_once,
    global_stats,
    ppo_values,
    read_rank_rows,
    torchrun,
    train_in_process,
)

# ----------------------------------------------------------------------------------------------- SFT


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """SFT with padding-free batches on and off: 1 process x batch 4 here, 2 processes x batch 2 under torchrun."""
    root = tmp_path_factory.mktemp("distributed_sft")
    base = {**COMMON, "model_name_or_path": str(tiny_llama_dir), "per_device_eval_batch_size": PER_DEVICE_BATCH}
    two_process = []
    for padding_free in (True, False):
        tag = "packed" if padding_free else "padded"
        two_process.append(
            {
                **base,
                "padding_free": padding_free,
                "per_device_train_batch_size": PER_DEVICE_BATCH,
                "output_dir": str(root / f"two_{tag}"),
            }
        )
        train_in_process(
            sft,
            {
                **base,
                "padding_free": padding_free,
                "per_device_train_batch_size": 2 * PER_DEVICE_BATCH,
                "output_dir": str(root / f"one_{tag}"),
            },
        )
    torchrun("sft", two_process, root / "dump")
    return {"root": root, "dump": root / "dump"}


@pytest.mark.parametrize("tag", ["packed", "padded"])
def test_sft_two_processes_match_one_process_with_twice_the_batch(sft_runs, tag):
    one, two = sft_runs["root"] / f"one_{tag}", sft_runs["root"] / f"two_{tag}"
    assert_same_steps(one, two, ("train/loss", "train/grad_norm"))
    # Held-out loss (sharded over the ranks, then summed) before and after training.
    final_one, final_two = read_log(one)[-1], read_log(two)[-1]
    for key in ("eval/loss", "eval/loss_before"):
        assert final_two[key] == pytest.approx(final_one[key], rel=LOSS_RTOL)
    adapter = Path("adapter") / "adapter_model.safetensors"
    assert_same_tensors(load_file(one / adapter), load_file(two / adapter), f"SFT {tag} LoRA", **WEIGHT_TOL)
    assert_ranks_agree(sft_runs["dump"] / two.name)


def test_sft_ranks_log_the_same_global_statistics(sft_runs):
    dump = sft_runs["dump"] / "two_packed"
    rank0, rank1 = read_rank_rows(dump, 0), read_rank_rows(dump, 1)
    assert len(rank0) == len(rank1) > 0
    assert [global_stats(r) for r in rank1] == [global_stats(r) for r in rank0]


def test_sft_outputs_are_written_by_rank_zero_only(sft_runs):
    for tag in ("packed", "padded"):
        assert_written_once(sft_runs["root"] / f"two_{tag}", checkpoint_steps=[2])


def test_sft_last_micro_batch_smaller_than_the_number_of_processes(tmp_path, tiny_llama_dir):
    """9 records, global batch 4: the third micro-batch has 1 record, so rank 1's share is empty."""
    base = {
        **COMMON,
        "model_name_or_path": str(tiny_llama_dir),
        "max_samples": 9,
        "eval_split_size": 0,
        "save_steps": 0,
    }
    train_in_process(
        sft, {**base, "per_device_train_batch_size": 2 * PER_DEVICE_BATCH, "output_dir": str(tmp_path / "one")}
    )
    two = {**base, "per_device_train_batch_size": PER_DEVICE_BATCH, "output_dir": str(tmp_path / "two")}
    torchrun("sft", two, tmp_path / "dump", timeout_s=240)
    assert_same_steps(tmp_path / "one", tmp_path / "two", ("train/loss", "train/grad_norm"))
    adapter = Path("adapter") / "adapter_model.safetensors"
    assert_same_tensors(
        load_file(tmp_path / "one" / adapter), load_file(tmp_path / "two" / adapter), "LoRA", **WEIGHT_TOL
    )


# ----------------------------------------------------------------------------------------------- reward


@pytest.fixture(scope="module")
def reward_runs(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """Reward model (LoRA + scalar head): 1 process x 4 comparisons vs 2 processes x 2 comparisons."""
    root = tmp_path_factory.mktemp("distributed_reward")
    base = {**COMMON, "model_name_or_path": str(tiny_llama_dir), "per_device_eval_batch_size": PER_DEVICE_BATCH}
    train_in_process(
        reward, {**base, "per_device_train_batch_size": 2 * PER_DEVICE_BATCH, "output_dir": str(root / "one")}
    )
    torchrun(
        "reward",
        {**base, "per_device_train_batch_size": PER_DEVICE_BATCH, "output_dir": str(root / "two")},
        root / "dump",
    )
    return {"root": root, "dump": root / "dump"}


def test_reward_two_processes_match_one_process_with_twice_the_batch(reward_runs):
    one, two = reward_runs["root"] / "one", reward_runs["root"] / "two"
    assert_same_steps(one, two, ("train/loss", "train/grad_norm", "train/n_pairs", "train/n_correct"))
    assert_same_metrics(one, two, ("eval_loss", "eval_accuracy", "reward_mean", "reward_std"))
    adapter = Path("adapter") / "adapter_model.safetensors"
    assert_same_tensors(load_file(one / adapter), load_file(two / adapter), "reward LoRA + head", **WEIGHT_TOL)
    assert_ranks_agree(reward_runs["dump"] / "two")


def test_reward_outputs_are_written_by_rank_zero_only(reward_runs):
    assert_written_once(reward_runs["root"] / "two", checkpoint_steps=[2])


# ----------------------------------------------------------------------------------------------- PPO


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory, sft_runs, reward_runs) -> dict[str, Path]:
    """3 PPO updates under 2 processes (4 prompts each), on the 2-process SFT and reward outputs, with a cost model."""
    root = tmp_path_factory.mktemp("distributed_ppo")
    values = {
        **ppo_values(sft_runs["root"] / "two_packed", reward_runs["root"] / "two"),
        "output_dir": str(root / "ppo"),
    }
    torchrun("ppo", values, root / "dump")
    return {"out": root / "ppo", "dump": root / "dump" / "ppo"}


def test_ppo_completes_under_two_processes_with_identical_weights_on_every_rank(ppo_run):
    rows = read_log(ppo_run["out"])
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert abs(rows[0]["objective/kl"]) < 1e-3  # the policy starts as the SFT adapter on every rank
    assert_ranks_agree(ppo_run["dump"])
    # The adapter rank 0 saved is the policy both ranks ended with.
    saved = load_file(ppo_run["out"] / "adapter" / "adapter_model.safetensors")
    rank1 = load_file(ppo_run["dump"] / "rank1.safetensors")
    policy = {k.removeprefix("model.").replace(".policy.", "."): v for k, v in rank1.items() if ".policy." in k}
    assert_same_tensors(policy, saved, "saved policy adapter vs rank 1", rtol=0.0, atol=0.0)
    assert (ppo_run["out"] / "DONE").is_file()


def test_ppo_rollout_statistics_are_global_on_every_rank(ppo_run):
    """Scores, KL and the KL coefficient are all-reduced, so every rank logs (and adapts beta on) the same values."""
    rank0, rank1 = read_rank_rows(ppo_run["dump"], 0), read_rank_rows(ppo_run["dump"], 1)
    assert len(rank0) == len(rank1) == 3
    reduced = ("objective/scores", "objective/kl", "objective/kl_coef", "objective/rlhf_reward", "val/response_length")
    for row0, row1 in zip(rank0, rank1):
        assert {k: row1[k] for k in reduced} == {k: row0[k] for k in reduced}
    # log.jsonl is rank 0's rows, written once.
    logged = read_log(ppo_run["out"])
    assert [global_stats({k: v for k, v in r.items() if k != "time"}) for r in logged] == [
        global_stats(r) for r in rank0
    ]


def test_ppo_every_logged_statistic_is_global(ppo_run):
    rank0, rank1 = read_rank_rows(ppo_run["dump"], 0), read_rank_rows(ppo_run["dump"], 1)
    for row0, row1 in zip(rank0, rank1):
        assert global_stats(row1) == global_stats(row0)


def test_ppo_outputs_are_written_by_rank_zero_only(ppo_run):
    assert_written_once(ppo_run["out"], checkpoint_steps=[1, 2])
