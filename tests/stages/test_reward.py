"""Reward stage: code paths on tiny models (fast), held-out accuracy on HH-RLHF with the embedded default (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from alignment import reward
from alignment.core.config_parsing import build_config
from alignment.modeling.attention import supports_shared_prefixes
from alignment.modeling.scoring import load_reward_scorer
from data_schemas.records import Comparison, Message


def reward_config(model_dir, out, **overrides):
    values = {
        "model_name_or_path": str(model_dir),
        "dataset_name": "demo",
        "max_samples": 12,
        "eval_split_size": 6,
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_length": 160,
        "max_steps": 2,
        "save_steps": 0,
        "learning_rate": 1e-3,
    }
    values.update(overrides)
    return build_config(reward.CONFIG_TYPES, values)


@pytest.fixture(scope="module")
def tiny_reward_dir(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    reward.train(reward_config(tiny_llama_dir, out))
    return out


def test_outputs_metrics_and_saved_statistics(tiny_reward_dir):
    metrics = json.loads((tiny_reward_dir / "metrics.json").read_text())
    for key in ("eval_accuracy", "eval_loss", "pairs_per_second", "num_pairs", "eval_accuracy_ci_low"):
        assert key in metrics
    assert metrics["eval_accuracy_ci_low"] <= metrics["eval_accuracy"] <= metrics["eval_accuracy_ci_high"]
    stats = json.loads((tiny_reward_dir / "reward_stats.json").read_text())
    assert stats["std"] > 0
    for path in ("adapter/adapter_config.json", "tokenizer", "base_model.json", "DONE"):
        assert (tiny_reward_dir / path).exists(), path


def test_scorer_reloads_the_trained_head_and_normalises(tiny_reward_dir, tiny_llama_dir):
    scorer = load_reward_scorer(tiny_reward_dir)
    prompts = [(Message("user", "How do I boil an egg?"),)] * 2
    responses = ["Put it in boiling water for about nine minutes, then cool it in cold water.", "Look it up."]
    raw = scorer.score(prompts, responses)
    again = load_reward_scorer(tiny_reward_dir).score(prompts, responses)
    assert raw.shape == (2,) and torch.allclose(raw, again)  # the trained head was saved, not re-initialised
    normalised = scorer.score(prompts, responses, normalize=True)
    assert torch.allclose(normalised, (raw - scorer.stats.mean) / scorer.stats.std, atol=1e-5)


def test_eval_only_on_another_format(tiny_reward_dir, shared_data, tmp_path):
    oasst = shared_data / "oasst1" / "en_100_tree.jsonl"
    if not oasst.is_file():
        pytest.skip(f"{oasst} not present")
    cfg = reward_config(
        tiny_reward_dir,
        tmp_path,
        dataset_name=str(oasst),
        eval_only=True,
        max_samples=6,
        eval_split_size=0,
        max_length=256,
    )
    metrics = reward.train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["num_pairs"] == metrics["num_pairs"] > 6  # K-ranked groups: more pairs than records
    assert 0.0 <= saved["eval_accuracy"] <= 1.0 and "eval_loss" in saved
    assert not (tmp_path / "adapter").exists()  # evaluation only: nothing trained or saved


def test_encoder_reward_model_trains_and_scores_through_the_same_code(tiny_bert_dir, tmp_path):
    metrics = reward.train(reward_config(tiny_bert_dir, tmp_path, max_steps=3))
    assert metrics["steps"] == 3
    scorer = load_reward_scorer(tmp_path)
    scores = scorer.score([(Message("user", "Say hi"),)], ["Hi there!"])
    assert scores.shape == (1,) and torch.isfinite(scores).all()
    # A policy's prompt + response can be longer than the encoder's 128 positions: cut from the left, not a crash.
    assert scorer.max_length == 128
    long_prompt = (Message("user", "Tell me about the sea. " * 60),)
    long_scores = scorer.score([long_prompt, long_prompt], ["It is salty. " * 40, "No."])
    assert long_scores.shape == (2,) and torch.isfinite(long_scores).all()


def test_packed_batches_give_the_padded_rewards_loss_and_gradients(tiny_llama_dir, tiny_bert_dir, tmp_path):
    """Padding-free reward batches (several responses per row; each prompt computed once for its responses) change
    no reward, loss or gradient."""
    from alignment.data.load import load_records
    from alignment.modeling.load import load_reward_model
    from alignment.modeling.tokenizer import load_tokenizer

    cfg = reward_config(tiny_llama_dir, tmp_path, max_samples=40)
    records = load_records(cfg.data, "comparison").records
    long_one = Comparison(
        (Message("user", "Tell me about the sea. " * 20),), ("The sea is large and salty. " * 8, "No.")
    )  # long enough that the short responses share its row's length
    comparisons = [*records[:4], next(r for r in records if len(r.responses) == 3), long_one]  # K = 2 and K = 3
    tokenizer = load_tokenizer(cfg.model)
    model = load_reward_model(cfg.model, cfg.lora, cfg.quant)
    head = reward.score_head(model)
    results = {}
    assert supports_shared_prefixes(model)
    for layout in ("padded", "rows", "flat", "shared"):
        spec = reward.reward_loop_spec(
            tokenizer,
            160,
            0.0,
            0.0,
            head if layout != "padded" else None,
            flat_rows=layout in ("flat", "shared"),
            share_prompts=layout == "shared",
        )
        batch = spec.collate_fn(comparisons)
        assert ("position_ids" in batch) is (layout != "padded")
        assert ("cu_seq_lens" in batch) is (layout in ("flat", "shared"))
        model.zero_grad()
        loss, stats = spec.loss_fn(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results[layout] = (float(loss.detach()), stats, grads, spec.tokens_fn(batch), batch["input_ids"].numel())
    padded = results["padded"]
    for layout in ("rows", "flat", "shared"):
        packed = results[layout]
        assert packed[0] == pytest.approx(padded[0], abs=1e-5), layout
        assert packed[1]["reward_sum"] == pytest.approx(padded[1]["reward_sum"], abs=1e-4), layout
        assert packed[1]["n_correct"] == padded[1]["n_correct"]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(packed[2], padded[2])), layout
    assert results["flat"][3] == results["rows"][3] == padded[3]  # tokens: every response's own
    assert results["flat"][4] == results["flat"][3] < results["rows"][4] < padded[4]  # positions computed
    # Each prompt once: fewer positions than the responses' tokens, by at least the K - 1 repeats of the long prompt.
    long_prompt = len(tokenizer(comparisons[-1].prompt[0].content).input_ids)
    assert results["shared"][4] == results["shared"][3] <= results["flat"][3] - long_prompt
    # An encoder pools its own way: it has no per-position score head, so its batches stay padded.
    bert = load_reward_model(reward_config(tiny_bert_dir, tmp_path).model, cfg.lora, cfg.quant)
    assert reward.score_head(bert) is None


def test_loss_falls_on_a_learnable_signal(tiny_llama_dir, tmp_path):
    from alignment.core.tracking import read_log

    reward.train(
        reward_config(tiny_llama_dir, tmp_path, max_samples=8, eval_split_size=0, max_steps=12, learning_rate=3e-3)
    )
    losses = [row["train/loss"] for row in read_log(tmp_path) if "train/loss" in row]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


@pytest.mark.slow
def test_embedded_default_beats_chance_on_held_out_hh_rlhf(shared_data, tmp_path):
    """LoRA reward model on HH-RLHF helpful pairs: held-out accuracy clearly above 0.5 (95% CI above 0.5).

    Measured 2026-11-23 (2-core CPU): 929 training pairs, 117 steps, 40 min; accuracy 0.595 [0.526, 0.661] on 200.
    """
    data = shared_data / "hh-rlhf" / "helpful-online.jsonl.gz"
    if not data.is_file():
        pytest.skip(f"{data} not present")
    cfg = reward_config(
        "smollm2-135m-instruct",
        tmp_path,
        dataset_name=str(data),
        invalid_records="skip",
        max_samples=1000,
        eval_split_size=200,
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        max_length=256,
        learning_rate=3e-4,
        lora_r=16,
        lora_alpha=32,
    )
    metrics = reward.train(cfg)
    print(json.dumps(metrics, indent=1))  # the README quotes these figures
    assert metrics["eval_accuracy_ci_low"] > 0.5, metrics
