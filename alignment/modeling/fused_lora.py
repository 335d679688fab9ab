"""A LoRA linear layer under CPU autocast as one autograd function: one cast of the input, one fused add.

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

import logging
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear

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

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
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
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or self.disable_adapters or self.merged:
            return None
        active = self.active_adapters
        if len(active) != 1 or active[0] not in self.lora_A or active[0] in self.lora_variant:
            return None
        adapter = active[0]
        dropout = self.lora_dropout[adapter]
        if not isinstance(dropout, torch.nn.Identity) and (dropout.training and dropout.p > 0):
            return None
        base = self.base_layer
        if type(base) is not torch.nn.Linear or base.weight.requires_grad or self.fan_in_fan_out:
            return None
        if (base.bias is not None and base.bias.requires_grad) or self.lora_B[adapter].bias is not None:
            return None
        return adapter


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
