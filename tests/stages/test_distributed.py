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

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from alignment import reward, sft
from alignment.core.config import build_config
from alignment.core.tracking import read_log

DRIVER = Path(__file__).with_name("distributed_driver.py")
TORCHRUN_TIMEOUT_S = 600
LOSS_RTOL = 1e-4
# Adam divides by sqrt(v): a coordinate whose gradient is ~0 moves by a noisy fraction of the learning rate, so the
# weights get an absolute tolerance of 5% of one step (lr 1e-3; measured differences are ~3e-6) on top of the relative
# one. A scaling bug hides from Adam's weights but not from train/grad_norm, which is compared with LOSS_RTOL.
WEIGHT_TOL = {"rtol": 1e-4, "atol": 5e-5}
# Timings differ between processes by nature; everything else a rank logs should be a global quantity.
RANK_LOCAL_PREFIXES = ("time/", "perf/", "train/tokens_per_second")

COMMON = {
    "dataset_name": "demo",
    "max_samples": 16,  # 16 training records: every global micro-batch of 4 splits 2 + 2
    "eval_split_size": 4,
    "max_steps": 3,
    "max_length": 128,
    "learning_rate": 1e-3,
    "lora_dropout": 0.0,  # dropout masks would differ between the 1- and 2-process runs
    "save_steps": 2,  # one checkpoint mid-run, to see that only rank 0 writes it
    "logging_steps": 1,
}
PER_DEVICE_BATCH = 2


def torchrun(
    stage: str,
    values: dict[str, Any] | list[dict[str, Any]],
    dump_dir: Path,
    nproc: int = 2,
    timeout_s: float = TORCHRUN_TIMEOUT_S,
) -> str:
    """Run the driver under ``torchrun --standalone``; returns its output, fails with its tail."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(DRIVER),
        stage,
        json.dumps(values),
        "--dump-dir",
        str(dump_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # A new session, so a hung run can be killed with its workers (killing torchrun alone would orphan them).
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun {stage} did not finish in {timeout_s} s (deadlock?):\n{output[-6000:]}")
    assert process.returncode == 0, f"torchrun {stage} exited with {process.returncode}:\n{output[-6000:]}"
    return output


def train_in_process(module: Any, values: dict[str, Any]) -> None:
    """The 1-process reference, on one thread like each torchrun worker (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module.train(build_config(module.CONFIG_TYPES, values))
    finally:
        torch.set_num_threads(threads)


def train_rows(output_dir: Path) -> list[dict[str, Any]]:
    return [row for row in read_log(output_dir) if "train/loss" in row]


def assert_same_steps(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    rows_one, rows_two = train_rows(one), train_rows(two)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [1, 2, 3]
    for key in keys:
        expected = [r[key] for r in rows_one]
        got = [r[key] for r in rows_two]
        assert got == pytest.approx(expected, rel=LOSS_RTOL), f"{key}: 1 process {expected}, 2 processes {got}"


def assert_same_tensors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str, **tol: float):
    assert expected.keys() == got.keys(), f"{what}: different parameter names"
    assert expected, f"{what}: no tensors"
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **tol, msg=lambda m, n=name: f"{what}, {n}: {m}")


def assert_ranks_agree(dump: Path) -> None:
    """Every rank ends with the same trainable parameters (bit for bit: they apply the same reduced gradients)."""
    rank0, rank1 = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    assert_same_tensors(rank0, rank1, f"{dump.name}: rank 1 vs rank 0", rtol=0.0, atol=0.0)


def read_rank_rows(dump: Path, rank: int) -> list[dict[str, float]]:
    return [json.loads(line) for line in (dump / f"rank{rank}.jsonl").read_text(encoding="utf-8").splitlines()]


def global_stats(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if not k.startswith(RANK_LOCAL_PREFIXES)}


def assert_written_once(output_dir: Path, checkpoint_steps: list[int]) -> None:
    """Only rank 0 writes the stage outputs: no row twice, one start-up line in run.log, no stray temp files."""
    rows = read_log(output_dir)
    keyed = [(r["step"], tuple(sorted(k for k in r if k not in ("step", "time")))) for r in rows]
    assert len(keyed) == len(set(keyed)), f"log.jsonl has rows written twice: {[k[0] for k in keyed]}"
    versions = json.loads((output_dir / "versions.json").read_text(encoding="utf-8"))
    assert versions["num_processes"] == 2
    starts = [
        line for line in (output_dir / "run.log").read_text(encoding="utf-8").splitlines() if "process(es)" in line
    ]
    assert len(starts) == 1, f"run.log has {len(starts)} start-up lines (one per writing process): {starts}"
    checkpoints = sorted((output_dir / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == [f"checkpoint-{s}" for s in checkpoint_steps]
    stray = [p.name for p in output_dir.rglob(".*")]
    assert not stray, f"temp files left behind (two writers racing?): {stray}"
    assert (output_dir / "DONE").is_file()


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
    metrics_one = json.loads((one / "metrics.json").read_text(encoding="utf-8"))
    metrics_two = json.loads((two / "metrics.json").read_text(encoding="utf-8"))
    for key in ("eval_loss", "eval_accuracy", "reward_mean", "reward_std"):
        assert metrics_two[key] == pytest.approx(metrics_one[key], rel=LOSS_RTOL, abs=1e-6), key
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
        "model_name_or_path": str(sft_runs["root"] / "two_packed"),
        "sft_model_path": str(sft_runs["root"] / "two_packed"),
        "reward_model_paths": [str(reward_runs["root"] / "two")],
        "cost_model_path": str(reward_runs["root"] / "two"),
        "dataset_name": "demo",
        "max_samples": 16,
        "eval_split_size": 2,
        "output_dir": str(root / "ppo"),
        "total_episodes": 24,  # 3 updates of 2 x 4 prompts
        "rollout_batch_size": 4,
        "mini_batch_size": 2,
        "max_new_tokens": 6,
        "eval_prompts": 2,
        "learning_rate": 1e-3,
        "save_steps": 1,
        "max_length": 128,
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
