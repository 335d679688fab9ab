"""What a run's identity records for each input it reads."""

from __future__ import annotations

import hashlib
import os

from alignment import reward, sft
from alignment.core import identity
from alignment.core.config_parsing import build_config
from alignment.core.identity import BUILTIN_DEMO_DIR, input_digest, run_identity, write_identity
from alignment.data.demo import DEMO_DIR


def test_a_folder_inside_a_run_takes_the_run_fingerprint_and_its_own_path(tmp_path):
    run = tmp_path / "ppo_helpful"
    (run / "snapshots" / "step-4").mkdir(parents=True)
    write_identity(run, {"fingerprint": "abc123", "settings": {}, "inputs": {}})
    assert input_digest(str(run)) == "abc123"
    assert input_digest(str(run / "snapshots" / "step-4")) == "abc123:snapshots/step-4"
    # A new run in the same folder changes the snapshot's digest, so evaluations of it run again.
    write_identity(run, {"fingerprint": "def456", "settings": {}, "inputs": {}})
    assert input_digest(str(run / "snapshots" / "step-4")) == "def456:snapshots/step-4"


def test_a_file_is_known_by_its_content_and_a_name_by_nothing(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    digest = input_digest(str(data))
    assert digest == "sha256:" + hashlib.sha256(b"{}\n").hexdigest()[:16]
    # A copy elsewhere, written later (a fresh checkout, a re-mounted share), is the same input...
    copy = tmp_path / "elsewhere" / "pairs.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(data.read_bytes())
    os.utime(copy, ns=(1, 1))
    assert input_digest(str(copy)) == digest
    # ...and an edit that keeps the size and the time is not.
    stat = data.stat()
    data.write_text("[]\n", encoding="utf-8")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert input_digest(str(data)) != digest
    assert input_digest("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    assert input_digest(str(tmp_path / "plain_folder")) is None


def test_a_stage_on_the_built_in_demo_data_depends_on_the_one_file_it_reads(tmp_path, monkeypatch):
    """Regenerating the demo comparisons re-runs the reward stage, not SFT (whose demonstrations did not change)."""
    assert BUILTIN_DEMO_DIR == DEMO_DIR
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("demonstrations.jsonl", "comparisons.jsonl", "prompts.jsonl", "eval_prompts.jsonl"):
        (demo / name).write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(identity, "BUILTIN_DEMO_DIR", demo)
    sft_cfg = build_config(sft.CONFIG_TYPES, {"dataset_name": "demo", "output_dir": str(tmp_path / "s")})
    reward_cfg = build_config(reward.CONFIG_TYPES, {"dataset_name": "demo", "output_dir": str(tmp_path / "r")})
    before = {"sft": run_identity(sft_cfg), "reward": run_identity(reward_cfg)}
    assert [k for k in before["sft"]["inputs"] if k.startswith("demo")] == ["demo:demonstrations.jsonl"]
    assert [k for k in before["reward"]["inputs"] if k.startswith("demo")] == ["demo:comparisons.jsonl"]
    (demo / "comparisons.jsonl").write_text("{}\n{}\n", encoding="utf-8")
    assert run_identity(sft_cfg)["fingerprint"] == before["sft"]["fingerprint"]
    assert run_identity(reward_cfg)["fingerprint"] != before["reward"]["fingerprint"]
    # PPO-ptx reads the demonstrations besides the prompts: a new version of either re-runs it.
    from alignment.ppo.config import CONFIG_TYPES as PPO_TYPES

    ppo_values = {"dataset_name": "demo", "reward_model_paths": ["rm"], "ptx_coef": 1.0, "ptx_dataset_name": "demo"}
    ppo_cfg = build_config(PPO_TYPES, {**ppo_values, "output_dir": str(tmp_path / "p")})
    ppo_before = run_identity(ppo_cfg)
    assert sorted(k for k in ppo_before["inputs"] if k.startswith("demo")) == [
        "demo:demonstrations.jsonl",
        "demo:prompts.jsonl",
    ]
    (demo / "demonstrations.jsonl").write_text("{}\n{}\n", encoding="utf-8")
    assert run_identity(ppo_cfg)["fingerprint"] != ppo_before["fingerprint"]


def test_a_setting_added_later_changes_no_identity_at_its_default():
    """A finished run keeps its fingerprint when the project adds a setting, and a run that sets it differs."""
    from alignment.ppo.config import CONFIG_TYPES

    values = {"reward_model_paths": ["rm"], "dataset_name": "demo"}
    plain = run_identity(build_config(CONFIG_TYPES, values))
    added_later = (
        "reward_weights_by_label",
        "prompt_labels",
        "refusal_reward_by_label",
        "refusal_reward_detector",
        "generation_weights",
        "stratify_by_label",
        "refusal_reward_baseline",
        "ptx_coef",
        "ptx_dataset_name",
        "ptx_batch_size",
    )
    assert not set(added_later) & set(plain["settings"])
    labelled = run_identity(build_config(CONFIG_TYPES, {**values, "reward_weights_by_label": {"harmful": [1.0]}}))
    assert labelled["settings"]["reward_weights_by_label"] == {"harmful": [1.0]}
    assert labelled["fingerprint"] != plain["fingerprint"]
    ruled = run_identity(build_config(CONFIG_TYPES, {**values, "refusal_reward_detector": "classifier"}))
    assert ruled["fingerprint"] not in (plain["fingerprint"], labelled["fingerprint"])
    folded = run_identity(build_config(CONFIG_TYPES, {**values, "generation_weights": "merged"}))
    assert folded["fingerprint"] not in (plain["fingerprint"], labelled["fingerprint"], ruled["fingerprint"])
    stratified = run_identity(build_config(CONFIG_TYPES, {**values, "stratify_by_label": True}))
    assert stratified["fingerprint"] not in (plain["fingerprint"], folded["fingerprint"])
    ptx = run_identity(build_config(CONFIG_TYPES, {**values, "ptx_coef": 1.0, "ptx_dataset_name": "demo"}))
    assert ptx["fingerprint"] not in (plain["fingerprint"], stratified["fingerprint"])
    unbaselined = run_identity(build_config(CONFIG_TYPES, {**values, "refusal_reward_baseline": "none"}))
    assert unbaselined["fingerprint"] not in (plain["fingerprint"], ptx["fingerprint"])


def test_an_evaluation_setting_added_later_changes_no_identity_at_its_default():
    from alignment.evaluate.config import CONFIG_TYPES

    values = {"policies": ["sft=runs/sft"], "reward_model_paths": ["rm"]}
    plain = run_identity(build_config(CONFIG_TYPES, values))
    assert "second_refusal_detector" not in plain["settings"]
    same = run_identity(build_config(CONFIG_TYPES, {**values, "second_refusal_detector": "phrase"}))
    assert same["fingerprint"] == plain["fingerprint"]
    off = run_identity(build_config(CONFIG_TYPES, {**values, "second_refusal_detector": "none"}))
    assert off["settings"]["second_refusal_detector"] == "none" and off["fingerprint"] != plain["fingerprint"]


def test_bf16_auto_is_the_same_run_as_what_this_machine_makes_of_it(monkeypatch):
    """``bf16: auto`` is recorded as the choice it resolves to here, so a finished run of that choice is not re-run."""
    values = {"dataset_name": "demo", "output_dir": "runs/x"}
    for native in (True, False):
        monkeypatch.setattr(identity, "resolve_bf16", lambda choice, cpu=False, native=native: native)
        auto = run_identity(build_config(sft.CONFIG_TYPES, {**values, "bf16": "auto"}))
        assert auto["settings"]["bf16"] is native
        explicit = run_identity(build_config(sft.CONFIG_TYPES, {**values, "bf16": native}))
        assert auto["fingerprint"] == explicit["fingerprint"]
