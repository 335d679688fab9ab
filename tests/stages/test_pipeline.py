"""The pipeline on a tiny model: stages wired output -> input, finished stages skipped, a killed PPO resumed."""

from __future__ import annotations

import json

import pytest
import yaml

import alignment.ppo.loop as ppo_loop_module
from alignment.core.checkpointing import TrainingInterrupted
from alignment.core.tracking import read_log
from alignment.pipeline import load_pipeline, run_pipeline
from tests.helpers import interrupt_after


def write_recipe(tmp_path, model_dir) -> str:
    recipe = {
        "model_name_or_path": str(model_dir),
        "output_dir": str(tmp_path / "run"),
        "dataset_name": "demo",
        "per_device_train_batch_size": 4,
        "max_length": 128,
        "stages": ["sft", "reward", "ppo"],
        "sft": {"max_samples": 8, "max_steps": 1, "eval_split_size": 0},
        "reward": {"max_samples": 8, "max_steps": 1, "eval_split_size": 4},
        "ppo": {
            "max_samples": 12,
            "eval_split_size": 2,
            "eval_prompts": 2,
            "total_episodes": 12,
            "rollout_batch_size": 4,
            "mini_batch_size": 4,
            "max_new_tokens": 4,
            "save_steps": 1,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return str(path)


def test_outputs_feed_the_next_stage_and_shared_overrides_reach_every_stage(tmp_path, tiny_llama_dir):
    configs, run_dir, stages = load_pipeline(write_recipe(tmp_path, tiny_llama_dir), {"lora_r": "4"})
    assert stages == ["sft", "reward", "ppo"]
    assert configs["ppo"].ppo.sft_model_path == str(run_dir / "sft")
    assert configs["ppo"].ppo.reward_model_paths == [str(run_dir / "reward")]
    assert {configs[s].lora.lora_r for s in stages} == {4}
    assert configs["sft"].data.max_samples == 8 and configs["ppo"].data.max_samples == 12


def test_rerun_skips_finished_stages_and_resumes_a_killed_ppo(tmp_path, tiny_llama_dir, monkeypatch):
    recipe = write_recipe(tmp_path, tiny_llama_dir)

    monkeypatch.setattr(ppo_loop_module, "GracefulInterrupt", interrupt_after(2))
    with pytest.raises(TrainingInterrupted):
        run_pipeline(recipe)
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    assert (run_dir / "sft" / "DONE").is_file() and (run_dir / "reward" / "DONE").is_file()
    assert not (run_dir / "ppo" / "DONE").is_file()

    summary = run_pipeline(recipe)
    statuses = {stage: info["status"] for stage, info in summary["stages"].items()}
    assert statuses == {"sft": "skipped (already complete)", "reward": "skipped (already complete)", "ppo": "ran"}
    assert [row["step"] for row in read_log(run_dir / "ppo")] == [1, 2, 3]  # resumed at update 3, not restarted
    assert json.loads((run_dir / "summary.json").read_text())["stages"]["ppo"]["metrics"]["updates"] == 3
