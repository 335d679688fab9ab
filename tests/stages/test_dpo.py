"""DPO on a tiny random model: the real code paths (implicit rewards, K-ranked groups, resume) in seconds."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import alignment.training.loop as loop_module
from alignment import dpo, sft
from alignment.core.checkpointing import TrainingInterrupted
from alignment.core.config_parsing import build_config
from alignment.core.tracking import read_log
from alignment.data.load import load_records
from alignment.modeling.load import load_causal_lm
from alignment.modeling.target_logits import output_head
from alignment.modeling.tokenizer import load_tokenizer
from tests.helpers import interrupt_after


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("dpo_sft")
    sft.train(
        build_config(
            sft.CONFIG_TYPES,
            {
                "model_name_or_path": str(tiny_llama_dir),
                "dataset_name": "demo",
                "max_samples": 8,
                "max_steps": 1,
                "per_device_train_batch_size": 4,
                "max_length": 128,
                "save_steps": 0,
                "output_dir": str(out),
            },
        )
    )
    return out


def dpo_config(sft_dir, out, **overrides):
    values = {
        "model_name_or_path": str(sft_dir),
        "dataset_name": "demo",
        "max_samples": 8,
        "eval_split_size": 4,
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_length": 128,
        "num_train_epochs": 4,
        "learning_rate": 5e-3,
        "save_steps": 2,
    }
    values.update(overrides)
    return build_config(dpo.CONFIG_TYPES, values)


def test_dpo_starts_at_ln2_learns_the_preferences_and_saves_a_loadable_policy(sft_dir, tmp_path):
    metrics = dpo.train(dpo_config(sft_dir, tmp_path))
    rows = read_log(tmp_path)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    # Step 0: the policy is the reference, every implicit reward is 0 and the loss is ln 2 exactly.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert losses[-1] < losses[0] - 0.05, losses
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {"eval_accuracy", "eval_accuracy_ci_low", "eval_reward_chosen", "pairs_per_second"} <= set(saved)
    assert metrics["num_train_records"] == 8 and (tmp_path / "DONE").is_file()
    # The stage directory loads back as a policy (SFT adapter merged under the DPO one) that differs from SFT.
    cfg = dpo_config(sft_dir, tmp_path)
    policy = load_causal_lm(
        build_config(dpo.CONFIG_TYPES, {"model_name_or_path": str(tmp_path)}).model,
        cfg.lora,
        cfg.quant,
        trainable=False,
    )
    start = load_causal_lm(cfg.model, cfg.lora, cfg.quant, trainable=False)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    assert not torch.allclose(policy(input_ids=ids).logits, start(input_ids=ids).logits)


def test_k_ranked_groups_use_all_their_pairs_and_packing_changes_no_log_prob(sft_dir, tmp_path):
    cfg = dpo_config(sft_dir, tmp_path, max_samples=400)
    tokenizer = load_tokenizer(cfg.model)
    ranked = [r for r in load_records(cfg.data, "comparison").records if len(r.responses) == 3]
    examples, _ = dpo.tokenize_comparisons(tokenizer, ranked[:2], 128)
    model = load_causal_lm(cfg.model, cfg.lora, cfg.quant, trainable=True, dropout=False)
    padded = dpo.PreferenceCollator(tokenizer.pad_token_id, padding_free=False)(examples)
    packed = dpo.PreferenceCollator(tokenizer.pad_token_id, padding_free=True)(examples)
    assert padded["group_ids"].tolist() == [0, 0, 0, 1, 1, 1] and padded["ranks"].tolist() == [0, 1, 2] * 2
    with torch.no_grad():
        logps = dpo.response_logps(model, output_head(model), padded)
        torch.testing.assert_close(dpo.response_logps(model, output_head(model), packed), logps, atol=1e-4, rtol=0)
        torch.testing.assert_close(dpo.response_logps(model, None, padded), logps, atol=1e-4, rtol=0)
    assert (logps < 0).all()
    # Against itself as the reference, each group of three gives three pairs and the loss ln 2.
    with_reference = dpo.with_reference_logps(model, output_head(model), examples, dpo.PreferenceCollator(0, True), 4)
    spec = dpo.dpo_loop_spec(dpo.PreferenceCollator(tokenizer.pad_token_id, True), output_head(model), 0.1)
    loss_sum, stats = spec.loss_fn(model, spec.collate_fn(with_reference))
    assert stats["n_pairs"] == 6 and loss_sum.item() == pytest.approx(2 * math.log(2), abs=1e-4)


def test_an_interrupted_dpo_run_resumes_where_it_stopped(sft_dir, tmp_path, monkeypatch):
    reference_dir = tmp_path / "reference"
    dpo.train(dpo_config(sft_dir, reference_dir))
    resumed_dir = tmp_path / "resumed"
    monkeypatch.setattr(loop_module, "GracefulInterrupt", interrupt_after(3))
    with pytest.raises(TrainingInterrupted):
        dpo.train(dpo_config(sft_dir, resumed_dir))
    monkeypatch.undo()
    dpo.train(dpo_config(sft_dir, resumed_dir, resume=True))
    expected = [r["train/loss"] for r in read_log(reference_dir) if "train/loss" in r]
    resumed = [r["train/loss"] for r in read_log(resumed_dir) if "train/loss" in r]
    assert resumed == pytest.approx(expected, abs=1e-4)


def test_the_reference_pass_is_charged_to_the_training_budget(sft_dir, tmp_path, monkeypatch):
    """Equal compute: DPO's up-front reference pass is training compute, as PPO's reference passes in its rollouts."""
    original = dpo.with_reference_logps
    calls = []

    def slow_reference(*args, **kwargs):  # the training pairs' pass takes 3 s; the held-out pairs' pass is free
        result = original(*args, **kwargs)
        calls.append(len(args[2]))
        if len(calls) == 1:
            time.sleep(3.0)
        return result

    monkeypatch.setattr(dpo, "with_reference_logps", slow_reference)
    metrics = dpo.train(dpo_config(sft_dir, tmp_path, max_train_minutes=3.05 / 60))  # 3.05 s
    assert calls[0] == 8 and metrics["budget_seconds_spent"] >= 3.0 + metrics["train_seconds"] - 1e-6
    assert metrics["budget_stopped"] is True and metrics["steps"] < 8  # 8 steps without the budget
