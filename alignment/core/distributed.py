"""Which multi-process set-ups the stages support, checked before any model is loaded.

Supported: DDP (``configs/accelerate/multi_gpu_ddp.yaml``, ``multi_node.yaml``, or ``torchrun`` with ``cpu: true``),
with LoRA, full fine-tuning, 8-bit and 4-bit bases (every process holds the whole model), and DeepSpeed ZeRO-2 with
``gradient_accumulation_steps: 1``. ``tests/stages/test_distributed.py`` checks DDP (2 processes, gloo, CPU) against
one process with twice the batch.

Refused here with the reason, because they fail or silently train/save the wrong thing:

- DeepSpeed ZeRO-3 and FSDP, for every stage. They shard the *parameters*, but the stages evaluate the unwrapped
  model (also before ``accelerator.prepare``), and rank 0 alone saves adapters, heads and checkpoints from
  ``unwrap_model(model)`` / ``named_parameters()``: under ZeRO-3 those are empty partitions, under FSDP shards. A
  sharded save has to go through ``accelerator.get_state_dict(model)`` on every rank; the stages do not do that yet.
- ... and with ``load_in_8bit`` / ``load_in_4bit`` in particular, which would stay unsupported after that fix:
  FSDP can only shard floating-point storage, bitsandbytes 8-bit weights are int8, and 4-bit weights need
  ``bnb_4bit_quant_storage`` set to the model's float dtype (bitsandbytes "FSDP-QLoRA" guide; PEFT "Fully Sharded
  Data Parallel" and "DeepSpeed" guides, QLoRA sections), which ``QuantConfig`` does not expose. transformers
  itself refuses a ``device_map`` under ZeRO-3 ("DeepSpeed Zero-3 is not compatible with passing a
  `device_map`"), and the loader passes one for every quantized model on a GPU.
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


def sharding_backend(accelerator: Any) -> str | None:
    """``"DeepSpeed ZeRO-3"`` or ``"FSDP"`` when parameters are sharded across processes, else None."""
    distributed_type = accelerator.distributed_type
    if distributed_type == DistributedType.FSDP:
        return "FSDP"
    if distributed_type == DistributedType.DEEPSPEED and _zero_stage(accelerator) == 3:
        return "DeepSpeed ZeRO-3"
    return None


def _zero_stage(accelerator: Any) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def check_distributed_support(cfg: Config, accelerator: Any) -> None:
    """Raise :class:`UnsupportedDistributedSetup` naming the setting and what to use instead.

    ``accelerator`` is the run's ``accelerate.Accelerator`` (anything with ``distributed_type`` and
    ``state.deepspeed_plugin``); call this right after building it, before a model is loaded.
    """
    backend = sharding_backend(accelerator)
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
            f"{key}: true cannot be trained under {backend} (the accelerate config / launcher sets it): {why} "
            f"(see {DOCS['bnb_fsdp_qlora']}, {DOCS['peft_fsdp']}, {DOCS['peft_deepspeed']}). Use DDP "
            "(configs/accelerate/multi_gpu_ddp.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml), "
            "where every process holds the whole quantized base."
        )
    if backend is not None:
        raise UnsupportedDistributedSetup(
            f"{backend} is not supported by the stages yet: it shards the parameters, but the stages evaluate the "
            "unwrapped model and save adapters, heads and checkpoints from rank 0's own copy, which under "
            f"{backend} holds only a shard (the saved weights would be empty or partial). Use DDP "
            "(configs/accelerate/multi_gpu_ddp.yaml) or DeepSpeed ZeRO-2 (configs/accelerate/deepspeed_zero2.yaml); "
            "LoRA and 8-/4-bit bases keep the per-process model small."
        )
    uses_supervised_loop = hasattr(cfg, "sft") or hasattr(cfg, "reward")
    accumulation = cfg.train.gradient_accumulation_steps
    if accelerator.distributed_type == DistributedType.DEEPSPEED and uses_supervised_loop and accumulation > 1:
        raise UnsupportedDistributedSetup(
            f"gradient_accumulation_steps: {accumulation} cannot be used under DeepSpeed: the training loop "
            "accumulates micro-batches itself, and under DeepSpeed accelerate's backward() steps the optimizer after "
            "every micro-batch. Set gradient_accumulation_steps: 1 and raise per_device_train_batch_size (or the "
            "number of processes) instead, or use DDP (configs/accelerate/multi_gpu_ddp.yaml)."
        )
