"""The pipeline on a tiny model: stages wired output -> input, finished stages skipped, a killed PPO resumed."""

from __future__ import annotations

import json

import pytest
import yaml

import alignment.ppo.loop as ppo_loop_module
from alignment.core.checkpointing import TrainingInterrupted
from alignment.core.config import ConfigError
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
    # Each stage that ran reports its own peak memory (the high-water mark restarts per stage).
    assert summary["stages"]["ppo"]["peak_rss_mib"] > 0 and "peak_rss_mib" not in summary["stages"]["sft"]


def write_named_recipe(tmp_path, model_dir) -> str:
    """Two reward stages (one named by prefix, one by ``stage:``), two PPO runs and an evaluation."""
    text = f"""\
model_name_or_path: {model_dir}
output_dir: {tmp_path / "run"}
dataset_name: demo
lora_r: 8
sft: {{max_steps: 1}}
reward_helpful: {{max_steps: 1, lora_r: 4}}
judge:
  stage: reward
  max_steps: 2
ppo_plain: {{total_episodes: 8}}
ppo_constrained:
  reward_model_paths: [reward_helpful]
  cost_model_path: judge
  cost_model_is_reward: true
evaluate: {{max_prompts_per_label: 2, checkpoint_dirs: [ppo_plain/snapshots/step-4], gold_reward: judge}}
"""
    path = tmp_path / "named.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_named_stages_run_in_file_order_each_in_its_own_directory_and_wired_by_name(tmp_path, tiny_llama_dir):
    configs, run_dir, stages = load_pipeline(write_named_recipe(tmp_path, tiny_llama_dir), {})
    assert stages == ["sft", "reward_helpful", "judge", "ppo_plain", "ppo_constrained", "evaluate"]
    for name in stages:
        assert configs[name].train.output_dir == str(run_dir / name)
    assert hasattr(configs["judge"], "reward") and configs["judge"].train.max_steps == 2
    assert configs["reward_helpful"].lora.lora_r == 4 and configs["judge"].lora.lora_r == 8  # sections stay apart
    # A PPO run without its own reward takes the first reward stage; stage names in path keys become directories.
    assert configs["ppo_plain"].ppo.reward_model_paths == [str(run_dir / "reward_helpful")]
    assert configs["ppo_plain"].ppo.sft_model_path == str(run_dir / "sft")
    constrained = configs["ppo_constrained"].ppo
    assert constrained.cost_model_path == str(run_dir / "judge") and constrained.cost_model_is_reward
    # Evaluation compares base, SFT and every PPO run, scored by every reward stage.
    ev = configs["evaluate"].evaluate
    assert ev.policy_names == ["base", "sft", "ppo_plain", "ppo_constrained"]
    assert ev.policies[1:] == [str(run_dir / n) for n in ("sft", "ppo_plain", "ppo_constrained")]
    assert ev.reward_model_paths == [str(run_dir / "reward_helpful"), str(run_dir / "judge")]
    # A path under a stage's name is a folder inside that stage's output (a PPO snapshot for the curve).
    assert ev.checkpoint_dirs == [str(run_dir / "ppo_plain" / "snapshots" / "step-4")]


def test_a_second_sft_stage_trains_on_the_first_and_is_the_start_and_reference_of_ppo(tmp_path, tiny_llama_dir):
    text = f"""\
model_name_or_path: {tiny_llama_dir}
output_dir: {tmp_path / "run"}
dataset_name: demo
sft: {{max_steps: 1}}
sft_safety: {{model_name_or_path: sft, max_steps: 1}}
reward: {{max_steps: 1}}
ppo: {{total_episodes: 8}}
evaluate: {{max_prompts_per_label: 2}}
"""
    path = tmp_path / "two_sft.yaml"
    path.write_text(text, encoding="utf-8")
    configs, run_dir, stages = load_pipeline(str(path), {})
    assert stages == ["sft", "sft_safety", "reward", "ppo", "evaluate"]
    assert configs["sft_safety"].model.model_name_or_path == str(run_dir / "sft")
    assert configs["ppo"].ppo.sft_model_path == str(run_dir / "sft_safety")
    ev = configs["evaluate"].evaluate
    assert ev.policy_names == ["base", "sft", "sft_safety", "ppo"] and ev.reference_policy == "sft_safety"
    assert ev.policies[1:] == [str(run_dir / n) for n in ("sft", "sft_safety", "ppo")]


def test_named_stages_can_be_chosen_from_the_command_line(tmp_path, tiny_llama_dir):
    configs, run_dir, stages = load_pipeline(
        write_named_recipe(tmp_path, tiny_llama_dir), {"stages": "ppo_constrained,evaluate"}
    )
    assert stages == ["ppo_constrained", "evaluate"]
    # Stages not run now are still wired by name: their outputs from an earlier run are the inputs.
    assert configs["ppo_constrained"].ppo.cost_model_path == str(run_dir / "judge")
    assert configs["evaluate"].evaluate.policy_names == ["base", "sft", "ppo_plain", "ppo_constrained"]
    with pytest.raises(ConfigError, match="stages: unknown \\['ppo_missing'\\]; choose from .*ppo_constrained"):
        load_pipeline(write_named_recipe(tmp_path, tiny_llama_dir), {"stages": "ppo_missing"})


def test_a_section_naming_an_unknown_stage_kind_is_refused_with_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: x\njudge:\n  stage: rewrad\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: stage 'rewrad' is not a stage kind"):
        load_pipeline(str(path), {})


def test_swapping_the_base_model_leaves_a_reward_model_on_its_own_base(tmp_path, tiny_llama_dir):
    recipe = tmp_path / "own_model.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_llama_dir}\noutput_dir: {tmp_path / 'run'}\ndataset_name: demo\n"
        "sft: {max_steps: 1}\n"
        "reward_encoder: {model_name_or_path: all-minilm-l6-v2, use_lora: false, learning_rate: 5.0e-5}\n"
        "ppo_a: {total_episodes: 8}\n",
        encoding="utf-8",
    )
    overrides = {"model_name_or_path": "org/bigger-model", "use_lora": "true", "lora_r": "2", "learning_rate": "1e-5"}
    configs, _, _ = load_pipeline(str(recipe), overrides)
    encoder = configs["reward_encoder"]
    assert encoder.model.model_name_or_path == "all-minilm-l6-v2" and not encoder.lora.use_lora
    assert encoder.lora.lora_r != 2 and encoder.train.learning_rate == 1e-5  # training keys still reach it
    for name in ("sft", "ppo_a"):
        assert configs[name].model.model_name_or_path == "org/bigger-model" and configs[name].lora.lora_r == 2


def test_a_dpo_stage_starts_from_sft_and_is_evaluated_beside_the_ppo_runs(tmp_path, tiny_llama_dir):
    recipe = {
        "model_name_or_path": str(tiny_llama_dir),
        "output_dir": str(tmp_path / "run"),
        "dataset_name": "demo",
        "stages": ["sft", "reward", "ppo", "dpo", "ppo_grpo", "evaluate"],
        "dpo": {"model_name_or_path": "sft", "beta": 0.2},
        "ppo_grpo": {"algorithm": "grpo", "samples_per_prompt": 4},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    configs, run_dir, stages = load_pipeline(str(path), {})
    assert configs["dpo"].model.model_name_or_path == str(run_dir / "sft") and configs["dpo"].dpo.beta == 0.2
    assert configs["ppo_grpo"].ppo.algorithm == "grpo" and configs["ppo"].ppo.algorithm == "ppo"
    names = configs["evaluate"].evaluate.policy_names
    assert names[:2] == ["base", "sft"] and sorted(names[2:]) == ["dpo", "ppo", "ppo_grpo"]
    # A recipe without named sections still runs the four InstructGPT stages, not DPO.
    assert load_pipeline(write_recipe(tmp_path, tiny_llama_dir), {"stages": "sft,reward,ppo,evaluate"})[2] == [
        "sft",
        "reward",
        "ppo",
        "evaluate",
    ]
