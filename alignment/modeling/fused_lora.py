"""LoRA linear layers made cheaper where peft's forward is slow: under CPU autocast, one autograd function (one cast
of the input, one fused add); for sampling, the adapter folded into a copy of the weight (:func:`merged_for_sampling`).

peft's LoRA forward under autocast, per layer: the base product (autocast casts the input to bf16), the input cast
again for ``lora_A`` (autocast caches casts of weights, not of activations), ``lora_B``, the output multiplied by the
scaling, and the sum, each a pass over the whole output; the backward mirrors them, and the input's gradient arrives
from both paths and is added. On a 2-core CPU those passes over activations cost more than the LoRA products
themselves (in a LoRA SFT step of SmolLM2-135M on a 1,088-token row under bf16 autocast, the casts, scalings and
sums took about a third of the step's time, the 210 LoRA products about a tenth). Here the input is cast once, the
scaling is applied to the rank-r intermediate, and the low-rank product is added into the base output by the same
``addmm`` that computes it, in both directions (the LoRA paper's ``h = W0 x + (alpha / r) B A x``, Hu et al. 2021).

The numbers differ from peft's by rounding only (the sum is rounded once instead of three times), so it is used
where autocast already rounds: CPU bf16/fp16 autocast. fp32 runs and GPUs keep peft's forward unchanged; so does any
layer this does not cover (several active adapters, dropout, DoRA and other variants, a LoRA bias, a quantized or
trained base weight), which falls back to peft's own forward call by call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.layer import LoraLayer

logger = logging.getLogger(__name__)


class _LoRALinear(torch.autograd.Function):
    """``y = x W^T + b + s (x A^T) B^T`` in ``dtype``; gradients for ``x``, ``A`` and ``B`` (``W`` and ``b`` frozen)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            a, b = lora_a.to(dtype), lora_b.to(dtype)
            w = weight.to(dtype)
            low = flat @ a.t()  # (tokens, r)
            if bias is None:
                out = flat @ w.t()
            else:
                out = torch.addmm(bias.to(dtype), flat, w.t())
            out.addmm_(low, b.t(), alpha=scaling)
        ctx.save_for_backward(flat, low, w, a, b)
        ctx.scaling, ctx.input_dtype, ctx.input_shape = scaling, x.dtype, x.shape
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        flat, low, w, a, b = ctx.saved_tensors
        scaling = ctx.scaling
        grad = grad_out.reshape(-1, grad_out.shape[-1]).to(flat.dtype)
        grad_low = (grad @ b).mul_(scaling)  # (tokens, r)
        grad_a = grad_b = grad_x = None
        if ctx.needs_input_grad[4]:
            grad_b = torch.mm(grad.t(), low).mul_(scaling).to(ctx.b_dtype)
        if ctx.needs_input_grad[3]:
            grad_a = torch.mm(grad_low.t(), flat).to(ctx.a_dtype)
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ w).addmm_(grad_low, a).to(ctx.input_dtype).reshape(ctx.input_shape)
        return grad_x, None, None, grad_a, grad_b, None, None


class FusedLoraLinear(PeftLoraLinear):
    """peft's ``lora.Linear`` with :class:`_LoRALinear` as its forward where it applies (see the module docstring).

    Installed by swapping the class of existing layers (:func:`use_fused_lora`), so every isinstance check, state
    dict, save, merge and adapter switch of peft sees the layer it made.
    """

    # Set only inside :func:`merged_for_sampling`: the base weight with the active adapter folded in.
    merged_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.merged_weight is not None and not args and not kwargs:
            if torch.is_grad_enabled():
                raise RuntimeError("a LoRA layer folded for sampling (merged_for_sampling) was run with autograd on")
            return torch.nn.functional.linear(x, self.merged_weight, self.base_layer.bias)
        adapter = None if args or kwargs else self._fused_adapter(x)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        return _LoRALinear.apply(
            x,
            base.weight,
            base.bias,
            self.lora_A[adapter].weight,
            self.lora_B[adapter].weight,
            self.scaling[adapter],
            torch.get_autocast_dtype("cpu"),
        )

    def _fused_adapter(self, x: torch.Tensor) -> str | None:
        """The one active plain-LoRA adapter when the fused path computes what peft's does, else None."""
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or self.disable_adapters:
            return None
        active = self.active_adapters
        if len(active) != 1 or not self._plain_adapter(active[0]):
            return None
        dropout = self.lora_dropout[active[0]]
        if not isinstance(dropout, torch.nn.Identity) and (dropout.training and dropout.p > 0):
            return None
        base = self.base_layer  # frozen: the function returns no gradient for it
        if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None
        return active[0]

    def _plain_adapter(self, adapter: str) -> bool:
        """Whether ``adapter`` is a plain LoRA update (no variant such as DoRA, no bias) of a plain, unmerged linear
        layer: what both the fused function and the folded weight compute."""
        return (
            adapter in self.lora_A
            and adapter not in self.lora_variant
            and self.lora_B[adapter].bias is None
            and type(self.base_layer) is torch.nn.Linear
            and not self.fan_in_fan_out
            and not self.merged
        )


def use_fused_lora(model: torch.nn.Module) -> int:
    """Give every plain peft ``lora.Linear`` of ``model`` the fused forward; returns how many layers (idempotent)."""
    swapped = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = FusedLoraLinear
            swapped += 1
    if swapped:
        logger.debug("fused LoRA forward under CPU autocast on %d layers", swapped)
    return swapped


@contextlib.contextmanager
def merged_for_sampling(model: torch.nn.Module, adapter: str, dtype: torch.dtype) -> Iterator[bool]:
    """Inside the block, every LoRA layer of ``model`` runs one product with ``W + (alpha / r) B A`` of ``adapter``,
    in ``dtype``; yields whether it does (False, and nothing changes, where some LoRA layer cannot fold it: a
    quantized base, DoRA, a LoRA bias, a layer peft has merged already).

    For sampling only (no gradient reaches the adapter through the folded weight). Decoding a few tokens at a time
    is bound by reading the weights and by the count of operators; an unmerged LoRA layer adds three products and a
    sum for every token. For 8 answers of 48 tokens from SmolLM2-135M with LoRA on every linear layer (the 2-core AMX
    benchmark host), sampling took 5.85 s with the adapters and 3.85 s folded, in bf16; 6.79 and 5.63 s in fp32. The
    folded copy costs one more copy of the adapted weights in ``dtype`` (212 MB in bf16 at 135M) while the block
    runs, and is rebuilt on every entry, so it always holds the adapter's current weights. The logits differ from the
    unmerged layers' by rounding: where that matters (fp32 runs that reuse the sampling log-probs), do not fold.
    """
    layers = [module for module in model.modules() if isinstance(module, LoraLayer) and adapter in module.lora_A]
    if not layers or not all(type(layer) is FusedLoraLinear and layer._plain_adapter(adapter) for layer in layers):
        yield False
        return
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.base_layer.weight
                delta = layer.lora_B[adapter].weight.float() @ layer.lora_A[adapter].weight.float()
                layer.merged_weight = (weight.float() + layer.scaling[adapter] * delta).to(dtype)
        yield True
    finally:
        for layer in layers:
            layer.merged_weight = None
