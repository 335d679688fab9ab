"""The shared supervised loop on a toy regression: loss falls, checkpoints round-trip, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

from alignment.core.checkpointing import (
    TrainingInterrupted,
    list_checkpoints,
    load_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)
from alignment.core.config import TrainConfig
from alignment.core.config_parsing import build_config
from alignment.core.run import start_run
from alignment.core.tracking import read_log
from alignment.training.batching import micro_batch_indices, stratified_batch_indices
from alignment.training.loop import LoopSpec, train_loop
from tests.helpers import interrupt_after


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)


def make_examples(n: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    xs = torch.randn(n, 4, generator=g)
    return [(x, x @ w + 1.0) for x in xs]


def spec() -> LoopSpec:
    def collate(items):
        return {"x": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items])}

    def loss_fn(model, batch):
        pred = model.linear(batch["x"]).squeeze(-1)
        return ((pred - batch["y"]) ** 2).sum(), {}

    return LoopSpec(
        loss_fn=loss_fn, count_fn=lambda b: len(b["y"]), collate_fn=collate, tokens_fn=lambda b: len(b["y"])
    )


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), learning_rate=0.3, per_device_train_batch_size=4, num_train_epochs=3, save_steps=5
    )
    values.update(overrides)
    return build_config((TrainConfig,), values)


def run_training(tmp_path, **overrides):
    cfg = config(tmp_path, **overrides)
    with start_run(cfg, "toy") as run:
        model = Toy()
        result = train_loop(run, model, make_examples(), spec())
    return model, result


def test_loss_falls_and_log_is_written(tmp_path):
    _, result = run_training(tmp_path)
    assert result.steps == 24  # 32 examples / batch 4 * 3 epochs
    rows = read_log(tmp_path)
    assert len(rows) == 24
    assert rows[-1]["train/loss"] < 0.2 * rows[0]["train/loss"]
    assert (tmp_path / "config.yaml").is_file() and json.loads((tmp_path / "versions.json").read_text())["torch"]


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    big, _ = run_training(tmp_path / "big", per_device_train_batch_size=8, save_steps=0)
    acc, _ = run_training(tmp_path / "acc", per_device_train_batch_size=4, gradient_accumulation_steps=2, save_steps=0)
    # Same examples per optimizer step, loss averaged over the same global count: same updates.
    # (The micro-batch order differs, so compare the end point rather than the path.)
    assert torch.allclose(big.linear.weight, acc.linear.weight, atol=0.05)


def test_checkpoint_round_trip_and_pruning(tmp_path):
    model = Toy()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.linear.weight.sum().backward()
    optimizer.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, extra={"kl_coef": 0.1}, save_total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    other = Toy()
    torch.nn.init.zeros_(other.linear.weight)
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    state = load_checkpoint(newest_checkpoint(tmp_path), model=other, optimizer=other_opt)
    assert state == {"step": 3, "kl_coef": 0.1}
    assert torch.equal(other.linear.weight, model.linear.weight)
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_half_written_checkpoint_is_ignored(tmp_path):
    model = Toy()
    save_checkpoint(tmp_path, 1, model=model)
    (tmp_path / "checkpoints" / ".tmp-checkpoint-2-123").mkdir()
    (tmp_path / "checkpoints" / "checkpoint-3").mkdir()  # no state.json: a crash mid-write of an old layout
    assert newest_checkpoint(tmp_path).name == "checkpoint-1"


def test_interrupt_saves_and_resume_continues_exactly(tmp_path, monkeypatch):
    reference, _ = run_training(tmp_path / "reference")
    reference_rows = read_log(tmp_path / "reference")

    # Interrupt after step 7: the loop must save checkpoint-7 and stop.
    import alignment.training.loop as trainer_module

    monkeypatch.setattr(trainer_module, "GracefulInterrupt", interrupt_after(7))
    with pytest.raises(TrainingInterrupted):
        run_training(tmp_path / "resumed")
    assert newest_checkpoint(tmp_path / "resumed").name == "checkpoint-7"
    monkeypatch.undo()

    resumed, _ = run_training(tmp_path / "resumed", resume=True)
    rows = read_log(tmp_path / "resumed")
    steps = [r["step"] for r in rows]
    assert steps[:7] == list(range(1, 8)) and steps[7] == 8  # continues at step 8, not at 1
    losses = {r["step"]: r["train/loss"] for r in rows}
    for r in reference_rows:
        assert losses[r["step"]] == pytest.approx(r["train/loss"], rel=1e-5)
    assert torch.allclose(resumed.linear.weight, reference.linear.weight, atol=1e-6)


def test_data_order_is_a_function_of_seed_and_epoch():
    a = micro_batch_indices(10, 4, epoch=0, seed=1)
    assert a == micro_batch_indices(10, 4, epoch=0, seed=1)
    assert a != micro_batch_indices(10, 4, epoch=1, seed=1)
    assert sorted(i for b in a for i in b) == list(range(10)) and [len(b) for b in a] == [4, 4, 2]


def test_stratified_batches_hold_every_label_in_its_share():
    """A quarter harmful, a quarter safe, half helpful: every batch of 4 holds one harmful and one safe prompt, where
    a plain shuffle leaves batches with safe prompts and no harmful one."""
    labels = ["helpful", "harmful", "helpful", "safe"] * 25
    labels = [labels[i] for i in torch.randperm(100, generator=torch.Generator().manual_seed(0)).tolist()]
    batches = stratified_batch_indices(labels, 4, epoch=0, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(100))
    for b in batches:
        assert sorted(labels[i] for i in b) == ["harmful", "helpful", "helpful", "safe"], b
    plain = micro_batch_indices(100, 4, epoch=0, seed=1)
    assert any(sorted(labels[i] for i in b) != ["harmful", "helpful", "helpful", "safe"] for b in plain)
    assert batches == stratified_batch_indices(labels, 4, epoch=0, seed=1)
    assert batches != stratified_batch_indices(labels, 4, epoch=1, seed=1)
    # Prompts without labels are one stratum: a seeded shuffle of them all.
    unlabelled = stratified_batch_indices([None] * 10, 4, epoch=0, seed=1)
    assert sorted(i for b in unlabelled for i in b) == list(range(10)) and [len(b) for b in unlabelled] == [4, 4, 2]


def test_training_budget_counts_spent_seconds_including_a_resumed_runs():
    from types import SimpleNamespace

    from alignment.training.budget import TrainingBudget

    one_process = SimpleNamespace(accelerator=SimpleNamespace(num_processes=1), device="cpu")
    unlimited = TrainingBudget(0.0)
    unlimited.spend(1e9)
    assert not unlimited.exhausted(one_process) and unlimited.summary() == {}

    budget = TrainingBudget(1.0)  # 60 s
    budget.spend(59.0)
    assert not budget.exhausted(one_process)
    budget.spend(1.0)
    assert budget.exhausted(one_process)
    assert budget.summary() == {"budget_stopped": True, "budget_seconds_spent": 60.0}
    resumed = TrainingBudget(1.0, **{"spent_seconds": budget.state()["budget_seconds_spent"]})
    assert resumed.exhausted(one_process), "a resumed run must not get a fresh budget"
    assert not TrainingBudget(2.0, 60.0).exhausted(one_process)
