"""PPO on tiny random models: the real code paths (adapters on one base, rollout, update, resume) in seconds."""

from __future__ import annotations

import json
import math

import pytest
import torch

import alignment.ppo as ppo
import alignment.ppo.config as ppo_config_module
import alignment.ppo.loop as ppo_loop_module
import alignment.ppo.policy as ppo_policy
import alignment.ppo.rewards as ppo_rewards
import alignment.ppo.rollout as ppo_rollout
import alignment.ppo.update as ppo_update_module
from alignment import reward, sft
from alignment.core.checkpointing import TrainingInterrupted, newest_checkpoint
from alignment.core.config_parsing import build_config
from alignment.core.tracking import read_log
from alignment.modeling.sequences import SequenceBatch, hidden_states, response_logprobs
from alignment.rl.logprobs import first_eos_mask, logprobs_from_logits
from tests.helpers import interrupt_after

FAST = {"per_device_train_batch_size": 4, "save_steps": 0, "max_length": 128}


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory, tiny_llama_dir):
    """A LoRA SFT output and a LoRA reward output on the same tiny base (one optimizer step each)."""
    root = tmp_path_factory.mktemp("ppo_stages")
    common = {
        "model_name_or_path": str(tiny_llama_dir),
        "dataset_name": "demo",
        "max_samples": 8,
        "max_steps": 1,
        **FAST,
    }
    sft.train(build_config(sft.CONFIG_TYPES, {**common, "output_dir": str(root / "sft")}))
    reward.train(build_config(reward.CONFIG_TYPES, {**common, "output_dir": str(root / "reward")}))
    return root


def ppo_config(stage_dirs, out, **overrides):
    values = {
        "model_name_or_path": str(stage_dirs / "sft"),
        "sft_model_path": str(stage_dirs / "sft"),
        "reward_model_paths": [str(stage_dirs / "reward")],
        "dataset_name": "demo",
        "max_samples": 16,
        "eval_split_size": 2,
        "output_dir": str(out),
        "total_episodes": 12,
        "rollout_batch_size": 4,
        "mini_batch_size": 2,
        "max_new_tokens": 6,
        "eval_prompts": 2,
        "learning_rate": 1e-3,
        "save_steps": 1,
    }
    values.update(overrides)
    return build_config(ppo.CONFIG_TYPES, values)


def test_reference_is_the_sft_policy_and_rollout_logprobs_match_recomputation(stage_dirs, tmp_path):
    cfg = ppo_config(stage_dirs, tmp_path)
    ac, tokenizer, shared = ppo_policy.build_actor_critic(cfg)
    assert set(shared) == {str(stage_dirs / "reward")}, "the reward model shares the base: it rides on it as an adapter"
    from alignment.data.collate import PromptCollator
    from alignment.data.load import load_records

    prompts = load_records(cfg.data, "prompt").records[:3]
    encoded = PromptCollator(tokenizer, 64)(prompts)
    torch.manual_seed(0)
    response_ids, logits = ac.generate(
        encoded["input_ids"], encoded["attention_mask"], ppo_rollout.generation_config(cfg.ppo, tokenizer)
    )
    torch.manual_seed(0)  # without the sampling logits (a recomputing rollout): the same samples, nothing kept
    same_ids, no_logits = ac.generate(
        encoded["input_ids"],
        encoded["attention_mask"],
        ppo_rollout.generation_config(cfg.ppo, tokenizer),
        with_logits=False,
    )
    assert no_logits is None and torch.equal(same_ids, response_ids)
    mask, _ = first_eos_mask(response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    batch = SequenceBatch.build(encoded["input_ids"], encoded["attention_mask"], response_ids, mask)
    sampled = logprobs_from_logits(logits, response_ids, cfg.ppo.temperature)
    with torch.no_grad():
        policy, _ = ac.response_logprobs(batch, response_ids, cfg.ppo.temperature)
        reference, _ = ac.response_logprobs(batch, response_ids, cfg.ppo.temperature, role="reference")
    valid = mask.bool()
    assert (policy - reference)[valid].abs().max() < 1e-5  # KL = 0 at step 0: policy starts as the SFT adapter
    assert (sampled - policy)[valid].abs().max() < 1e-4  # the distribution sampled is the one optimised
    # The reference is the SFT adapter, not the bare base: disabling adapters gives other log-probs.
    from alignment.ppo.adapters import use_adapter

    with torch.no_grad(), use_adapter(ac.model, None):
        bare, _ = response_logprobs(ac._backbone, ac._lm_head, batch, response_ids, cfg.ppo.temperature)
    assert (bare - reference)[valid].abs().max() > 1e-4


def test_ppo_starts_from_an_sft_output_trained_on_top_of_another_at_kl_0(stage_dirs, tmp_path):
    # sft_safety: {model_name_or_path: sft}: its adapter sits on a stage dir, whose adapter the loader merges
    stacked = tmp_path / "sft_safety"
    stacked_cfg = {"model_name_or_path": str(stage_dirs / "sft"), "dataset_name": "demo", "max_samples": 8}
    sft.train(build_config(sft.CONFIG_TYPES, {**stacked_cfg, "max_steps": 1, **FAST, "output_dir": str(stacked)}))
    out = tmp_path / "ppo"
    ppo.train(
        ppo_config(stage_dirs, out, model_name_or_path=str(stacked), sft_model_path=str(stacked), total_episodes=4)
    )
    assert (out / "DONE").is_file() and abs(read_log(out)[0]["objective/kl"]) < 1e-4


def test_padding_free_passes_equal_the_padded_ones(stage_dirs, tmp_path):
    """Packing the sequences (prompts of different lengths, responses cut at different EOS), and computing each
    prompt once for its several samples, changes no output."""
    from alignment.data.collate import PromptCollator
    from alignment.modeling.sequences import pack_sequences
    from data_schemas.records import Message, Prompt

    cfg = ppo_config(stage_dirs, tmp_path)
    ac, tokenizer, _ = ppo_policy.build_actor_critic(cfg)
    questions = ["Hi?", "Why?", "How so?", "And then?", "Explain " + "the tides and the moon " * 12, "Tell me " * 30]
    questions += [questions[1], questions[4], questions[1]]  # samples of one prompt, not next to each other
    prompts = [Prompt((Message("user", q),)) for q in questions]  # the short ones can share rows with the long ones
    encoded = PromptCollator(tokenizer, 128)(prompts)
    torch.manual_seed(0)
    response_ids = torch.randint(10, 200, (9, 7))
    response_ids[[6, 8], :2] = response_ids[1, :2]  # samples that begin alike share those tokens too
    response_mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 4, 7, 2, 5, 6, 3, 3])[:, None]
    batch = SequenceBatch.build(encoded["input_ids"], encoded["attention_mask"], response_ids, response_mask)
    packed = pack_sequences(batch, 7)
    assert packed.input_ids.shape[0] < 9 and packed.input_ids.shape[1] == int(batch.attention_mask.sum(-1).max())
    flat = pack_sequences(batch, 7, flat=True)
    assert flat.input_ids.shape == (1, int(batch.attention_mask.sum())) and ac._flat  # the loader made it varlen
    shared = pack_sequences(batch, 7, flat=True, share_prompts=True)
    prompt_lengths, _ = batch.sequence_lengths()
    repeats = int(prompt_lengths[1] * 2 + prompt_lengths[4]) + 2 * 2  # and the two alike tokens of two samples
    assert shared.input_ids.shape[1] == flat.input_ids.shape[1] - repeats and ac._share_prompts
    outputs = {}
    layouts = {"padded": (False, False, False), "rows": (True, False, False), "flat": (True, True, False)}
    for layout, (ac.padding_free, ac._flat, ac._share_prompts) in {**layouts, "shared": (True, True, True)}.items():
        with torch.no_grad():
            outputs[layout] = (
                ac.response_logprobs(batch, response_ids, 0.7)[0],
                ac.response_logprobs(batch, response_ids, 0.7, role="reference")[0],
                ac.response_values(batch, 7),
                ac.reward_scores(batch),
            )
    for layout in ("rows", "flat", "shared"):
        for padded, packed_out in zip(outputs["padded"], outputs[layout]):
            valid = response_mask if padded.dim() == 2 else torch.ones_like(padded, dtype=torch.bool)
            assert (padded - packed_out)[valid].abs().max() < 1e-4, layout


def test_update_through_the_kept_rollout_graphs_equals_recomputing_them(stage_dirs, tmp_path, monkeypatch):
    """One mini-batch, one epoch: back-propagating through the rollout's critic and (recomputed) policy passes gives
    the same step with one pass fewer each."""
    from alignment.data.load import load_records
    from alignment.ppo.actor_critic import ActorCritic
    from alignment.rl.masked import masked_whiten
    from alignment.rl.ppo_math import gae_advantages, kl_shaped_rewards

    cfg = ppo_config(stage_dirs, tmp_path, rollout_batch_size=4, mini_batch_size=4, ppo_epochs=1)
    ac, tokenizer, shared = ppo_policy.build_actor_critic(cfg)
    rewards = ppo_rewards.build_rewards(cfg, ac, shared)
    prompts = load_records(cfg.data, "prompt").records[:4]
    initial = {k: v.clone() for k, v in ac.state_dict().items()}
    calls = []
    for method in ("response_values", "response_logprobs"):
        original = getattr(ActorCritic, method)
        monkeypatch.setattr(
            ActorCritic,
            method,
            lambda self, *a, _m=method, _f=original, **k: (
                calls.append((_m, k.get("role", "policy"))) or _f(self, *a, **k)
            ),
        )
    results = {}
    for keep in (False, True):
        ac.load_state_dict(initial)
        optimizer = torch.optim.AdamW(ac.trainable_parameters(), lr=1e-2)
        calls.clear()
        torch.manual_seed(0)
        rollout = ppo_rollout.collect_rollout(
            ac,
            rewards,
            prompts,
            tokenizer,
            cfg.ppo,
            ppo_rollout.RolloutPasses(recompute_logprobs=True, keep_policy_graph=keep, keep_value_graph=keep),
        )
        shaped, _ = kl_shaped_rewards(
            rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.response_mask, 0.05
        )
        advantages, returns = gae_advantages(shaped, rollout.values, rollout.response_mask, 1.0, 0.95)
        advantages = masked_whiten(advantages, rollout.response_mask)
        stats = ppo_update_module.ppo_update(ac, optimizer, rollout, advantages, returns, cfg.ppo, True, 1.0)
        assert rollout.values_graph is None and rollout.logprobs_graph is None  # nothing outlives the update
        trained = {n: p.detach().clone() for n, p in ac.named_parameters() if p.requires_grad}
        results[keep] = (trained, stats, list(calls))
    (recomputed, stats_recomputed, calls_recomputed), (kept, stats_kept, calls_kept) = results[False], results[True]
    value, policy = ("response_values", "policy"), ("response_logprobs", "policy")
    assert (calls_recomputed.count(value), calls_recomputed.count(policy)) == (2, 2)
    assert (calls_kept.count(value), calls_kept.count(policy)) == (1, 1)
    for key in ("loss/value_avg", "loss/policy_avg", "policy/entropy_avg"):
        assert stats_kept[key] == pytest.approx(stats_recomputed[key], rel=1e-5, abs=1e-6), key
    assert any(not torch.equal(value, initial[name]) for name, value in kept.items())  # the step moved something
    for name, value in kept.items():  # Adam's step is ~lr = 1e-2 per parameter: a wrong gradient shows at 1e-3
        torch.testing.assert_close(value, recomputed[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_rollout_graphs_are_kept_for_one_mini_batch_unless_checkpointing(
    stage_dirs, tmp_path, monkeypatch, checkpointing
):
    """The rollout runs in eval mode, where gradient checkpointing is off: a kept graph would hold every activation."""
    kept = []
    collect = ppo_rollout.collect_rollout

    def watch(ac, rewards, prompts, tokenizer, cfg, passes):
        kept.append((passes.keep_value_graph, passes.keep_policy_graph))
        return collect(ac, rewards, prompts, tokenizer, cfg, passes)

    monkeypatch.setattr(ppo_loop_module, "collect_rollout", watch)
    cfg = ppo_config(
        stage_dirs,
        tmp_path,
        rollout_batch_size=4,
        mini_batch_size=4,
        total_episodes=4,
        eval_prompts=0,  # the held-out check's own rollouts keep nothing
        gradient_checkpointing=checkpointing,
    )
    ppo.train(cfg)
    assert kept == [(not checkpointing, not checkpointing)]


def test_gradient_checkpointing_recomputes_each_pass_under_its_own_adapter_and_gives_the_same_step(
    stage_dirs, tmp_path
):
    """The base is loaded frozen, so checkpointing must be switched on by the actor-critic; and the critic's layers,
    recomputed in its backward after the pass restored the policy adapter, must be recomputed under the critic's."""
    from alignment.data.load import load_records
    from alignment.rl.masked import masked_whiten
    from alignment.rl.ppo_math import gae_advantages, kl_shaped_rewards

    results = {}
    for checkpointing in (False, True):
        cfg = ppo_config(stage_dirs, tmp_path, ppo_epochs=1, gradient_checkpointing=checkpointing)
        ac, tokenizer, shared = ppo_policy.build_actor_critic(cfg)
        rewards = ppo_rewards.build_rewards(cfg, ac, shared)
        prompts = load_records(cfg.data, "prompt").records[:4]
        torch.manual_seed(0)
        rollout = ppo_rollout.collect_rollout(ac, rewards, prompts, tokenizer, cfg.ppo)
        shaped, _ = kl_shaped_rewards(
            rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.response_mask, 0.05
        )
        advantages, returns = gae_advantages(shaped, rollout.values, rollout.response_mask, 1.0, 0.95)
        layer_calls = []
        layer = (
            ac.model.get_base_model().model.layers[0].mlp
        )  # a pre-hook: recomputation stops early, before the MLP returns
        hook = layer.register_forward_pre_hook(lambda *_, calls=layer_calls: calls.append(1))
        optimizer = torch.optim.AdamW(ac.trainable_parameters(), lr=1e-2)
        ppo_update_module.ppo_update(
            ac, optimizer, rollout, masked_whiten(advantages, rollout.response_mask), returns, cfg.ppo, True, 1.0
        )
        hook.remove()
        results[checkpointing] = (
            len(layer_calls),
            {n: p.detach().clone() for n, p in ac.named_parameters() if p.requires_grad},
        )
    (plain_calls, plain), (recomputed_calls, recomputed) = results[False], results[True]
    # 2 mini-batches x (critic + policy pass): 4 forwards, and with checkpointing each layer runs again in backward
    assert (plain_calls, recomputed_calls) == (4, 8)
    assert any("value" in name for name in recomputed) and any("policy" in name for name in recomputed)
    for name, value in recomputed.items():  # Adam moves each weight ~1e-2: a gradient under the wrong adapter shows
        torch.testing.assert_close(value, plain[name], atol=1e-5, rtol=1e-5, msg=name)


def test_bf16_runs_every_pass_through_the_base_in_bf16_and_keeps_the_losses_in_fp32(stage_dirs, tmp_path, monkeypatch):
    """``bf16: true`` reaches PPO's passes (generation, reference, reward, value, policy), not only SFT's loop."""
    output_dtypes: dict[bool, set[torch.dtype]] = {}
    base_weight_dtypes: set[torch.dtype] = set()
    head_weight_dtypes: set[torch.dtype] = set()
    training_row_lengths: set[int] = set()
    folded: set[tuple[bool, bool]] = set()  # (autograd on, the policy folded into the weights)
    built = []
    build = ppo_policy.build_actor_critic

    def build_and_watch(cfg, **kwargs):
        ac, tokenizer, shared = build(cfg, **kwargs)
        layer = ac._backbone.layers[0].mlp.down_proj  # a LoRA-wrapped base linear, used by every adapter

        def record(module, _args, output):
            output_dtypes.setdefault(torch.is_grad_enabled(), set()).add(output.dtype)
            if torch.is_grad_enabled():  # a packed pass kept for the update: one flat row
                training_row_lengths.add(output.shape[1])
            base_weight_dtypes.add(module.base_layer.weight.dtype)
            folded.add((torch.is_grad_enabled(), module.merged_weight is not None))

        layer.register_forward_hook(record)
        head = ac.model.get_base_model().get_output_embeddings()
        head.register_forward_hook(lambda module, _a, _o: head_weight_dtypes.add(module.weight.dtype))
        built.append(ac)
        return ac, tokenizer, shared

    monkeypatch.setattr(ppo_policy, "build_actor_critic", build_and_watch)
    ppo.train(ppo_config(stage_dirs, tmp_path, bf16=True, total_episodes=4))
    assert output_dtypes[False] == {torch.bfloat16}  # generation, reference, reward
    assert output_dtypes[True] == {torch.bfloat16}  # the critic pass kept for the update, the policy's training pass
    assert base_weight_dtypes == {torch.bfloat16}  # the frozen base is stored in bf16, not cast on every call
    assert training_row_lengths and all(n % 64 == 0 for n in training_row_lengths)  # precision.flat_row_multiple
    # The tied head: a bf16 copy in generation, the fp32 tied weight (cast by autocast) in the other passes.
    assert head_weight_dtypes == {torch.bfloat16, torch.float32}
    causal_lm = built[0].model.get_base_model()
    assert causal_lm.get_output_embeddings().weight is causal_lm.get_input_embeddings().weight
    row = read_log(tmp_path)[0]
    assert all(math.isfinite(row[key]) for key in ("loss/policy_avg", "loss/value_avg", "objective/kl"))
    # rollout_logprobs=auto recomputes the rollout's log-probs in bf16: the policy and its identical reference
    # copy then agree exactly at update 1 (generate's cached bf16 logits would not).
    assert row["objective/kl"] == 0.0
    # generation_weights=auto: sampling (no autograd) ran the policy folded into the weights, at least once; every
    # pass with autograd on ran the adapters.
    assert built[0].merge_for_sampling and (False, True) in folded and (True, True) not in folded


def test_rollout_logprobs_source_follows_the_precision_and_rejects_unknown_values(stage_dirs, tmp_path):
    ac, _, _ = ppo_policy.build_actor_critic(ppo_config(stage_dirs, tmp_path))
    assert not ppo_rollout.recomputes_rollout_logprobs(ppo_config(stage_dirs, tmp_path).ppo, ac, "no")  # fp32: reuse
    assert ppo_rollout.recomputes_rollout_logprobs(ppo_config(stage_dirs, tmp_path).ppo, ac, "bf16")
    forced = ppo_config(stage_dirs, tmp_path, rollout_logprobs="recompute").ppo
    assert ppo_rollout.recomputes_rollout_logprobs(forced, ac, "no")
    with pytest.raises(ValueError, match="rollout_logprobs: expected auto, generate or recompute, got 'cached'"):
        ppo_rollout.recomputes_rollout_logprobs(
            ppo_config(stage_dirs, tmp_path, rollout_logprobs="cached").ppo, ac, "no"
        )
    with pytest.raises(ValueError, match="rollout_logprobs: expected auto, generate or recompute, got 'cached'"):
        ppo_config_module.validate_sampling(
            ppo_config(stage_dirs, tmp_path, rollout_logprobs="cached").ppo
        )  # before any loading


def test_sampling_folds_the_policy_only_where_rollout_logprobs_are_recomputed(stage_dirs, tmp_path):
    ac, _, _ = ppo_policy.build_actor_critic(ppo_config(stage_dirs, tmp_path))
    auto = ppo_config(stage_dirs, tmp_path).ppo
    assert not ppo_rollout.samples_from_merged_weights(auto, ac, recompute_logprobs=False)  # fp32: as it was
    assert ppo_rollout.samples_from_merged_weights(auto, ac, recompute_logprobs=True)
    merged = ppo_config(stage_dirs, tmp_path, generation_weights="merged").ppo
    assert ppo_rollout.samples_from_merged_weights(merged, ac, recompute_logprobs=False)
    adapter = ppo_config(stage_dirs, tmp_path, generation_weights="adapter").ppo
    assert not ppo_rollout.samples_from_merged_weights(adapter, ac, recompute_logprobs=True)
    with pytest.raises(ValueError, match="generation_weights: expected auto, adapter or merged, got 'folded'"):
        ppo_config_module.validate_sampling(ppo_config(stage_dirs, tmp_path, generation_weights="folded").ppo)


def test_value_adapter_starts_as_the_reward_model(stage_dirs, tmp_path):
    ac, tokenizer, _ = ppo_policy.build_actor_critic(ppo_config(stage_dirs, tmp_path))
    ids = torch.tensor([tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>")])
    batch = SequenceBatch.build(ids[:, :-3], torch.ones_like(ids[:, :-3]), ids[:, -3:], torch.ones_like(ids[:, -3:]))
    with torch.no_grad():
        values = ac.response_values(batch, 3)
        score = ac.reward_scores(batch)
    assert values[0, -1] != 0
    # V at the last response position reads the hidden state before the last token; the RM reads the last token.
    hidden = hidden_states(ac._backbone, batch)
    assert torch.allclose(ac.value_head.weight, ac.reward_head.weight)
    assert score.shape == (1,) and torch.isfinite(hidden).all()


def test_short_run_trains_only_policy_and_value_and_writes_outputs(stage_dirs, tmp_path):
    metrics = ppo.train(ppo_config(stage_dirs, tmp_path))
    rows = read_log(tmp_path)
    assert len(rows) == 3 and abs(rows[0]["objective/kl"]) < 1e-3
    for key in (
        "objective/scores",
        "objective/kl_coef",
        "policy/clipfrac",
        "loss/value_avg",
        "losses/explained_variance",
        "val/no_eos_share",
    ):
        assert key in rows[-1]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and (tmp_path / "DONE").is_file()
    # Policy snapshots at each checkpoint load back as policies (evaluation's over-optimisation curve).
    from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
    from alignment.modeling.load import load_causal_lm

    snapshot = tmp_path / "snapshots" / "step-1"
    assert load_causal_lm(ModelConfig(model_name_or_path=str(snapshot)), LoraConfig(), QuantConfig(), trainable=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved) >= {"reward_mean_first", "reward_mean_last", "kl_last", "episodes_per_second"}
    assert metrics["updates"] == 3


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_training_budget_ends_the_rl_loop_after_the_update_that_spends_it(stage_dirs, tmp_path, algorithm):
    """Equal compute across methods: every algorithm stops at the same rule, and the spent seconds are checkpointed."""
    extra = {"samples_per_prompt": 2, "mini_batch_size": 4} if algorithm == "grpo" else {}
    metrics = ppo.train(ppo_config(stage_dirs, tmp_path, algorithm=algorithm, max_train_minutes=1e-6, **extra))
    assert metrics["updates"] == 1 and metrics["budget_stopped"] is True and metrics["budget_seconds_spent"] > 0
    assert [row["step"] for row in read_log(tmp_path) if "objective/kl" in row] == [1]
    assert (tmp_path / "DONE").is_file() and (tmp_path / "adapter" / "adapter_config.json").is_file()
    state = json.loads((newest_checkpoint(tmp_path) / "state.json").read_text())
    assert state["budget_seconds_spent"] == pytest.approx(metrics["budget_seconds_spent"])


def test_resume_continues_with_the_same_kl_coefficient_and_data_position(stage_dirs, tmp_path, monkeypatch):
    adaptive = {"adaptive_kl": True, "kl_target": 0.01, "kl_horizon": 10}
    reference_dir = tmp_path / "reference"
    ppo.train(ppo_config(stage_dirs, reference_dir, **adaptive))
    reference_rows = read_log(reference_dir)

    monkeypatch.setattr(ppo_loop_module, "GracefulInterrupt", interrupt_after(2))
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):
        ppo.train(ppo_config(stage_dirs, resumed_dir, **adaptive))
    monkeypatch.undo()
    assert newest_checkpoint(resumed_dir).name == "checkpoint-2"
    state = json.loads((newest_checkpoint(resumed_dir) / "state.json").read_text())
    ppo.train(ppo_config(stage_dirs, resumed_dir, resume=True, **adaptive))
    rows = read_log(resumed_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # The KL coefficient carried over (it moved away from its initial value) and step 3 used the same prompts.
    assert rows[2]["objective/kl_coef"] == pytest.approx(state["kl_controller"]["value"])
    assert rows[2]["objective/kl_coef"] == pytest.approx(reference_rows[2]["objective/kl_coef"], rel=1e-4)
    assert rows[2]["objective/kl_coef"] != pytest.approx(0.05)
    assert rows[2]["objective/scores"] == pytest.approx(reference_rows[2]["objective/scores"], abs=1e-3)


def test_biased_sampling_settings_are_rejected():
    with pytest.raises(ValueError, match="top_p=0.9"):
        ppo_config_module.validate_sampling(ppo_config_module.PPOConfig(top_p=0.9))
    with pytest.raises(ValueError, match="repetition_penalty"):
        ppo_config_module.validate_sampling(ppo_config_module.PPOConfig(repetition_penalty=1.1))


def test_a_diverging_ppo_run_stops_with_a_clear_error_and_no_done(stage_dirs, tmp_path):
    """At learning rate 1e30 the policy's weights overflow; PPO used to die inside torch.multinomial."""
    with pytest.raises(FloatingPointError, match="not finite|NaN or inf"):
        ppo.train(ppo_config(stage_dirs, tmp_path, learning_rate=1e30, total_episodes=12))
    assert not (tmp_path / "DONE").is_file() and not (tmp_path / "adapter").exists()


# ------------------------------------------------------------------------------------------- critic-free estimators


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "reinforce_pp"])
def test_critic_free_run_carries_no_critic_starts_at_kl_0_and_finishes(stage_dirs, tmp_path, algorithm):
    cfg = ppo_config(stage_dirs, tmp_path, algorithm=algorithm, samples_per_prompt=2, rollout_batch_size=2)
    ac, _, _ = ppo_policy.build_actor_critic(cfg)
    with_critic, _, _ = ppo_policy.build_actor_critic(ppo_config(stage_dirs, tmp_path / "ppo"))
    assert "value" not in ac.model.peft_config and ac.value_head is None
    trainable = sum(p.numel() for p in ac.trainable_parameters())
    assert trainable < sum(p.numel() for p in with_critic.trainable_parameters())
    ppo.train(cfg)
    rows = read_log(tmp_path)
    assert len(rows) == 6 and abs(rows[0]["objective/kl"]) < 1e-3
    assert "loss/value_avg" not in rows[-1] and "losses/explained_variance" not in rows[-1]
    assert ("loss/kl_avg" in rows[-1]) == (algorithm == "grpo")  # GRPO's KL is a loss term
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and (tmp_path / "DONE").is_file()


def test_critic_free_update_uses_the_group_baseline_of_k_samples_per_prompt(stage_dirs, tmp_path, monkeypatch):
    seen = []
    real_update = ppo_loop_module.ppo_update_synced

    def spy(run, ac, optimizer, rollout, advantages, returns, cfg, *args, **kwargs):
        seen.append((rollout, advantages.clone(), returns, kwargs["kl_loss_coef"]))
        return real_update(run, ac, optimizer, rollout, advantages, returns, cfg, *args, **kwargs)

    monkeypatch.setattr(ppo_loop_module, "ppo_update_synced", spy)
    ppo.train(ppo_config(stage_dirs, tmp_path, algorithm="rloo", samples_per_prompt=3, rollout_batch_size=2))
    rollout, advantages, returns, kl_loss_coef = seen[1]
    # Six rows: each prompt three times in a row.
    assert [m[-1].content for m in rollout.prompts[:3]] == [rollout.prompts[0][-1].content] * 3
    assert returns is None and kl_loss_coef == 0.0
    # RLOO by hand from the rollout: R = score - beta * sum_t (logp - logp_ref); A_i = R_i - mean of the others.
    mask = rollout.response_mask
    kl = torch.where(mask, rollout.logprobs - rollout.ref_logprobs, torch.zeros(()))
    sequence_reward = (rollout.scores - 0.05 * kl.sum(-1)).tolist()
    for row, reward_i in enumerate(sequence_reward):
        group = sequence_reward[row // 3 * 3 : row // 3 * 3 + 3]
        expected = reward_i - (sum(group) - reward_i) / 2
        assert advantages[row][mask[row]].tolist() == pytest.approx([expected] * int(mask[row].sum()), abs=1e-5)
        assert (advantages[row][~mask[row]] == 0).all()


def test_critic_free_run_resumes_at_the_same_data_position(stage_dirs, tmp_path, monkeypatch):
    settings = {"algorithm": "grpo", "samples_per_prompt": 2, "rollout_batch_size": 2, "total_episodes": 6}
    reference_dir = tmp_path / "reference"
    ppo.train(ppo_config(stage_dirs, reference_dir, **settings))
    monkeypatch.setattr(ppo_loop_module, "GracefulInterrupt", interrupt_after(2))
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):
        ppo.train(ppo_config(stage_dirs, resumed_dir, **settings))
    monkeypatch.undo()
    ppo.train(ppo_config(stage_dirs, resumed_dir, resume=True, **settings))
    rows, reference_rows = read_log(resumed_dir), read_log(reference_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["objective/scores"] == pytest.approx(reference_rows[2]["objective/scores"], abs=1e-3)


def test_critic_free_settings_that_cannot_work_are_refused_before_loading():
    with pytest.raises(ValueError, match="samples_per_prompt to 2 or more"):
        ppo_config_module.validate_sampling(ppo_config_module.PPOConfig(algorithm="grpo", reward_model_paths=["rm"]))
    with pytest.raises(ValueError, match="algorithm: expected one of ppo, rloo, grpo, reinforce_pp"):
        ppo_config_module.validate_sampling(ppo_config_module.PPOConfig(algorithm="dpo", reward_model_paths=["rm"]))
    with pytest.raises(ValueError, match="no critic"):
        ppo_config_module.validate_sampling(
            ppo_config_module.PPOConfig(
                algorithm="rloo", samples_per_prompt=2, critic_warmup_steps=2, reward_model_paths=["rm"]
            )
        )


def test_every_reward_and_cost_model_on_the_policys_base_rides_on_it_as_an_adapter(stage_dirs, tmp_path, monkeypatch):
    """Two reward models and a cost model, all LoRA outputs on the policy's base: one base, no extra model loaded; a
    model named both as a reward and as the cost is one adapter."""
    from alignment.modeling.load import load_reward_model

    base_path = json.loads((stage_dirs / "reward" / "base_model.json").read_text())["model_name_or_path"]
    for name, seed in (("reward_b", 7), ("cost_c", 11)):
        values = {"model_name_or_path": base_path, "dataset_name": "demo", "max_samples": 8, "max_steps": 1}
        values.update(learning_rate=1e-2, seed=seed, output_dir=str(tmp_path / name), **FAST)
        reward.train(build_config(reward.CONFIG_TYPES, values))
    paths = [str(stage_dirs / "reward"), str(tmp_path / "reward_b")]
    cost = str(tmp_path / "cost_c")
    cfg = ppo_config(stage_dirs, tmp_path / "ppo", reward_model_paths=paths, cost_model_path=cost, total_episodes=8)
    monkeypatch.setattr(ppo_rewards, "load_reward_scorer", lambda *a, **k: pytest.fail("a reward model was loaded"))
    ac, tokenizer, shared = ppo_policy.build_actor_critic(cfg)
    assert set(shared) == {*paths, cost} and {"reward", "reward_1", "cost"} <= set(ac.model.peft_config)
    base = sum(p.numel() for n, p in ac.model.named_parameters() if "lora_" not in n)
    assert sum(p.numel() for p in ac.parameters()) < 1.1 * base  # one base; three full copies more without sharing
    rewards = ppo_rewards.build_rewards(cfg, ac, shared)
    assert [s.adapter for s in rewards.scorers] == ["reward", "reward_1"] and rewards.cost_scorer.adapter == "cost"
    # Each adapter scores as its own model does when loaded alone.
    ids = torch.tensor([tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>")])
    batch = SequenceBatch.build(ids[:, :-3], torch.ones_like(ids[:, :-3]), ids[:, -3:], torch.ones_like(ids[:, -3:]))
    for path, adapter in [*zip(paths, ["reward", "reward_1"]), (cost, "cost")]:
        model_cfg = build_config(reward.CONFIG_TYPES, {"model_name_or_path": path}).model
        alone = load_reward_model(model_cfg, cfg.lora, cfg.quant, trainable=False)
        with torch.no_grad():
            expected = alone(input_ids=ids).logits[0, 0]
            torch.testing.assert_close(ac.reward_scores(batch, adapter)[0], expected, atol=1e-5, rtol=1e-5)
    # The same model as a reward and as the cost: one adapter, scored under both names.
    both = ppo_config(stage_dirs, tmp_path / "both", reward_model_paths=paths, cost_model_path=paths[1])
    ac_both, _, shared_both = ppo_policy.build_actor_critic(both)
    assert "cost" not in ac_both.model.peft_config
    assert ppo_rewards.build_rewards(both, ac_both, shared_both).cost_scorer.adapter == "reward_1"
    monkeypatch.undo()
    ppo.train(cfg)  # and a Lagrangian run on them trains
    assert "objective/raw_score/cost" in read_log(tmp_path / "ppo")[-1]


def test_every_head_is_made_on_the_bases_device(stage_dirs, tmp_path, monkeypatch):
    """A quantized base cannot be moved after loading, so its heads must be made where it is (a device mismatch on a
    GPU otherwise). Here the base is put on the meta device, the only other device this CPU has."""
    real_load = ppo_policy.load_causal_lm
    monkeypatch.setattr(ppo_policy, "load_causal_lm", lambda *a, **k: real_load(*a, **k).to("meta"))
    ac, _, _ = ppo_policy.build_actor_critic(ppo_config(stage_dirs, tmp_path))
    heads = {"value": ac.value_head, **ac.reward_heads}
    assert set(heads) == {"value", "reward"}
    assert all(p.device.type == "meta" for head in heads.values() for p in head.parameters())


def test_an_encoder_reward_model_scores_rollouts_longer_than_its_positions(stage_dirs, tiny_bert_dir, tmp_path):
    """A BERT-class reward model (the tiny one has 128 positions) on prompts of ~300 tokens: cut, not a crash."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.num_labels = 1
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert_rm")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "bert_rm")
    prompts = tmp_path / "long_prompts.jsonl"
    rows = [{"prompt": f"Question {i}: tell me about the sea. " * 40} for i in range(8)]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = ppo_config(
        stage_dirs,
        tmp_path / "ppo",
        reward_model_paths=[str(tmp_path / "bert_rm")],
        dataset_name=str(prompts),
        max_prompt_length=400,
        total_episodes=4,
        eval_split_size=0,
        eval_prompts=0,
    )
    ppo.train(cfg)
    assert all(math.isfinite(row["objective/scores"]) for row in read_log(tmp_path / "ppo"))


def test_weights_by_label_need_one_number_per_reward_model():
    two_models = {"reward_model_paths": ["helpful", "harmless"]}
    with pytest.raises(ValueError, match=r"reward_weights_by_label: 'harmful' needs a list of one weight .* \(2\)"):
        ppo_config_module.validate_sampling(
            ppo_config_module.PPOConfig(reward_weights_by_label={"harmful": [1.0]}, **two_models)
        )
    with pytest.raises(ValueError, match="weights must be numbers"):
        ppo_config_module.validate_sampling(
            ppo_config_module.PPOConfig(reward_weights_by_label={"harmful": [0, "one"]}, **two_models)
        )
    ppo_config_module.validate_sampling(
        ppo_config_module.PPOConfig(reward_weights_by_label={"harmful": [0, 1]}, **two_models)
    )


def test_each_prompt_label_reaches_the_reward(stage_dirs, tmp_path, monkeypatch):
    """The demo prompts' labels (and prompt_labels) choose each answer's reward weights in a real update."""
    from alignment.ppo import rewards as ppo_rewards

    seen, real = [], ppo_rewards.weights_per_prompt

    def spy(labels, weights, weights_by_label):
        rows = real(labels, weights, weights_by_label)
        seen.extend(zip(labels, rows[:, 0].tolist()))
        return rows

    monkeypatch.setattr(ppo_rewards, "weights_per_prompt", spy)
    by_label = {"harmful": [0.0], "safe": [0.5]}
    ppo.train(ppo_config(stage_dirs, tmp_path, total_episodes=4, eval_prompts=0, reward_weights_by_label=by_label))
    # The update's four prompts hold a label with its own weights and one with the default (helpful: 1.0).
    assert {label for label, _ in seen} >= {"helpful", "safe"}, seen
    assert all(weight == by_label.get(label, [1.0])[0] for label, weight in seen), seen


def test_the_refusal_rule_reaches_the_reward_by_label(stage_dirs, tmp_path, monkeypatch):
    """In a real update every refusal earns its prompt label's rule value, and the refusal rate is logged."""

    class EverythingRefuses:
        def is_refusal(self, text: str) -> bool:
            return True

    seen, real = [], ppo_rewards.refusal_rule_rewards

    def spy(refused, labels, reward_by_label):
        values = real(refused, labels, reward_by_label)
        seen.extend(zip(labels, values.tolist()))
        return values

    monkeypatch.setattr(ppo_rewards, "make_detector", lambda name, setting: EverythingRefuses())
    monkeypatch.setattr(ppo_rewards, "refusal_rule_rewards", spy)
    rule = {"harmful": 1.0, "safe": -1.5}
    ppo.train(ppo_config(stage_dirs, tmp_path, total_episodes=4, eval_prompts=0, refusal_reward_by_label=rule))
    assert {label for label, _ in seen} >= {"helpful", "safe"}, seen
    assert all(value == rule.get(label, 0.0) for label, value in seen), seen
    logged = read_log(tmp_path)[-1]
    assert logged["objective/raw_score/refused"] == logged["objective/raw_score/refused/safe"] == 1.0


def demonstrations_loss(policy_dir, tokenizer_dir, records) -> float:
    """Mean loss per assistant token of the demonstrations ``records`` under a saved policy."""
    from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
    from alignment.data.collate import SFTCollator, render_sft_example
    from alignment.modeling.load import load_causal_lm
    from alignment.modeling.target_logits import target_logits
    from alignment.modeling.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tokenizer_dir)))
    model = load_causal_lm(
        ModelConfig(model_name_or_path=str(policy_dir)), LoraConfig(), QuantConfig(), trainable=False
    )
    batch = SFTCollator(tokenizer.pad_token_id)([render_sft_example(tokenizer, r, 128, "all") for r in records])
    with torch.no_grad():
        logits, targets, _ = target_logits(model, None, batch)
    return float(torch.nn.functional.cross_entropy(logits.float(), targets))


def test_ptx_holds_the_policy_to_the_demonstrations(stage_dirs, tmp_path):
    """PPO-ptx: with the demonstrations' loss in every policy step, the policy ends closer to them than it started,
    and closer than the same run without the term; the term's loss is logged."""
    from alignment.data.load import load_records

    demos = load_records(build_config(ppo.CONFIG_TYPES, {"dataset_name": "demo"}).data, "demonstration").records[:8]
    ptx = {"ptx_coef": 5.0, "ptx_dataset_name": "demo", "ptx_batch_size": 4}
    ppo.train(ppo_config(stage_dirs, tmp_path / "plain", learning_rate=1e-2, eval_prompts=0))
    ppo.train(ppo_config(stage_dirs, tmp_path / "ptx", learning_rate=1e-2, eval_prompts=0, **ptx))
    start = demonstrations_loss(stage_dirs / "sft", stage_dirs / "sft", demos)
    plain = demonstrations_loss(tmp_path / "plain", stage_dirs / "sft", demos)
    held = demonstrations_loss(tmp_path / "ptx", stage_dirs / "sft", demos)
    assert held < start and held < plain, (start, plain, held)
    rows = read_log(tmp_path / "ptx")
    assert all(row["loss/ptx_avg"] > 0 for row in rows) and "loss/ptx_avg" not in read_log(tmp_path / "plain")[0]


def test_ptx_batches_follow_from_the_step_and_cover_every_demonstration():
    """The demonstrations a policy step reads depend only on its position (resume needs no state), and each epoch
    reads every demonstration once."""
    from alignment.ppo.ptx import PtxTerm

    term = PtxTerm(list(range(10)), collator=list, batch_size=4, seed=3)
    run = [term.next_batch() for _ in range(6)]
    assert sorted(i for b in run[:3] for i in b) == list(range(10)) and [len(b) for b in run[:3]] == [4, 4, 2]
    assert run[3:] != run[:3]  # the next epoch, in another order
    term.seek(4)
    assert term.next_batch() == run[4]


def test_ptx_needs_its_demonstrations_named():
    with pytest.raises(ValueError, match="ptx_dataset_name"):
        ppo_config_module.PPOConfig(ptx_coef=1.0)
    with pytest.raises(ValueError, match="ptx_coef"):
        ppo_config_module.PPOConfig(ptx_coef=-1.0, ptx_dataset_name="demo")


def test_ptx_select_rows_keeps_only_the_named_demonstrations(tiny_llama_dir):
    """``ptx_select_rows: {category: [safe]}`` holds the policy to the answers to safe requests alone: the term reads
    exactly the demo demonstrations of that category, and a malformed selection names the key."""
    import types

    from alignment.core.config import ModelConfig
    from alignment.data.demo import DEMO_DIR
    from alignment.modeling.tokenizer import load_tokenizer
    from alignment.ppo.ptx import build_ptx_term

    cfg = build_config(
        ppo.CONFIG_TYPES,
        {"ptx_coef": 1.0, "ptx_dataset_name": "demo", "ptx_select_rows": {"category": ["safe"]}, "max_length": 256},
    )
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(tiny_llama_dir)))
    stand_in = types.SimpleNamespace(model=types.SimpleNamespace(get_base_model=torch.nn.Module), row_multiple=1)
    term = build_ptx_term(cfg, stand_in, tokenizer)
    rows = [json.loads(line) for line in (DEMO_DIR / "demonstrations.jsonl").read_text().splitlines()]
    safe = [r for r in rows if r["category"] == "safe"]
    assert 0 < len(safe) < len(rows) and len(term.examples) == len(safe)
    everything = build_ptx_term(
        build_config(ppo.CONFIG_TYPES, {"ptx_coef": 1.0, "ptx_dataset_name": "demo"}), stand_in, tokenizer
    )
    assert len(everything.examples) == len(rows)
    with pytest.raises(ValueError, match="ptx_select_rows: 'category'"):
        ppo_config_module.PPOConfig(ptx_coef=1.0, ptx_dataset_name="demo", ptx_select_rows={"category": "safe"})


def test_a_resumed_ptx_run_reads_the_demonstrations_an_uninterrupted_one_reads(stage_dirs, tmp_path, monkeypatch):
    ptx = {"ptx_coef": 1.0, "ptx_dataset_name": "demo", "ptx_batch_size": 2, "eval_prompts": 0}
    ppo.train(ppo_config(stage_dirs, tmp_path / "reference", **ptx))
    reference = read_log(tmp_path / "reference")
    monkeypatch.setattr(ppo_loop_module, "GracefulInterrupt", interrupt_after(2))
    with pytest.raises(TrainingInterrupted):
        ppo.train(ppo_config(stage_dirs, tmp_path / "resumed", **ptx))
    monkeypatch.undo()
    ppo.train(ppo_config(stage_dirs, tmp_path / "resumed", resume=True, **ptx))
    rows = read_log(tmp_path / "resumed")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["loss/ptx_avg"] == pytest.approx(reference[2]["loss/ptx_avg"], rel=1e-4)
    assert reference[2]["loss/ptx_avg"] != pytest.approx(reference[0]["loss/ptx_avg"], rel=1e-4)
