"""PPO stage: optimise the SFT policy against reward models with a KL penalty to the SFT policy.

InstructGPT (Ouyang et al. 2022, eq. 2) on torch + accelerate + peft, written here because trl
dropped its PPO trainer after 1.12. What differs from trl 1.12's ``PPOTrainer``: one base model
carries policy, reference, critic and reward as LoRA adapters (:mod:`.policy`); the reference is
the SFT adapter, not the bare base; reward models may use any tokenizer
(:mod:`alignment.modeling.scoring`); fixed or adaptive KL; a PPO-Lagrangian harmlessness
constraint (:mod:`.rewards`); checkpoints that resume with the same KL coefficient, multiplier and
data position; no full-vocabulary logits over the prompt. The loop reads top to bottom in
:mod:`.loop`; the math lives in :mod:`alignment.rl` as pure, tested functions.
"""

from __future__ import annotations

from typing import Any

from alignment.core.config import Config
from alignment.core.config_parsing import parse_config
from alignment.core.distributed import uses_fsdp
from alignment.core.precision import autocast_dtype, store_frozen_weights_in, tied_head_copy
from alignment.core.run import mark_done, start_run
from alignment.core.sharding import gathered_model_state, move_unsharded_to, shard_model
from alignment.core.tracking import metrics_text
from alignment.data.load import load_records
from alignment.ppo.config import CONFIG_TYPES, validate_sampling

__all__ = ["CONFIG_TYPES", "main", "summary_text", "train"]


def train(cfg: Config) -> dict[str, Any]:
    """Run PPO; returns the metrics written to ``metrics.json``."""
    ppo, train_cfg = cfg.ppo, cfg.train
    validate_sampling(ppo)
    # The machinery is imported here, not at the top: importing the stage (for --help, or by the pipeline)
    # must not load the model stack.
    from alignment.ppo.loop import ppo_loop
    from alignment.ppo.policy import build_actor_critic, save_policy
    from alignment.ppo.rewards import build_rewards

    with start_run(cfg, "ppo") as run:
        records = load_records(cfg.data, "prompt", seed=train_cfg.seed)
        fsdp = uses_fsdp(cfg, run.accelerator)  # FSDP: loaded on the host, each process's shards go to its device
        ac, tokenizer, shared_scorers = build_actor_critic(cfg, device="cpu" if fsdp else None)
        ac.autocast = run.accelerator.autocast  # bf16: every pass through the base, generation included
        ac.row_multiple = run.flat_row_multiple
        quantized = cfg.quant.load_in_8bit or cfg.quant.load_in_4bit
        if fsdp:
            # The blocks only: the passes call the backbone and the heads, not the model (see shard_model).
            shard_model(ac.model, run.device, root=False)
            move_unsharded_to(ac, run.device)
            ac.sharded, ac.gather_for_generation = True, ppo.fsdp_generation == "full"
        elif not quantized:  # a quantized base stays where bitsandbytes placed it, its heads made beside it
            ac.to(run.device)
        compute_dtype = autocast_dtype(run.accelerator.mixed_precision)
        if compute_dtype is not None:  # every pass runs under autocast: see precision.py
            if not quantized and not ac.sharded:  # FSDP shards one dtype per block: the storage stays as loaded
                store_frozen_weights_in(ac.model, compute_dtype)
            ac.generation_head = tied_head_copy(ac.model.get_base_model(), compute_dtype)
            ac.compute_dtype = compute_dtype
        rewards = build_rewards(cfg, ac, shared_scorers)
        if not rewards.scorers:
            raise ValueError("PPO needs at least one reward model: set reward_model_paths")
        eval_prompts = list(records.eval_records)[: ppo.eval_prompts]
        metrics = ppo_loop(run, ac, rewards, list(records.records), eval_prompts, tokenizer)
        gathered = gathered_model_state(ac.model)  # FSDP: the adapters whole, gathered by every process
        if run.is_main:
            save_policy(ac, tokenizer, run.output_dir, cfg, state_dict=gathered)
            run.metrics.write_metrics(metrics)
            mark_done(run.output_dir)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``alignment ppo``: the recipe (``--config``) and flags parsed, then :func:`train`; returns its metrics."""
    return train(parse_config(CONFIG_TYPES, argv, prog="alignment ppo"))


summary_text = metrics_text  # what ``alignment ppo`` prints when it ends
