"""What the multi-process tests share: the ``torchrun`` call, the 1-process reference run, and the comparisons.

The 2-process runs go through ``distributed_driver.py`` (which also makes every rank dump its trainable parameters,
the rows it logged and how it held the model); the 1-process references run in the test's process, on one thread
like each torchrun worker.
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

from alignment.core.config_parsing import build_config
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


def ppo_values(sft_dir: Path, reward_dir: Path) -> dict[str, Any]:
    """3 PPO updates of 2 processes x 4 prompts from an SFT and a reward output, the reward model also as the cost
    (both ride on the shared base as adapters). Add ``output_dir``."""
    return {
        "model_name_or_path": str(sft_dir),
        "sft_model_path": str(sft_dir),
        "reward_model_paths": [str(reward_dir)],
        "cost_model_path": str(reward_dir),
        "dataset_name": "demo",
        "max_samples": 16,
        "eval_split_size": 2,
        "total_episodes": 24,  # 3 updates of 2 x 4 prompts
        "rollout_batch_size": 4,
        "mini_batch_size": 2,
        "max_new_tokens": 6,
        "eval_prompts": 2,
        "learning_rate": 1e-3,
        "save_steps": 1,
        "max_length": 128,
    }


def torchrun(
    stage: str,
    values: dict[str, Any] | list[dict[str, Any]],
    dump_dir: Path,
    nproc: int = 2,
    timeout_s: float = TORCHRUN_TIMEOUT_S,
    env: dict[str, str] | None = None,
    expect_failure: bool = False,
) -> str:
    """Run the driver under ``torchrun --standalone``; returns its output, fails with its tail.

    ``env``: extra environment (a fault to inject); ``expect_failure``: the run must end with a non-zero status.
    """
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
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
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
    if expect_failure:
        assert process.returncode != 0, f"torchrun {stage} was expected to fail:\n{output[-3000:]}"
    else:
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


def assert_same_metrics(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    """The two runs' ``metrics.json`` agree on ``keys`` (held-out figures computed across the processes)."""
    metrics_one = json.loads((one / "metrics.json").read_text(encoding="utf-8"))
    metrics_two = json.loads((two / "metrics.json").read_text(encoding="utf-8"))
    for key in keys:
        assert metrics_two[key] == pytest.approx(metrics_one[key], rel=LOSS_RTOL, abs=1e-6), key


# Where a gradient is ~0 up to float noise, Adam's first steps are about +-lr whichever sign the noise takes: in a
# large tensor (full fine-tuning's embedding matrix: a token seen once, a sum that nearly cancels) a coordinate or two
# per million may then differ by up to the run's whole movement (lr x steps). Found when a change of batch layout
# that left every gradient equal to 1e-6 relative moved one of 3.1M embedding weights by 2e-4.
ADAM_NOISE_PER_MILLION = 1.0
ADAM_NOISE_BOUND = COMMON["learning_rate"] * COMMON["max_steps"]


def assert_same_tensors(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str, **tol: float):
    assert expected.keys() == got.keys(), f"{what}: different parameter names"
    assert expected, f"{what}: no tensors"
    for name in expected:
        a, b = got[name], expected[name]
        allowed = int(a.numel() * ADAM_NOISE_PER_MILLION / 1e6)
        apart = ~torch.isclose(a, b, **tol) if a.shape == b.shape else None
        if apart is not None and 0 < int(apart.sum()) <= allowed:
            assert (a - b).abs()[apart].max() <= ADAM_NOISE_BOUND, f"{what}, {name}: {(a - b).abs()[apart]}"
            continue
        torch.testing.assert_close(a, b, **tol, msg=lambda m, n=name: f"{what}, {n}: {m}")


def assert_ranks_agree(dump: Path) -> None:
    """Every rank ends with the same trainable parameters (bit for bit: they apply the same reduced gradients)."""
    rank0, rank1 = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    assert_same_tensors(rank0, rank1, f"{dump.name}: rank 1 vs rank 0", rtol=0.0, atol=0.0)


def read_rank_holding(dump: Path, rank: int) -> dict[str, Any]:
    """``{"sharded": bool, "local_fraction": float}``: how the rank held the model when its loop returned."""
    return json.loads((dump / f"rank{rank}.json").read_text(encoding="utf-8"))


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
