"""SFT stage: code paths on a tiny model (fast), learning on the embedded default (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from alignment import sft
from alignment.core.config_parsing import build_config
from alignment.core.tracking import read_log
from alignment.modeling.load import load_causal_lm
from alignment.modeling.target_logits import output_head
from tests.helpers import interrupt_after


def sft_config(model_dir, out, **overrides):
    values = {
        "model_name_or_path": str(model_dir),
        "dataset_name": "demo",
        "max_samples": 12,
        "eval_split_size": 4,
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_length": 128,
        "max_steps": 2,
        "save_steps": 0,
    }
    values.update(overrides)
    return build_config(sft.CONFIG_TYPES, values)


def test_outputs_and_metrics_follow_the_stage_contract(tiny_llama_dir, tmp_path):
    metrics = sft.train(sft_config(tiny_llama_dir, tmp_path, merge_adapter=True))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "train_loss",
        "eval_loss_before",
        "eval_loss",
        "train_tokens_per_second",
        "num_examples",
        "num_truncated",
    ):
        assert key in saved
    assert metrics["num_examples"] == 12 and metrics["num_eval_examples"] == 4  # max_samples counts training records
    for path in (
        "adapter/adapter_config.json",
        "tokenizer",
        "config.yaml",
        "base_model.json",
        "log.jsonl",
        "DONE",
        "merged",
    ):
        assert (tmp_path / path).exists(), path
    assert len(read_log(tmp_path)) >= 2
    # The stage directory loads back onto its base.
    model = load_causal_lm(
        build_config(sft.CONFIG_TYPES, {"model_name_or_path": str(tmp_path)}).model,
        sft_config(tiny_llama_dir, tmp_path).lora,
        sft_config(tiny_llama_dir, tmp_path).quant,
        trainable=False,
    )
    assert model is not None


@pytest.mark.parametrize("padding_free", [True, False])
def test_logits_at_target_positions_only_give_the_full_loss_and_gradients(tiny_llama_dir, tmp_path, padding_free):
    from alignment.data.load import load_records
    from alignment.modeling.tokenizer import load_tokenizer

    cfg = sft_config(tiny_llama_dir, tmp_path)
    tokenizer = load_tokenizer(cfg.model)
    examples, _, _ = sft.tokenize_demonstrations(
        tokenizer, load_records(cfg.data, "demonstration").records[:4], 128, "all"
    )
    model = load_causal_lm(cfg.model, cfg.lora, cfg.quant, trainable=True)
    head = output_head(model)
    assert head is not None
    results = []
    for target_only in (False, True):
        spec = sft.sft_loop_spec(tokenizer, padding_free, head if target_only else None)
        model.zero_grad()
        loss, _ = spec.loss_fn(model, spec.collate_fn(examples))
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (full, full_grads), (targets, target_grads) = results
    assert targets == pytest.approx(full, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(target_grads, full_grads))


def test_flat_packed_batches_give_the_padded_loss_and_gradients(tiny_llama_dir, tmp_path):
    """One row without filler and per-sequence attention (``sdpa_varlen``) computes what padding does, and so does
    computing the demonstrations' common opening once."""
    from alignment.data.load import load_records
    from alignment.data.packing import common_prefix_length
    from alignment.modeling.attention import SDPA_VARLEN, supports_flat_packing
    from alignment.modeling.tokenizer import load_tokenizer

    cfg = sft_config(tiny_llama_dir, tmp_path)
    tokenizer = load_tokenizer(cfg.model)
    examples, _, _ = sft.tokenize_demonstrations(
        tokenizer, load_records(cfg.data, "demonstration").records[:6], 128, "all"
    )
    model = load_causal_lm(cfg.model, cfg.lora, cfg.quant, trainable=True)
    assert model.config._attn_implementation == SDPA_VARLEN and supports_flat_packing(model)
    results = {}
    for layout in ("padded", "rows", "flat", "shared"):
        spec = sft.sft_loop_spec(
            tokenizer,
            layout != "padded",
            output_head(model),
            flat_rows=layout in ("flat", "shared"),
            share_prefixes=layout == "shared",
        )
        batch = spec.collate_fn(examples)
        model.zero_grad()
        loss, _ = spec.loss_fn(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results[layout] = (float(loss.detach()), grads, batch["input_ids"].numel(), sft.count_tokens(batch))
    assert results["flat"][2] == sum(len(e) for e in examples) < results["rows"][2]  # no filler
    # Shared prefixes: the demonstrations' common opening (the template's system turn) computed once, the same
    # tokens and learned tokens counted.
    opening = common_prefix_length([e.input_ids for e in examples])
    assert opening >= 8 and results["shared"][2] == results["flat"][2] - (len(examples) - 1) * opening
    assert results["shared"][3] == results["flat"][3] == results["padded"][3]
    for layout in ("rows", "flat", "shared"):
        assert results[layout][0] == pytest.approx(results["padded"][0], rel=1e-5), layout
        grads, padded = (torch.cat([g.flatten() for g in results[k][1]]) for k in (layout, "padded"))
        assert padded.abs().max() > 0 and float((grads - padded).abs().max() / padded.abs().max()) < 1e-5, layout


def test_too_long_prompts_are_reported_not_trained_on(tiny_llama_dir, tmp_path):
    def demo(question):
        return json.dumps(
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "Sure."}]}
        )

    data = tmp_path / "demos.jsonl"
    data.write_text("\n".join([demo("Hi?"), demo("Hello?"), demo("word " * 200), demo("Hey?")]) + "\n")
    metrics = sft.train(
        sft_config(tiny_llama_dir, tmp_path / "out", dataset_name=str(data), eval_split_size=0, max_length=96)
    )
    assert metrics["rejected_by_reason"] == {"prompt_too_long": 1}
    assert metrics["num_examples"] == 3


def test_demonstration_without_assistant_turn_is_an_error_naming_the_line(tiny_llama_dir, tmp_path):
    from data_schemas.errors import RecordError

    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    bad.write_text(good + "\n" + json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2") as info:
        sft.train(sft_config(tiny_llama_dir, tmp_path / "out", dataset_name=str(bad), eval_split_size=0))
    assert "assistant" in str(info.value)


@pytest.mark.parametrize("quant", ["load_in_8bit", "load_in_4bit"])
def test_quantized_lora_completes_steps(tiny_llama_dir, tmp_path, quant):
    metrics = sft.train(
        sft_config(
            tiny_llama_dir, tmp_path, **{quant: True}, max_samples=6, eval_split_size=0, max_steps=1, max_length=64
        )
    )
    assert metrics["steps"] == 1 and metrics["train_loss"] > 0


def test_resume_after_kill_continues_from_the_checkpoint(tiny_llama_dir, tmp_path, monkeypatch):
    import alignment.training.loop as trainer_module
    from alignment.core.checkpointing import TrainingInterrupted

    reference = sft.train(sft_config(tiny_llama_dir, tmp_path / "ref", max_steps=6, save_steps=2, learning_rate=1e-3))

    monkeypatch.setattr(trainer_module, "GracefulInterrupt", interrupt_after(3))
    with pytest.raises(TrainingInterrupted):
        sft.train(sft_config(tiny_llama_dir, tmp_path / "run", max_steps=6, save_steps=2, learning_rate=1e-3))
    monkeypatch.undo()
    resumed = sft.train(
        sft_config(tiny_llama_dir, tmp_path / "run", max_steps=6, save_steps=2, learning_rate=1e-3, resume=True)
    )
    steps = [r["step"] for r in read_log(tmp_path / "run") if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # 1-3 before the kill, 4-6 after: not restarted from zero
    losses = [r["train/loss"] for r in read_log(tmp_path / "run") if "train/loss" in r]
    ref_losses = [r["train/loss"] for r in read_log(tmp_path / "ref") if "train/loss" in r]
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    assert resumed["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-4)


@pytest.mark.slow
def test_embedded_default_learns_lima(shared_data, tmp_path):
    """200 LIMA demonstrations, 1 epoch, LoRA on CPU: held-out loss on 50 others falls."""
    lima = shared_data / "sft" / "lima.json"
    if not lima.is_file():
        pytest.skip(f"{lima} not present")
    cfg = sft_config(
        "smollm2-135m-instruct",
        tmp_path,
        dataset_name=str(lima),
        max_samples=200,
        eval_split_size=50,
        max_steps=-1,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        max_length=384,
        learning_rate=2e-4,
    )
    metrics = sft.train(cfg)
    assert metrics["eval_loss"] < metrics["eval_loss_before"]


def test_a_training_budget_stops_at_a_step_boundary_and_checkpoints_the_seconds_spent(tiny_llama_dir, tmp_path):
    """max_train_minutes: the equal-compute rule. A budget shorter than one step stops after the first step."""
    from alignment.core.checkpointing import newest_checkpoint

    tiny_budget = {"max_steps": 4, "save_steps": 1, "max_train_minutes": 1e-6}
    metrics = sft.train(sft_config(tiny_llama_dir, tmp_path / "budget", **tiny_budget))
    assert metrics["steps"] == 1 and metrics["budget_stopped"] is True
    assert 0 < metrics["budget_seconds_spent"] == pytest.approx(metrics["train_seconds"])
    assert [row["step"] for row in read_log(tmp_path / "budget") if "train/loss" in row] == [1]
    assert (tmp_path / "budget" / "DONE").is_file()

    # The seconds spent travel in the checkpoint (a resume starts its TrainingBudget from them).
    state = json.loads((newest_checkpoint(tmp_path / "budget") / "state.json").read_text())
    assert state["budget_seconds_spent"] == pytest.approx(metrics["budget_seconds_spent"])
    unlimited = sft.train(sft_config(tiny_llama_dir, tmp_path / "unlimited", max_steps=4, save_steps=0))
    assert unlimited["steps"] == 4 and "budget_stopped" not in unlimited


def test_a_negative_training_budget_is_refused():
    with pytest.raises(ValueError, match="max_train_minutes"):
        sft_config("smollm2-135m-instruct", "unused", max_train_minutes=-1)


def test_bf16_on_a_cpu_rounds_each_packed_row_up_to_64_tokens_and_fp32_adds_none(tiny_llama_dir, tmp_path, monkeypatch):
    """CPU bf16 batches come in few lengths (``precision.flat_row_multiple``); fp32 rows hold no filler."""
    import alignment.data.collate as collate

    rows: list[tuple[int, int]] = []  # (multiple asked for, row length)

    def recording(pack):
        def packed_rows(*args, **kwargs):
            packed = pack(*args, **kwargs)
            rows.append((kwargs.get("multiple_of", 1), packed.input_ids.shape[1]))
            return packed

        return packed_rows

    # Rows packed plainly, and with the demonstrations' common openings shared (share_prefixes, the default).
    for name in ("pack_token_rows", "pack_shared_prefixes"):
        monkeypatch.setattr(collate, name, recording(getattr(collate, name)))
    bf16 = sft.train(sft_config(tiny_llama_dir, tmp_path / "bf16", bf16=True))
    assert rows and all(multiple == 64 and length % 64 == 0 for multiple, length in rows)
    rows.clear()
    fp32 = sft.train(sft_config(tiny_llama_dir, tmp_path / "fp32"))
    assert rows and all(multiple == 1 for multiple, _ in rows) and any(length % 64 for _, length in rows)
    assert bf16["num_examples"] == fp32["num_examples"]
    assert abs(bf16["eval_loss"] - fp32["eval_loss"]) < 0.05 * fp32["eval_loss"]  # the filler is learned from nowhere
