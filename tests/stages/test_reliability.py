"""Faults and bad input around the training core: each case here failed (silently, or with a traceback) before.

Stale or foreign state is refused, a diverged run is never called finished, a user's folder is never written
into, a cut-short checkpoint is skipped on resume, and every bad input ends in one line naming what to change.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignment import reward, sft
from alignment.cli import main as cli_main
from alignment.core.checkpointing import TRAINABLE_FILE, list_checkpoints
from alignment.core.config import ConfigError
from alignment.core.config_parsing import build_config
from alignment.core.identity import IDENTITY_FILE, read_identity, run_identity
from alignment.core.tracking import read_log
from alignment.data.load import load_records
from alignment.pipeline import load_pipeline, run_pipeline
from data_schemas.errors import RecordError
from tests.helpers import interrupt_after


def sft_config(model_dir, out, **overrides):
    values = {
        "model_name_or_path": str(model_dir),
        "dataset_name": "demo",
        "max_samples": 8,
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_length": 128,
        "max_steps": 2,
        "save_steps": 1,
        "save_total_limit": 5,
    }
    values.update(overrides)
    return build_config(sft.CONFIG_TYPES, values)


def cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli_main(argv)
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------------- 1. a used output_dir


def test_rerun_with_other_settings_is_refused_naming_the_changed_keys(tiny_llama_dir, tmp_path):
    sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=4))
    with pytest.raises(ConfigError, match=r"lora_r 8 -> 4.*--overwrite true"):
        sft.train(sft_config(tiny_llama_dir, tmp_path, lora_r=4))
    with pytest.raises(ConfigError, match="already holds a run of these settings"):
        sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=4))
    assert (tmp_path / "DONE").is_file()  # a refused run touches nothing


def test_overwrite_starts_over_keeping_nothing_of_the_earlier_run(tiny_llama_dir, tmp_path):
    """The earlier run's higher-numbered checkpoints used to outlive the new run's, and then be resumed."""
    sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=4))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    sft.train(sft_config(tiny_llama_dir, tmp_path, lora_r=4, max_steps=2, overwrite=True))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert [row["step"] for row in read_log(tmp_path) if "train/loss" in row] == [1, 2]  # one run's rows
    assert read_identity(tmp_path)["settings"]["lora_r"] == 4


def test_done_is_removed_when_a_run_starts_and_a_resume_logs_no_step_twice(tiny_llama_dir, tmp_path, monkeypatch):
    import alignment.training.loop as loop

    sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=3, save_total_limit=1))
    monkeypatch.setattr(loop, "GracefulInterrupt", interrupt_after(1))
    with pytest.raises(KeyboardInterrupt):
        sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=3, save_total_limit=1, overwrite=True))
    assert not (tmp_path / "DONE").is_file()  # interrupted: not finished, whatever the earlier run was
    monkeypatch.undo()
    sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=3, save_total_limit=1, resume=True))
    steps = [row["step"] for row in read_log(tmp_path) if "train/loss" in row]
    assert steps == [1, 2, 3] and (tmp_path / "DONE").is_file()


def test_leftover_partial_checkpoints_are_removed_and_an_unreadable_newest_is_skipped(tiny_llama_dir, tmp_path):
    sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=3))
    newest = list_checkpoints(tmp_path)[-1]
    (newest / TRAINABLE_FILE).write_bytes(b"cut short")  # as a crash in the middle of a write would leave it
    partial = tmp_path / "checkpoints" / ".tmp-checkpoint-9-123"
    partial.mkdir()
    (tmp_path / "DONE").unlink()
    metrics = sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=3, resume=True))
    assert not partial.exists() and metrics["steps"] == 3
    log = (tmp_path / "run.log").read_text()
    assert f"checkpoint {newest} cannot be read" in log and "resumed from" in log and "checkpoint-1" in log


# ----------------------------------------------------------------------------------- 2. the pipeline


def write_recipe(tmp_path: Path, model_dir: Path, name: str = "recipe", **sft_section) -> str:
    recipe = {
        "model_name_or_path": str(model_dir),
        "output_dir": str(tmp_path / "run"),
        "dataset_name": "demo",
        "per_device_train_batch_size": 4,
        "max_length": 128,
        "stages": ["sft", "reward", "ppo"],
        "sft": {"max_samples": 8, "max_steps": 1, **sft_section},
        "reward": {"max_samples": 8, "max_steps": 1},
        "ppo": {"max_samples": 8, "total_episodes": 4, "rollout_batch_size": 4, "max_new_tokens": 4, "eval_prompts": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return str(path)


def planned_fingerprints(recipe: str, overrides: dict | None = None) -> dict[str, str]:
    configs, _, stages = load_pipeline(recipe, overrides or {})
    planned: dict[str, str] = {}
    out = {}
    for stage in stages:
        identity = run_identity(configs[stage], planned)
        planned[configs[stage].train.output_dir] = out[stage] = identity["fingerprint"]
    return out


def test_a_changed_stage_changes_every_stage_downstream_of_it_and_only_those(tmp_path, tiny_llama_dir):
    before = planned_fingerprints(write_recipe(tmp_path, tiny_llama_dir))
    after = planned_fingerprints(write_recipe(tmp_path, tiny_llama_dir, "slower", learning_rate=1e-5))
    assert after["sft"] != before["sft"] and after["ppo"] != before["ppo"]  # PPO starts from the SFT output
    assert after["reward"] == before["reward"]  # the reward model does not read the SFT output
    shared = planned_fingerprints(write_recipe(tmp_path, tiny_llama_dir), {"lora_r": 4})
    assert all(shared[s] != before[s] for s in before)


def test_pipeline_rerun_reruns_a_changed_stage_and_skips_the_rest(tmp_path, tiny_llama_dir):
    recipe = write_recipe(tmp_path, tiny_llama_dir)
    run_pipeline(recipe, {"stages": "sft,reward"})
    summary = run_pipeline(
        write_recipe(tmp_path, tiny_llama_dir, "slower", learning_rate=1e-5), {"stages": "sft,reward"}
    )
    statuses = {stage: info["status"] for stage, info in summary["stages"].items()}
    assert statuses == {"sft": "ran (settings changed)", "reward": "skipped (already complete)"}
    assert read_identity(tmp_path / "run" / "sft")["settings"]["learning_rate"] == 1e-5
    summary = run_pipeline(recipe, {"stages": "sft"})  # --stages on the command line is honoured
    assert list(summary["stages"]) == ["sft"] and summary["stages"]["sft"]["status"] == "ran (settings changed)"


def test_pipeline_refuses_an_unknown_stage_name(tmp_path, tiny_llama_dir):
    with pytest.raises(ConfigError, match="stages: unknown"):
        load_pipeline(write_recipe(tmp_path, tiny_llama_dir), {"stages": "sft,rewrad"})


# ----------------------------------------------------------------------------------- 3. finite or nothing


def test_a_diverging_sft_run_stops_before_any_non_finite_weight_is_saved(tiny_llama_dir, tmp_path):
    with pytest.raises(FloatingPointError, match="lower the learning_rate"):
        sft.train(sft_config(tiny_llama_dir, tmp_path, learning_rate=1e30, max_steps=6))
    assert not (tmp_path / "DONE").is_file()
    for checkpoint in list_checkpoints(tmp_path):
        assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint / TRAINABLE_FILE)).values())
    assert not (tmp_path / "adapter").exists()


def test_a_collapsing_reward_run_is_stopped(tiny_llama_dir, tmp_path):
    cfg = build_config(
        reward.CONFIG_TYPES,
        {
            "model_name_or_path": str(tiny_llama_dir),
            "dataset_name": "demo",
            "max_samples": 16,
            "output_dir": str(tmp_path),
            "per_device_train_batch_size": 4,
            "max_length": 128,
            "max_steps": 4,
            "learning_rate": 1e6,
            "save_steps": 0,
        },
    )
    with pytest.raises(FloatingPointError, match="reward step"):
        reward.train(cfg)
    assert not (tmp_path / "DONE").is_file()


def test_training_health_rules_by_hand():
    from alignment.training.loop import check_training_health

    check_training_health("sft", 3, loss=3.0, grad_norm=1.0, first_loss=3.2)  # healthy
    check_training_health("reward", 3, loss=2.0, grad_norm=0.5, first_loss=0.69)  # worse, but not 2 nats above
    for loss, grad_norm, first in ((math.nan, 1.0, 3.0), (3.0, math.inf, 3.0), (3.0, 0.0, 3.0), (10.8, 0.1, 3.17)):
        with pytest.raises(FloatingPointError):
            check_training_health("sft", 3, loss=loss, grad_norm=grad_norm, first_loss=first)


# ----------------------------------------------------------------------------------- 4. a user's folder


def test_an_unrelated_folder_is_never_written_into(tiny_llama_dir, tmp_path, capsys):
    mine = tmp_path / "my_project"
    (mine / "adapter").mkdir(parents=True)
    (mine / "adapter" / "notes.txt").write_text("mine")
    (mine / "tokenizer").mkdir()
    for extra in ([], ["--overwrite", "true"]):
        argv = ["sft", "--model_name_or_path", str(tiny_llama_dir), "--dataset_name", "demo", "--output_dir", str(mine)]
        code, err = cli([*argv, "--max_steps", "1", *extra], capsys)
        assert code == 2 and err.count("\n") == 1 and "not a run directory" in err
    assert (mine / "adapter" / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == [
        "adapter",
        "tokenizer",
    ]


# ----------------------------------------------------------------------------------- 5. one-line errors


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("sft", ["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be at least 1"),
        ("sft", ["--per_device_train_batch_size", "-1"], "per_device_train_batch_size must be at least 1"),
        ("sft", ["--max_length", "0"], "max_length must be at least 2"),
        ("sft", ["--load_in_8bit", "--load_in_4bit"], "load_in_8bit and load_in_4bit are both set"),
        ("reward", ["--learning_rate", "nan"], "learning_rate must be a positive number"),
        ("ppo", ["--rollout_batch_size", "0"], "rollout_batch_size must be at least 1"),
        ("ppo", [], "PPO needs at least one reward model"),
        ("sft", ["--model_name_or_path", "runs_missing/sft"], "not found"),
        ("sft", ["--resume", "--overwrite"], "resume and overwrite are both set"),
    ],
)
def test_bad_settings_end_in_one_line_before_anything_is_written(
    command, flags, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs_missing").mkdir()  # an existing parent folder: the name is a local path, not a Hub id
    out = tmp_path / "out"
    code, err = cli([command, "--dataset_name", "demo", "--output_dir", str(out), *flags], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_run_that_fails_inside_ends_in_one_line_and_debug_shows_the_traceback(tiny_llama_dir, tmp_path, capsys):
    argv = ["sft", "--model_name_or_path", str(tiny_llama_dir), "--dataset_name", "demo", "--max_samples", "8"]
    argv += ["--per_device_train_batch_size", "4", "--max_steps", "4", "--learning_rate", "1e30", "--save_steps", "0"]
    code, err = cli([*argv, "--output_dir", str(tmp_path / "a")], capsys)
    said = [line for line in err.splitlines() if line.startswith("alignment ")]  # besides the loaders' progress bars
    assert code == 1 and "Traceback" not in err and len(said) == 1
    assert said[0].startswith("alignment sft: error: FloatingPointError: ")
    with pytest.raises(FloatingPointError):
        cli_main([*argv, "--output_dir", str(tmp_path / "b"), "--debug"])


def test_every_record_invalid_is_one_error_naming_the_reasons(tmp_path):
    from alignment.core.config import DataConfig
    from alignment.data.load import load_records

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "same", "rejected": "same"}\n' * 3, encoding="utf-8")
    with pytest.raises(RecordError, match=r"bad.jsonl: no usable comparison records \(skipped 3 invalid records"):
        load_records(DataConfig(dataset_name=str(bad), invalid_records="skip"), "comparison")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "empty.jsonl", "empty.jsonl: the file holds no records (it is empty)"),
        (
            '[\n  {"prompt": "a"},\n  {"prompt": "b"}\n]\n',
            "array.jsonl",
            "a file holding one JSON array should be named .json",
        ),
    ],
)
def test_an_empty_file_or_a_json_array_named_jsonl_says_so(content, name, message, tmp_path):
    from alignment.data.load import load_records_from_path

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RecordError) as error:
        load_records_from_path(path, "prompt")
    assert message in str(error.value) and "columns [none]" not in str(error.value)


# ----------------------------------------------------------------------------------- 6 and 7. smaller faults


def test_data_inspect_reports_invalid_records_by_reason_by_default(tmp_path, capsys, monkeypatch, embedded_tokenizer):
    import alignment.modeling.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "load_tokenizer", lambda cfg: embedded_tokenizer)
    data = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "z", "rejected": "z"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n", encoding="utf-8")
    code = cli_main(["data", "inspect", str(data)])
    out = capsys.readouterr().out
    assert code == 0 and "chosen_equals_rejected: 1" in out and "invalid_json: 1" in out


def test_reward_eval_only_honours_max_eval_samples(tiny_llama_dir, tmp_path):
    values = {"model_name_or_path": str(tiny_llama_dir), "dataset_name": "demo", "output_dir": str(tmp_path)}
    values.update(eval_only=True, max_eval_samples=6, max_length=128, per_device_eval_batch_size=8)
    cfg = build_config(reward.CONFIG_TYPES, values)
    metrics = reward.train(cfg)

    def pairs(n: int) -> int:  # a K-ranked record holds K(K-1)/2 pairs
        records = load_records(cfg.data, "comparison", seed=cfg.train.seed)
        held_out = records.eval_records or records.records  # eval_only without a split evaluates the whole source
        return sum(len(r.responses) * (len(r.responses) - 1) // 2 for r in held_out[:n])

    assert metrics["num_pairs"] == pairs(6)
    again = reward.train(build_config(reward.CONFIG_TYPES, {**values, "max_eval_samples": 4}))  # evaluating again
    assert again["num_pairs"] == pairs(4) < pairs(6)


def test_importing_bitsandbytes_prints_no_kernel_download_warning(capfd):
    import subprocess
    import sys

    code = "import logging; logging.basicConfig(level=logging.WARNING); import alignment, bitsandbytes"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "kernels-community" not in result.stderr + result.stdout


def test_trust_remote_code_is_logged(tiny_llama_dir, caplog):
    from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
    from alignment.modeling.load import load_causal_lm

    with caplog.at_level(logging.WARNING, logger="alignment.modeling.load"):
        cfg = ModelConfig(model_name_or_path=str(tiny_llama_dir), trust_remote_code=True)
        load_causal_lm(cfg, LoraConfig(use_lora=False), QuantConfig(), trainable=False)
    assert "trust_remote_code is on" in caplog.text


def test_identity_file_records_settings_and_inputs(tiny_llama_dir, tmp_path):
    sft.train(sft_config(tiny_llama_dir, tmp_path, max_steps=1))
    identity = json.loads((tmp_path / IDENTITY_FILE).read_text())
    assert identity["settings"]["max_steps"] == 1 and "output_dir" not in identity["settings"]
    assert str(tiny_llama_dir) in identity["inputs"] and len(identity["fingerprint"]) == 16
