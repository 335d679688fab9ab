"""FSDP on the CPU: ``torchrun --nproc_per_node 2`` (gloo) with ``fsdp: true`` on a tiny random Llama.

accelerate never selects FSDP on a CPU-only machine (a launcher config alone would silently run DDP here), so the
stages shard with PyTorch's own ``fully_shard`` (``alignment.core.sharding``). Every test first checks that the
parameters really were sharded (each rank stores about half of them), then that sharding changed nothing: per-step
losses, gradient norms and final weights equal 1 process with twice the batch, as under DDP; the saved output is
whole and loads as an unsharded run's does; a run killed mid-way (kill -9) resumes from its checkpoint under FSDP to
the weights of the run that was never interrupted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment import dpo, reward, sft
from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
from alignment.core.tracking import read_log
from tests.stages.distributed_helpers import (
    COMMON,
    LOSS_RTOL,
    PER_DEVICE_BATCH,
    WEIGHT_TOL,
    assert_ranks_agree,
    assert_same_metrics,
    assert_same_steps,
    assert_same_tensors,
    assert_written_once,
    ppo_values,
    read_rank_holding,
    torchrun,
    train_in_process,
)

ADAPTER = Path("adapter") / "adapter_model.safetensors"
FULL_WEIGHTS = Path("model") / "model.safetensors"


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, tiny_llama_dir) -> Path:
    """SFT (LoRA and full fine-tuning) and reward: 1 process x batch 4 here, 2 FSDP processes x batch 2."""
    root = tmp_path_factory.mktemp("fsdp")
    base = {**COMMON, "model_name_or_path": str(tiny_llama_dir), "per_device_eval_batch_size": PER_DEVICE_BATCH}
    sft_runs = {"lora": {}, "full": {"use_lora": False}}
    for tag, extra in sft_runs.items():
        train_in_process(
            sft,
            {
                **base,
                **extra,
                "per_device_train_batch_size": 2 * PER_DEVICE_BATCH,
                "output_dir": str(root / f"one_sft_{tag}"),
            },
        )
    reward_runs = {"reward": {}, "reward_full": {"use_lora": False}}
    for name, extra in {**reward_runs, "dpo": {}}.items():
        module = dpo if name == "dpo" else reward
        batch = {"per_device_train_batch_size": 2 * PER_DEVICE_BATCH}
        train_in_process(module, {**base, **extra, **batch, "output_dir": str(root / f"one_{name}")})
    sharded = {**base, "fsdp": True, "per_device_train_batch_size": PER_DEVICE_BATCH}
    torchrun(
        "sft",
        [{**sharded, **extra, "output_dir": str(root / f"two_sft_{tag}")} for tag, extra in sft_runs.items()],
        root / "dump",
    )
    torchrun(
        "reward",
        [{**sharded, **extra, "output_dir": str(root / f"two_{name}")} for name, extra in reward_runs.items()],
        root / "dump",
    )
    # DPO's reference pass runs on the sharded model before training (and leaves its root gathered).
    torchrun("dpo", {**sharded, "output_dir": str(root / "two_dpo")}, root / "dump")
    return root


def assert_sharded(dump: Path) -> None:
    """Both ranks held an FSDP module storing about half of the parameter elements (not a replica)."""
    for rank in (0, 1):
        held = read_rank_holding(dump, rank)
        assert held["sharded"], f"rank {rank} did not hold a sharded model"
        assert 0.45 < held["local_fraction"] < 0.55, f"rank {rank} stores {held['local_fraction']:.0%} of the model"


@pytest.mark.parametrize("tag", ["lora", "full"])
def test_fsdp_sft_matches_one_process_with_twice_the_batch(fsdp_runs, tag):
    one, two = fsdp_runs / f"one_sft_{tag}", fsdp_runs / f"two_sft_{tag}"
    assert_sharded(fsdp_runs / "dump" / two.name)
    assert_same_steps(one, two, ("train/loss", "train/grad_norm"))
    final_one, final_two = read_log(one)[-1], read_log(two)[-1]
    for key in ("eval/loss", "eval/loss_before"):  # the held-out loss after training runs on the sharded model
        assert final_two[key] == pytest.approx(final_one[key], rel=LOSS_RTOL)
    weights = ADAPTER if tag == "lora" else FULL_WEIGHTS
    assert_same_tensors(load_file(one / weights), load_file(two / weights), f"SFT {tag} (saved)", **WEIGHT_TOL)
    assert_ranks_agree(fsdp_runs / "dump" / two.name)


@pytest.mark.parametrize("name", ["reward", "reward_full"])
def test_fsdp_reward_matches_one_process_with_twice_the_batch(fsdp_runs, name):
    one, two = fsdp_runs / f"one_{name}", fsdp_runs / f"two_{name}"
    assert_sharded(fsdp_runs / "dump" / two.name)
    assert_same_steps(one, two, ("train/loss", "train/grad_norm", "train/n_pairs", "train/n_correct"))
    assert_same_metrics(one, two, ("eval_loss", "eval_accuracy", "reward_mean", "reward_std"))
    # LoRA: the adapters and the score head (a module peft saves whole); full: every weight. Gathered from shards.
    weights = ADAPTER if name == "reward" else FULL_WEIGHTS
    saved = load_file(two / weights)
    assert any("score" in key for key in saved), sorted(saved)
    assert_same_tensors(load_file(one / weights), saved, f"{name} (saved)", **WEIGHT_TOL)
    assert_ranks_agree(fsdp_runs / "dump" / two.name)


def test_fsdp_dpo_matches_one_process_with_twice_the_batch(fsdp_runs):
    one, two = fsdp_runs / "one_dpo", fsdp_runs / "two_dpo"
    assert_sharded(fsdp_runs / "dump" / two.name)
    assert_same_steps(one, two, ("train/loss", "train/grad_norm", "train/n_pairs", "train/n_correct"))
    assert_same_metrics(one, two, ("eval_loss", "eval_accuracy", "eval_reward_chosen", "eval_reward_rejected"))
    assert_same_tensors(load_file(one / ADAPTER), load_file(two / ADAPTER), "DPO LoRA (saved)", **WEIGHT_TOL)
    assert_ranks_agree(fsdp_runs / "dump" / two.name)


def test_fsdp_outputs_are_written_once_and_load_unsharded(fsdp_runs):
    from alignment.modeling.load import load_causal_lm

    for name in ("two_sft_lora", "two_sft_full", "two_reward", "two_reward_full", "two_dpo"):
        assert_written_once(fsdp_runs / name, checkpoint_steps=[2])
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    logits = {}
    for name in ("one_sft_lora", "two_sft_lora", "two_sft_full", "one_sft_full"):
        model = load_causal_lm(
            ModelConfig(model_name_or_path=str(fsdp_runs / name)),
            LoraConfig(use_lora=False),
            QuantConfig(),
            trainable=False,
            device="cpu",
        )
        with torch.no_grad():
            logits[name] = model(input_ids=ids).logits
    for tag in ("lora", "full"):
        torch.testing.assert_close(logits[f"two_sft_{tag}"], logits[f"one_sft_{tag}"], rtol=1e-3, atol=1e-4)
    assert not torch.allclose(logits["two_sft_lora"], logits["two_sft_full"])  # two different trainings


def test_fsdp_run_killed_mid_way_resumes_sharded_to_the_uninterrupted_weights(fsdp_runs, tmp_path, tiny_llama_dir):
    """kill -9 of both ranks right after step 3's update (checkpoint at step 2); resumed under FSDP, it must end
    on the weights of the uninterrupted FSDP run (4 steps, as the killed one)."""
    base = {
        **COMMON,
        "model_name_or_path": str(tiny_llama_dir),
        "per_device_eval_batch_size": PER_DEVICE_BATCH,
        "per_device_train_batch_size": PER_DEVICE_BATCH,
        "fsdp": True,
        "max_steps": 4,
        "eval_split_size": 0,
    }
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    torchrun("sft", {**base, "output_dir": str(straight)}, tmp_path / "dump")
    torchrun(
        "sft",
        {**base, "output_dir": str(killed)},
        tmp_path / "dump",
        env={"ALIGNMENT_FAULT": "train_step:3"},
        expect_failure=True,
    )
    assert not (killed / "DONE").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-2"]
    optimizer_state = torch.load(killed / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert optimizer_state["state"], "the checkpoint holds no optimizer state"
    assert all(isinstance(key, str) for key in optimizer_state["state"])  # keyed by name, whole tensors
    torchrun("sft", {**base, "output_dir": str(killed), "resume": True}, tmp_path / "dump")
    assert (killed / "DONE").is_file()
    assert [r["step"] for r in read_log(killed) if "train/loss" in r] == [1, 2, 3, 4]
    assert_same_tensors(
        load_file(straight / ADAPTER), load_file(killed / ADAPTER), "resumed vs uninterrupted", rtol=1e-5, atol=1e-7
    )
    shutil.rmtree(tmp_path / "dump", ignore_errors=True)


# ----------------------------------------------------------------------------------------------- PPO


def _ppo_values(ppo_root: Path) -> dict:
    """PPO from the FSDP SFT and reward outputs (``ppo_root`` is ``<fsdp_runs>/ppo``)."""
    return ppo_values(ppo_root.parent / "two_sft_lora", ppo_root.parent / "two_reward")


@pytest.fixture(scope="module")
def ppo_runs(fsdp_runs) -> Path:
    """PPO under DDP, FSDP with per-layer gathering for generation, and FSDP with the blocks gathered once per
    rollout (:func:`_ppo_values`)."""
    root = fsdp_runs / "ppo"
    values = _ppo_values(root)
    runs = [
        {**values, "output_dir": str(root / "ddp")},
        {**values, "fsdp": True, "output_dir": str(root / "fsdp")},
        {**values, "fsdp": True, "fsdp_generation": "full", "output_dir": str(root / "fsdp_full")},
    ]
    torchrun("ppo", runs, root / "dump")
    return root


@pytest.mark.parametrize("name", ["fsdp", "fsdp_full"])
def test_fsdp_ppo_is_sharded_starts_at_kl_zero_and_ends_identical_on_every_rank(ppo_runs, name):
    dump = ppo_runs / "dump" / name
    for rank in (0, 1):
        held = read_rank_holding(dump, rank)
        assert held["sharded"], f"rank {rank} did not hold sharded blocks"
        # The blocks are halved; the embeddings (tied LM head), final norm and scalar heads stay whole (on this tiny
        # model the 49,152 x 64 embedding is 97% of the parameters).
        assert 0.45 < held["sharded_local_fraction"] < 0.55, held
        assert held["local_fraction"] < 0.99, held
    rows = read_log(ppo_runs / name)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert abs(rows[0]["objective/kl"]) < 1e-3  # the policy starts as the SFT adapter, gathered or not
    assert_ranks_agree(dump)
    saved = load_file(ppo_runs / name / ADAPTER)
    rank1 = load_file(dump / "rank1.safetensors")
    policy = {k.removeprefix("model.").replace(".policy.", "."): v for k, v in rank1.items() if ".policy." in k}
    assert_same_tensors(policy, saved, "saved policy adapter vs rank 1", rtol=0.0, atol=0.0)
    assert_written_once(ppo_runs / name, checkpoint_steps=[1, 2])


def test_fsdp_ppo_learns_what_ddp_learns(ppo_runs):
    """Same prompts, seeds and weights: the sharded runs sample the same tokens and take the same updates as DDP
    (up to the rounding of a reduce-scatter instead of an all-reduce), and the two generation modes agree."""
    ddp, per_layer, full = (read_log(ppo_runs / name) for name in ("ddp", "fsdp", "fsdp_full"))
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "val/response_length"):
        expected = [r[key] for r in ddp]
        assert [r[key] for r in per_layer] == pytest.approx(expected, rel=1e-3, abs=1e-5), key
        assert [r[key] for r in full] == pytest.approx(expected, rel=1e-3, abs=1e-5), key
    weights = {name: load_file(ppo_runs / name / ADAPTER) for name in ("ddp", "fsdp", "fsdp_full")}
    assert_same_tensors(weights["ddp"], weights["fsdp"], "FSDP vs DDP policy", rtol=1e-3, atol=1e-5)
    assert_same_tensors(weights["fsdp"], weights["fsdp_full"], "full vs per-layer gathering", rtol=1e-3, atol=1e-5)


def test_fsdp_ppo_killed_mid_way_resumes_sharded_to_the_uninterrupted_weights(ppo_runs, tmp_path):
    """kill -9 of both ranks after update 3 (checkpoints at 1 and 2); resumed under FSDP, the run ends on the
    uninterrupted FSDP run's weights, KL controller and logged statistics."""
    reference = ppo_runs / "fsdp"
    killed = tmp_path / "killed"
    settings = _ppo_values(ppo_runs) | {"fsdp": True, "output_dir": str(killed)}
    torchrun("ppo", settings, tmp_path / "dump", env={"ALIGNMENT_FAULT": "ppo_update:3"}, expect_failure=True)
    assert not (killed / "DONE").exists()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    torchrun("ppo", settings | {"resume": True}, tmp_path / "dump")
    assert (killed / "DONE").is_file()
    rows, expected = read_log(killed), read_log(reference)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("objective/scores", "objective/kl", "loss/policy_avg"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in expected], rel=1e-5, abs=1e-7), key
    assert_same_tensors(
        load_file(reference / ADAPTER), load_file(killed / ADAPTER), "resumed vs uninterrupted", rtol=1e-5, atol=1e-7
    )
