"""Mixed precision around accelerate's autocast: frozen weights kept at the compute dtype; slow-CPU warning.

Autocast runs a linear layer in bf16 by casting its fp32 weight on every call. torch caches those casts
only for weights that require grad (the autocast weight cache is for leaves with ``requires_grad``), so
the frozen base under LoRA adapters is cast again on every forward: in generation, on every decoded
token, each weight is read in fp32, written and read again in bf16, where a bf16 copy would be read
once at half the bytes. Storing the frozen linear weights in the compute dtype once gives the same
numbers (autocast rounds with the same cast) at half their memory. Weights that are trained, shared
with an embedding (tied LM heads) or quantized, norms, embeddings and the adapters stay as they are.

A tied LM head is the largest weight of a small model (49152 x 576 in SmolLM2-135M) and its cast the
largest in a decode step: 33 ms of a 173 ms bf16 step on the benchmark CPU, against 7 ms for the product
with a bf16 copy. Converting it would convert the input embeddings, and with them the residual stream,
so generation swaps a copy in for its duration instead (``tied_head_copy``, ``head_weight``).

CPUs without native bf16 (AVX2 only: no AVX-512 or AMX) run bf16 matrix products dozens of times
slower than fp32 (1.3 vs 74-118 GFLOP/s for 2048^2 on the 2-core benchmark machine's AVX2 host,
bench/RESULTS.md): asking for bf16 there is almost always a mistake, so the run says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The compute dtype of accelerate's ``mixed_precision`` setting ("no", "bf16", "fp16", ...), or None."""
    return _AUTOCAST_DTYPES.get(str(mixed_precision))


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layer: addmm, which autocast also casts

    return (torch.nn.Linear, Conv1D)


def store_frozen_weights_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Convert the frozen fp32 weights of ``model``'s linear layers to ``dtype`` in place; returns how many.

    Only exact ``nn.Linear`` / ``Conv1D`` modules qualify (bitsandbytes layers subclass ``nn.Linear``),
    and not the LoRA matrices inside them. The model must then only run under autocast to ``dtype``.
    """
    linear_types = _linear_types()
    # A parameter also held by another kind of module (an LM head tied to the input embeddings) is read
    # outside autocast there, so it stays.
    shared = {
        id(param)
        for module in model.modules()
        if type(module) not in linear_types
        for param in module.parameters(recurse=False)
    }
    converted = 0
    for name, module in model.named_modules():
        if type(module) not in linear_types or any(part.startswith("lora_") for part in name.split(".")):
            continue
        for param in module.parameters(recurse=False):
            if param.requires_grad or param.dtype != torch.float32 or id(param) in shared:
                continue
            param.data = param.data.to(dtype)
            converted += param.numel()
    if converted:
        logger.info("frozen linear weights stored in %s: %.1f M parameters", dtype, converted / 1e6)
    return converted


def tied_head_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor | None:
    """A ``dtype`` copy of ``model``'s output embedding weight when it is a plain linear tied to plain, frozen,
    fp32 input embeddings; else None (untied heads are converted by ``store_frozen_weights_in``; a head whose rows
    are trained, e.g. peft's trainable tokens, must be read as it is)."""
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if type(head) is not torch.nn.Linear or type(embeddings) is not torch.nn.Embedding:
        return None
    weight = head.weight
    if weight is not embeddings.weight or weight.requires_grad or weight.dtype != torch.float32:
        return None
    return weight.detach().to(dtype)


@contextlib.contextmanager
def head_weight(head: torch.nn.Module, weight: torch.Tensor | None) -> Iterator[None]:
    """Run the output embedding ``head`` with ``weight`` (None: as it is) inside the block; the tie is restored after.

    Only for passes under autocast to ``weight``'s dtype and without grad: the product is then the same.
    """
    if weight is None:
        yield
        return
    tied = head.weight
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    try:
        yield
    finally:
        head.weight = tied


def cpu_has_fast(dtype: torch.dtype) -> bool:
    """Whether oneDNN on this CPU has native ``dtype`` matrix products (AVX-512 / AMX); fp32 always does."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


# Row lengths of packed batches under CPU bf16/fp16 autocast are rounded up to a multiple of this.
CPU_LOW_PRECISION_ROW_MULTIPLE = 64


def flat_row_multiple(mixed_precision: str, device: torch.device) -> int:
    """What a flat packed row's length is rounded up to (``pack_token_rows(multiple_of=...)``): 64 under bf16/fp16
    autocast on a CPU, else 1 (no filler).

    oneDNN builds a kernel for each new matrix shape, and a training run whose batches come in hundreds of lengths
    slows down as it goes: LoRA steps on rows of 600-900 random tokens (SmolLM2-135M, bf16 autocast, the 2-core AMX
    benchmark host) went from 2.37 s to 3.35 s over 60 steps, and stayed at 2.25 s with the lengths rounded up to
    64 (at most 63 filler tokens, 4 % of those rows on average). fp32 uses MKL's GEMMs, which have no such cost,
    and GPUs are left as they are.
    """
    if device.type == "cpu" and autocast_dtype(mixed_precision) is not None:
        return CPU_LOW_PRECISION_ROW_MULTIPLE
    return 1


def resolve_bf16(choice: bool | str, cpu: bool = False) -> bool:
    """The ``bf16`` setting as a yes or no. ``"auto"``: yes on a GPU with bf16 and on a CPU with AMX (``cpu`` forces
    the CPU's answer), else no.

    On the 2-core benchmark machine's AMX host (2026-12-06, SmolLM2-135M with LoRA), with the fused LoRA layers,
    fp32 attention for short packed sequences and folded sampling weights: a packed SFT step 1.83 s in bf16
    against 3.16 s in fp32, PPO 0.75 against 0.43 episodes/s, the quickstart 10.4 against 13.7 min, learning
    alike (bench/RESULTS.md). Without AMX the CPU's bf16 products are slower (AVX512-BF16: 2.2x fp32's peak, not
    measured end to end since those changes) or emulated (AVX2: dozens of times slower), so ``auto`` stays fp32
    there. The setting's default is ``false``: a recipe whose figures must reproduce on any host stays in fp32.
    """
    if choice != "auto":
        return bool(choice)
    if not cpu and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_amx()


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where oneDNN's bf16 products run."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x; absent: assume no
    return bool(probe()) if probe is not None else False


def warn_if_slow_on_cpu(mixed_precision: str, device: torch.device) -> bool:
    """Log a warning when a CPU run asks for a low precision this CPU computes slowly; returns whether it did."""
    dtype = autocast_dtype(mixed_precision)
    if device.type != "cpu" or dtype is None or cpu_has_fast(dtype):
        return False
    logger.warning(
        "%s autocast on a CPU without native %s support (%s): matrix products will be far slower than fp32. "
        "Run in fp32 here (bf16: false, and no mixed precision in the accelerate config).",
        mixed_precision,
        mixed_precision,
        torch.backends.cpu.get_cpu_capability(),
    )
    return True


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': fp32 on CPU; bf16 on a GPU that has it, else fp32 (fp16 training needs loss scaling)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    aliases = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    key = aliases.get(name, name)
    if key not in _DTYPES:
        raise ValueError(f"dtype: expected auto, bf16, fp16 or fp32, got {name!r}")
    return _DTYPES[key]
