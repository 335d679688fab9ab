"""The fused LoRA forward under CPU autocast computes peft's LoRA layer (outputs and every gradient), and every case it
does not cover falls back to peft's own forward."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from alignment.modeling.fused_lora import FusedLoraLinear, merged_for_sampling, use_fused_lora


class Tiny(torch.nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 40, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def lora_pair(dropout: float = 0.0, bias: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two copies of one LoRA model, the second fused, with a nonzero B (peft starts B at zero)."""
    torch.manual_seed(0)
    model = get_peft_model(Tiny(bias), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    fused = copy.deepcopy(model)
    assert use_fused_lora(fused) == 1 and use_fused_lora(fused) == 0
    return model, fused


def run(model: torch.nn.Module, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    model.zero_grad()
    return out, grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


@pytest.mark.parametrize("bias", [True, False])
def test_fused_forward_matches_peft_under_bf16_autocast(bias):
    peft_model, fused = lora_pair(bias=bias)
    x = torch.randn(2, 7, 48)
    exact, exact_grads = run(peft_model, x, autocast=False)  # fp32: the reference both approximate
    ours, our_grads = run(fused, x, autocast=True)
    theirs, their_grads = run(peft_model, x, autocast=True)
    assert ours.dtype == theirs.dtype == torch.bfloat16 and ours.shape == theirs.shape
    assert (
        sorted(our_grads)
        == sorted(their_grads)
        == ["base_model.model.proj.lora_A.default.weight", "base_model.model.proj.lora_B.default.weight", "input"]
    )
    # Both are fp32 rounded through bf16: the fused one rounds its sum once, peft's three times.
    assert relative_error(ours, exact) <= relative_error(theirs, exact) + 1e-3
    assert relative_error(ours, exact) < 1e-2
    for name, grad in our_grads.items():
        assert grad.dtype == their_grads[name].dtype
        assert relative_error(grad, exact_grads[name]) < 2e-2, name


def test_fp32_and_uncovered_layers_take_pefts_forward_exactly():
    x = torch.randn(3, 48)
    peft_model, fused = lora_pair()
    ours, our_grads = run(fused, x, autocast=False)  # fp32: peft's forward, bit for bit
    theirs, their_grads = run(peft_model, x, autocast=False)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], atol=0, rtol=0)
    peft_model, fused = lora_pair(dropout=0.5)  # dropout in training: peft's forward (same seed, same mask)
    torch.manual_seed(1)
    ours, _ = run(fused, x, autocast=True)
    torch.manual_seed(1)
    theirs, _ = run(peft_model, x, autocast=True)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    layer = fused.base_model.model.proj
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._fused_adapter(x) is None
        fused.eval()  # dropout off: the fused path again
        assert layer._fused_adapter(x) == "default"
        with fused.disable_adapter():
            assert layer._fused_adapter(x) is None


def test_the_fused_path_is_taken_only_under_cpu_autocast_with_one_plain_adapter():
    _, fused = lora_pair()
    layer = fused.base_model.model.proj
    assert isinstance(layer, FusedLoraLinear)
    x = torch.randn(2, 48)
    assert layer._fused_adapter(x) is None  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer._fused_adapter(x) == "default"
        fused.add_adapter("other", LoraConfig(r=2, target_modules=["proj"]))
        fused.set_adapter("other")
        assert layer._fused_adapter(x) == "other"
        layer.base_layer.weight.requires_grad_(True)  # a trained base weight needs its own gradient
        assert layer._fused_adapter(x) is None


def test_sampling_from_the_folded_weight_matches_the_adapter_and_leaves_nothing_behind():
    peft_model, fused = lora_pair()
    layer = fused.base_model.model.proj
    x = torch.randn(5, 48)
    with torch.no_grad():
        unfolded = fused(x)
        with merged_for_sampling(fused, "default", torch.float32) as folded:
            assert folded and layer.merged_weight is not None
            inside = fused(x)
            with pytest.raises(RuntimeError, match="autograd on"), torch.enable_grad():
                fused(x)
        assert layer.merged_weight is None
        torch.testing.assert_close(inside, unfolded, atol=1e-5, rtol=1e-5)
        assert not torch.equal(inside, layer.base_layer(x))  # the adapter is in it
        # bf16: the folded weight rounded once, within bf16's rounding of the fp32 result.
        with merged_for_sampling(fused, "default", torch.bfloat16), torch.autocast("cpu", dtype=torch.bfloat16):
            assert relative_error(fused(x), unfolded) < 1e-2
    # A layer that cannot fold (DoRA) leaves the whole model as it is.
    torch.manual_seed(0)
    dora = get_peft_model(Tiny(), LoraConfig(r=4, target_modules=["proj"], use_dora=True))
    use_fused_lora(dora)
    with merged_for_sampling(dora, "default", torch.float32) as folded:
        assert not folded and dora.base_model.model.proj.merged_weight is None
