"""Which multi-process set-ups the stages support, checked before any model is loaded.

Supported: DDP (``configs/accelerate/multi_gpu_ddp.yaml``, ``multi_node.yaml``, or ``torchrun`` with ``cpu: true``),
with LoRA, full fine-tuning, 8-bit and 4-bit bases (every process holds the whole model); FSDP for every stage
(``fsdp: true``, or accelerate's ``configs/accelerate/fsdp.yaml``: the stages shard the model with PyTorch's
``fully_shard`` themselves, see :mod:`alignment.core.sharding`; PPO shards the base's blocks), unquantized; and
DeepSpeed ZeRO-2 for SFT, reward and DPO with ``gradient_accumulation_steps: 1`` (read, not run: deepspeed needs a
CUDA toolchain). ``tests/stages/test_distributed.py`` checks DDP and FSDP
(2 processes, gloo, CPU) against one process with twice the batch.

Refused here with the reason, because they fail or silently train/save the wrong thing:

- DeepSpeed ZeRO-3, for every stage. It shards the *parameters*, but the stages evaluate the unwrapped model (also
  before ``accelerator.prepare``), and rank 0 alone saves adapters, heads and checkpoints from its own copy, which
  under ZeRO-3 is an empty partition. The FSDP path gathers what it saves; use it instead.
- FSDP or ZeRO-3 with ``load_in_8bit`` / ``load_in_4bit``:
  FSDP can only shard floating-point storage, bitsandbytes 8-bit weights are int8, and 4-bit weights need
  ``bnb_4bit_quant_storage`` set to the model's float dtype (bitsandbytes "FSDP-QLoRA" guide; PEFT "Fully Sharded
  Data Parallel" and "DeepSpeed" guides, QLoRA sections), which ``QuantConfig`` does not expose. transformers
  itself refuses a ``device_map`` under ZeRO-3 ("DeepSpeed Zero-3 is not compatible with passing a
  `device_map`"), and the loader passes one for every quantized model on a GPU.
- PPO under DeepSpeed (any stage of ZeRO): PPO never calls ``accelerator.prepare``, so ZeRO would shard nothing;
  ``fsdp: true`` shards PPO's base instead.
- DeepSpeed with ``gradient_accumulation_steps > 1`` in the SFT/reward loop: the loop accumulates by hand (it does
  not use ``accelerator.accumulate``), so accelerate's ``backward`` calls ``engine.step()`` after every
  micro-batch, an optimizer step per micro-batch instead of one per accumulation window.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import DistributedType

from alignment.core.config import Config

DOCS = {
    "bnb_fsdp_qlora": "https://huggingface.co/docs/bitsandbytes/fsdp_qlora",
    "peft_fsdp": "https://huggingface.co/docs/peft/accelerate/fsdp",
    "peft_deepspeed": "https://huggingface.co/docs/peft/accelerate/deepspeed",
}


class UnsupportedDistributedSetup(ValueError):
    """A launcher configuration (accelerate config / environment) the stages cannot train correctly under."""


def sharding_backend(accelerator: Any, cfg: Config | None = None) -> str | None:
    """``"DeepSpeed ZeRO-3"`` or ``"FSDP"`` when parameters are sharded across processes, else None.

    FSDP: the recipe's ``fsdp: true``, or an accelerate launcher that selected FSDP (on GPUs).
    """
    distributed_type = accelerator.distributed_type
    if distributed_type == DistributedType.FSDP or (cfg is not None and getattr(cfg.train, "fsdp", False)):
        return "FSDP"
    if distributed_type == DistributedType.DEEPSPEED and _zero_stage(accelerator) == 3:
        return "DeepSpeed ZeRO-3"
    return None


def uses_fsdp(cfg: Config, accelerator: Any) -> bool:
    """Whether the stage shards its model with :func:`alignment.core.sharding.shard_model`."""
    return sharding_backend(accelerator, cfg) == "FSDP"


def _zero_stage(accelerator: Any) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def check_distributed_support(cfg: Config, accelerator: Any) -> None:
    """Raise :class:`UnsupportedDistributedSetup` naming the setting and what to use instead.

    ``accelerator`` is the run's ``accelerate.Accelerator`` (anything with ``distributed_type``,
    ``num_processes`` and ``state.deepspeed_plugin``); call this right after building it, before a model is loaded.
    """
    backend = sharding_backend(accelerator, cfg)
    quant = getattr(cfg, "quant", None)
    quantized = [key for key in ("load_in_8bit", "load_in_4bit") if quant is not None and getattr(quant, key)]
    if backend is not None and quantized:
        key = quantized[0]
        why = (
            "FSDP shards only floating-point storage and bitsandbytes 8-bit weights are int8"
            if key == "load_in_8bit"
            else "sharding 4-bit weights needs bnb_4bit_quant_storage set to the model's float dtype, which "
            "QuantConfig does not expose"
        )
        raise UnsupportedDistributedSetup(
            f"{key}: true cannot be trained under {backend} (fsdp: true or the accelerate config / launcher sets "
            f"it): {why} (see {DOCS['bnb_fsdp_qlora']}, {DOCS['peft_fsdp']}, {DOCS['peft_deepspeed']}). Use DDP "
            "(configs/accelerate/multi_gpu_ddp.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml), "
            "where every process holds the whole quantized base."
        )
    if backend == "DeepSpeed ZeRO-3":
        raise UnsupportedDistributedSetup(
            "DeepSpeed ZeRO-3 is not supported by the stages: it shards the parameters, but the stages evaluate the "
            "unwrapped model and save adapters, heads and checkpoints from rank 0's own copy, which under ZeRO-3 "
            "holds an empty partition. Use FSDP (fsdp: true, or configs/accelerate/fsdp.yaml), which shards the "
            "same way and gathers what it saves, or DDP / DeepSpeed ZeRO-2."
        )
    uses_supervised_loop = hasattr(cfg, "sft") or hasattr(cfg, "reward") or hasattr(cfg, "dpo")
    if accelerator.distributed_type == DistributedType.DEEPSPEED and not uses_supervised_loop:
        raise UnsupportedDistributedSetup(
            "PPO does not run under DeepSpeed: it never hands its model to accelerate.prepare (one base carries "
            "four adapters, switched between passes), so ZeRO would shard nothing and the run would be DDP under "
            "another name. Use fsdp: true (parameters, gradients and optimizer state sharded) or DDP "
            "(configs/accelerate/multi_gpu_ddp.yaml)."
        )
    if backend == "FSDP" and accelerator.num_processes < 2:
        raise UnsupportedDistributedSetup(
            "fsdp: true shards the model across processes, and this run has one: launch it with torchrun "
            "--nproc_per_node N (N >= 2) or accelerate launch --config_file configs/accelerate/fsdp.yaml, or set "
            "fsdp: false"
        )
    accumulation = cfg.train.gradient_accumulation_steps
    if accelerator.distributed_type == DistributedType.DEEPSPEED and uses_supervised_loop and accumulation > 1:
        raise UnsupportedDistributedSetup(
            f"gradient_accumulation_steps: {accumulation} cannot be used under DeepSpeed: the training loop "
            "accumulates micro-batches itself, and under DeepSpeed accelerate's backward() steps the optimizer after "
            "every micro-batch. Set gradient_accumulation_steps: 1 and raise per_device_train_batch_size (or the "
            "number of processes) instead, or use DDP (configs/accelerate/multi_gpu_ddp.yaml)."
        )
