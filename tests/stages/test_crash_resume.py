"""kill -9 matrix: each stage killed by SIGKILL mid-step and mid-checkpoint-write, resumed, equals an unbroken run.

The kills come from the library's fault-injection hook (``ALIGNMENT_FAULT=<where>:<step>``), so they land at the
same place every time. The resumed run must end with the same trainable weights, bit for bit, as a run that was
never interrupted, must leave no temporary checkpoint folder behind, and must log every step once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment import reward, sft
from alignment.core.config_parsing import build_config
from alignment.core.tracking import read_log
from tests.conftest import REPO_ROOT

TINY = {"dataset_name": "demo", "max_samples": 8, "per_device_train_batch_size": 4, "max_length": 128}


def flags(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += [f"--{key}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return out


def run_stage(stage: str, values: dict, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALIGNMENT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("ALIGNMENT_FAULT", None)
    if fault:
        env["ALIGNMENT_FAULT"] = fault
    argv = [sys.executable, "-m", "alignment.cli", stage, *flags(values)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "adapter" / "adapter_model.safetensors"))


def assert_resume_equals_unbroken(stage: str, values: dict, fault: str, tmp_path: Path, unbroken: Path) -> None:
    out = tmp_path / fault.replace(":", "-")
    killed = run_stage(stage, {**values, "output_dir": out}, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "DONE").is_file()
    resumed = run_stage(stage, {**values, "output_dir": out, "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list((out / "checkpoints").glob(".tmp-*")), "a partial checkpoint folder was left behind"
    steps = [row["step"] for row in read_log(out) if any(k.startswith(("train/loss", "objective/kl")) for k in row)]
    assert steps == sorted(set(steps)), f"steps logged twice after the resume: {steps}"
    expected, got = final_weights(unbroken), final_weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{fault}: {name} differs from the unbroken run"


def assert_matrix(stage: str, values: dict, faults: tuple[str, ...], tmp_path: Path) -> None:
    """An unbroken run, then one killed at each fault and resumed: each must end where the unbroken one did."""
    unbroken = tmp_path / "unbroken"
    result = run_stage(stage, {**values, "output_dir": unbroken})
    assert result.returncode == 0, result.stderr[-2000:]
    for fault in faults:
        assert_resume_equals_unbroken(stage, values, fault, tmp_path, unbroken)


def ppo_values(model: str, root: Path, max_new_tokens: int) -> dict:
    """One-step SFT and reward outputs on ``model`` under ``root``, and the PPO settings that start from them."""
    common = {"model_name_or_path": model, **TINY, "max_steps": 1, "save_steps": 0}
    sft.train(build_config(sft.CONFIG_TYPES, {**common, "output_dir": str(root / "sft")}))
    reward.train(build_config(reward.CONFIG_TYPES, {**common, "output_dir": str(root / "reward")}))
    return {
        "model_name_or_path": str(root / "sft"),
        "sft_model_path": str(root / "sft"),
        "reward_model_paths": [str(root / "reward")],
        "dataset_name": "demo",
        "max_samples": 12,
        "total_episodes": 12,
        "rollout_batch_size": 4,
        "mini_batch_size": 4,
        "max_new_tokens": max_new_tokens,
        "eval_prompts": 0,
        "save_steps": 1,
        "policy_snapshots": "false",
    }


SUPERVISED_FAULTS = ("train_step:2", "checkpoint_write:2")
PPO_FAULTS = ("ppo_update:2", "checkpoint_write:2")


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_supervised_stages_resume_after_kill_9_to_the_same_weights(stage, tiny_llama_dir, tmp_path):
    values = {"model_name_or_path": str(tiny_llama_dir), **TINY, "max_steps": 3, "save_steps": 1}
    assert_matrix(stage, values, SUPERVISED_FAULTS, tmp_path)


@pytest.fixture(scope="module")
def ppo_inputs(tmp_path_factory, tiny_llama_dir) -> dict:
    return ppo_values(str(tiny_llama_dir), tmp_path_factory.mktemp("crash_ppo_inputs"), max_new_tokens=4)


def test_ppo_resumes_after_kill_9_to_the_same_weights(ppo_inputs, tmp_path):
    assert_matrix("ppo", ppo_inputs, PPO_FAULTS, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_the_embedded_default_resumes_after_kill_9_to_the_same_weights(stage, embedded_dir, tmp_path):
    """The same matrix on the real 135M model (minutes: five runs per stage)."""
    values = {"model_name_or_path": "smollm2-135m-instruct", **TINY, "max_steps": 3, "save_steps": 1}
    assert_matrix(stage, values, SUPERVISED_FAULTS, tmp_path)


@pytest.mark.slow
def test_ppo_on_the_embedded_default_resumes_after_kill_9_to_the_same_weights(tmp_path_factory, tmp_path):
    values = ppo_values("smollm2-135m-instruct", tmp_path_factory.mktemp("embedded_crash_inputs"), max_new_tokens=8)
    assert_matrix("ppo", values, PPO_FAULTS, tmp_path)
