"""Fully sharded data parallel training: PyTorch's FSDP2 (``fully_shard``) for the SFT, reward and DPO loop, and
whole tensors gathered from (or scattered into) a sharded model for saving and resuming.

Each process keeps 1/N of every parameter, gradient and optimizer state; a transformer block's full weights exist
only while that block runs (all-gathered before its forward and backward, freed after), and gradients are
reduce-scattered instead of all-reduced. With LoRA the frozen base is sharded as well as the adapters, which is
where the memory is.

Why our own ``fully_shard`` call instead of accelerate's FSDP plugin: accelerate selects FSDP only on GPUs, so a
launcher config alone would run DDP on a CPU and the sharded path could never be tested here; FSDP2 shards frozen
and trainable parameters of one block together (FSDP1 needs ``use_orig_params`` for that), and it keeps every
parameter's name, so state dicts, checkpoints and peft's adapter files are keyed as they are unsharded.

The shard groups are the model's ``_no_split_modules`` blocks (transformers' own list of the modules that must stay
whole: the decoder layers of a causal LM, BERT's layers), then the root for what is left (embeddings, final norm,
heads). Everything here that touches sharded parameters is collective: every process must call it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _dtensor_type() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that become one shard group each: instances of the model's ``_no_split_modules`` classes."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    names = set(getattr(inner, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def shard_model(model: nn.Module, device: torch.device, *, root: bool = True) -> nn.Module:
    """Shard ``model`` in place across the default process group: one group per block, then the root.

    ``root=False`` shards the blocks only and leaves the rest (embeddings, final norm, heads) whole on every process:
    for code that calls a model's parts rather than the model (PPO's passes call the backbone and the heads), where
    the root's gather-before-forward hook would never run. Its trainable parameters outside the blocks then need
    their gradients all-reduced by the caller (:func:`is_sharded_tensor` tells them apart).

    Frozen and trainable parameters may share a block (LoRA). Parameters of one block must share a dtype: FSDP2
    all-gathers a block in one flat buffer.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized() or dist.get_world_size() < 2:
        raise ValueError(
            "fsdp: true shards the model across processes and needs at least 2 of them: launch with torchrun "
            "--nproc_per_node N (or accelerate launch with configs/accelerate/fsdp.yaml)"
        )
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        raise ValueError(
            f"fsdp: true needs one parameter dtype, the model holds {sorted(str(d) for d in dtypes)} (frozen "
            "weights stored in bf16 beside fp32 adapters); train in fp32, or with bf16 autocast, under FSDP"
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    blocks = block_modules(model)
    if not blocks and not root:
        raise ValueError(f"{type(model).__name__} names no transformer blocks (_no_split_modules) to shard")
    for block in blocks:
        # Explicit, not the default: without a root above them each block is its own FSDP root, and a root left
        # to choose keeps its parameters gathered after forward (it expects its backward right after).
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    if root:
        # The root keeps its default: gathered from its forward until its backward, because code may read a
        # root-held module's output off a hook (the reward head), where no pre-backward hook would re-gather it.
        # After a forward with no backward (an evaluation) it stays gathered: call reshard_root before building
        # an optimizer over the parameters.
        fully_shard(model, mesh=mesh)
    logger.info(
        "FSDP: sharded %d blocks%s across %d processes; %s of the parameters are held here",
        len(blocks),
        " and the root" if root else " (the rest stays whole on every process)",
        dist.get_world_size(),
        f"{local_fraction(model):.0%}",
    )
    return model


def reshard_root(model: nn.Module) -> None:
    """Put a sharded model's parameters back to their shards (a no-op if they are): after forwards with no backward,
    the root's stay gathered, and what reads ``model.parameters()`` then (an optimizer) would get the gathered
    copies."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def move_unsharded_to(model: nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers that are not sharded to ``device``, in place (the shards are on their
    mesh's device already): what stays whole after ``shard_model(..., root=False)`` of a model loaded on the host."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not is_sharded_tensor(param) and param.device != device:
                param.data = param.data.to(device)  # the same Parameter object: tied weights stay tied
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.device != device:
                module._buffers[name] = buffer.to(device)


@contextlib.contextmanager
def blocks_gathered(model: nn.Module) -> Iterator[None]:
    """Keep every sharded block whole from its first forward inside until the end (then shard it again).

    For many forwards in a row with no backward (sampling): one all-gather per block instead of one per forward,
    at the cost of holding the whole model meanwhile. Collective.
    """
    from torch.distributed.fsdp import FSDPModule

    blocks = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for block in blocks:
        block.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for block in blocks:
            block.reshard()
            block.set_reshard_after_forward(True, recurse=False)


def is_sharded_tensor(tensor: Any) -> bool:
    return isinstance(tensor, _dtensor_type())


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is sharded (the whole model, or its blocks only)."""
    dtensor = _dtensor_type()
    return any(isinstance(p, dtensor) for p in model.parameters())


def local_fraction(model: nn.Module, sharded_only: bool = False) -> float:
    """The share of the model's parameter elements this process stores (1.0 unsharded, about 1/N under FSDP).

    ``sharded_only``: among the sharded parameters alone (the blocks, when only they are sharded).
    """
    dtensor = _dtensor_type()
    total = local = 0
    for param in model.parameters():
        if isinstance(param, dtensor):
            total += param.numel()
            local += param.to_local().numel()
        elif not sharded_only:
            total += param.numel()
            local += param.numel()
    return local / max(total, 1)


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over a mix of sharded and whole gradients. Collective.

    The sharded gradients' squared norms are summed over the processes; the whole ones (all-reduced already, the
    same on every process) are counted once. Same coefficient as torch's: ``max_norm / (norm + 1e-6)``, at most 1.
    """
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if is_sharded_tensor(g)]
    whole = [g for g in grads if not is_sharded_tensor(g)]
    device = (sharded or whole or [torch.zeros(())])[0].device
    sharded_sq = sum((g.float().pow(2).sum() for g in sharded), torch.zeros((), device=device))
    if dist.is_initialized():
        dist.all_reduce(sharded_sq)
    whole_sq = sum((g.float().pow(2).sum() for g in whole), torch.zeros((), device=device))
    total = float((sharded_sq + whole_sq).sqrt())
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef < 1.0:
        for grad in sharded + whole:
            grad.mul_(coef)
    return total


def to_full(tensor: Any) -> Any:
    """A sharded tensor (DTensor) all-gathered into a plain one; anything else as it is. Collective for DTensors."""
    return tensor.full_tensor() if isinstance(tensor, _dtensor_type()) else tensor


def full_trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter (LoRA adapters, heads, or all weights in full fine-tuning), whole, detached,
    contiguous and on the CPU, keyed by its name in the model: what a checkpoint stores. Collective when the model
    is sharded (all processes get it all); a plain read otherwise.

    Only the trainable parameters are gathered (LoRA: a few percent of the model), never the frozen base. Gathered
    tensors are copied: they can be views into one all-gather buffer, which safetensors cannot write. A root left
    gathered by an evaluation is resharded first, so its parameters are gathered (and copied) like the others.
    """
    reshard_root(model)
    return {n: _whole_on_cpu(p.detach()) for n, p in model.named_parameters() if p.requires_grad}


def _whole_on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    if is_sharded_tensor(tensor):
        return tensor.full_tensor().to("cpu", copy=True).contiguous()
    return tensor.to("cpu").contiguous()


def load_full_trainable_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into (possibly sharded) parameters: each process keeps its own shard of each."""
    from torch.distributed.tensor import distribute_tensor

    dtensor = _dtensor_type()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            param = params[name]
            if isinstance(param, dtensor):
                # Every process holds the whole tensor (read from the same file): each cuts its own shard, no traffic.
                shard = distribute_tensor(
                    tensor.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
                )
                param.to_local().copy_(shard.to_local())
            else:
                param.copy_(tensor.to(param.device, param.dtype))


def gathered_model_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """What a stage saves of a sharded model, whole: None for an unsharded one (it saves itself). Collective.

    A peft model: its trainable parameters (the adapters and any trained head), on every process. Full fine-tuning:
    the whole state dict, on rank 0's CPU only (the others get an empty dict).
    """
    if not is_sharded(model):
        return None
    if hasattr(model, "get_base_model"):
        return full_trainable_state_dict(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    reshard_root(model)  # gathered from the shards, not from a root an evaluation left gathered
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # A tied weight (the LM head sharing the embedding) appears under both names here, as two gathered copies;
    # keep the name the model's own state dict would de-duplicate to, as an unsharded save does.
    owned = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in state.items() if name in owned}


def gathered_checkpoint_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """What a checkpoint of a sharded model holds, whole: (trainable tensors, optimizer state); (None, None) for an
    unsharded one (``save_checkpoint`` reads those itself). Collective: every process gathers, one writes."""
    if not is_sharded(model):
        return None, None
    return full_trainable_state_dict(model), full_optimizer_state(model, optimizer)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with whole tensors, keyed by parameter name (any world size can load it). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore :func:`full_optimizer_state`'s dict (keyed by parameter name, whole tensors). Collective.

    Any world size, sharded or not, can load it. An unsharded run's ``optimizer.state_dict()`` is keyed by position
    in that run's parameter groups, which a sharded run cannot rebuild: it is refused by name.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if any(isinstance(key, int) for key in state["state"]):
        raise ValueError(
            "the checkpoint's optimizer state was written by a run without fsdp (keyed by position, not by "
            "parameter name): resume it with fsdp: false, or start over with --overwrite"
        )
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
