"""rl_math against numbers computed by hand (written out here, not recomputed with the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.rl.controllers import AdaptiveKLController, FixedKLController, LagrangeMultiplier
from alignment.rl.logprobs import entropy_from_logits, first_eos_mask, logprobs_from_logits
from alignment.rl.masked import masked_mean, masked_sum, masked_var, masked_whiten
from alignment.rl.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae_advantages,
    kl_penalty,
    kl_shaped_rewards,
)


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------------------------- GAE


def test_gae_gamma_one_by_hand() -> None:
    # Row 0, lam=0.95: d2 = 1 - 0.8 = 0.2; d1 = 0 + 0.8 - 0.4 = 0.4; d0 = 0 + 0.4 - 0.5 = -0.1
    #   A2 = 0.2; A1 = 0.4 + 0.95 * 0.2 = 0.59; A0 = -0.1 + 0.95 * 0.59 = 0.4605
    # Row 1 (last position is padding, terminal after t=1): d1 = 1.0 - 0.3 = 0.7; d0 = 0.1 + 0.3 - 0.2 = 0.2
    #   A1 = 0.7; A0 = 0.2 + 0.95 * 0.7 = 0.865
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.1, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.4, 0.8], [0.2, 0.3, 77.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    close(advantages, [[0.4605, 0.59, 0.2], [0.865, 0.7, 0.0]])
    close(returns, [[0.9605, 0.99, 1.0], [1.065, 1.0, 0.0]])


def test_gae_discounted_by_hand() -> None:
    # gamma=0.9, lam=0.95 (gamma*lam = 0.855):
    #   d2 = 1 - 0.8 = 0.2; d1 = 0.9 * 0.8 - 0.4 = 0.32; d0 = 0.9 * 0.4 - 0.5 = -0.14
    #   A2 = 0.2; A1 = 0.32 + 0.855 * 0.2 = 0.491; A0 = -0.14 + 0.855 * 0.491 = 0.279805
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.8, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.95)
    close(advantages, [[0.279805, 0.491, 0.2, 0.0]])
    close(returns, [[0.779805, 0.891, 1.0, 0.0]])


def test_gae_has_no_gradient() -> None:
    values = torch.tensor([[0.5, 0.4]], requires_grad=True)
    advantages, returns = gae_advantages(torch.zeros(1, 2), values, torch.ones(1, 2))
    assert not advantages.requires_grad and not returns.requires_grad


# ------------------------------------------------------------------------------------------------- masked statistics


def test_masked_statistics_ignore_padding() -> None:
    # valid values 1, 3, 5: sum 9, mean 3, unbiased var (4 + 0 + 4) / 2 = 4, biased 8 / 3
    x = torch.tensor([[1.0, 3.0, 1000.0], [5.0, -7.0, float("nan")]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    close(masked_sum(x, mask), 9.0)
    close(masked_mean(x, mask), 3.0)
    close(masked_mean(x, mask, dim=1), [2.0, 5.0])
    close(masked_var(x, mask), 4.0)
    close(masked_var(x, mask, unbiased=False), 8.0 / 3.0)


def test_masked_whiten_by_hand() -> None:
    # (x - 3) / 2 -> -1, 0, 1 on valid tokens; 0 on padding. Without mean shift: -1 + 3, 0 + 3, 1 + 3.
    x = torch.tensor([[1.0, 3.0, 1000.0], [5.0, -7.0, 42.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_whiten(x, mask), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]])


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(explained_variance(torch.tensor([[1.0, 2.0, 3.0, -9.0]]), returns, mask), 1.0)
    close(explained_variance(torch.tensor([[2.0, 2.0, 2.0, -9.0]]), returns, mask), 0.0)
    # constant returns have zero variance: explained variance is undefined
    assert math.isnan(float(explained_variance(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2))))


# ------------------------------------------------------------------------------------------------------ logprobs


def test_logprobs_by_hand_with_temperature() -> None:
    # logits [0, ln 3]: p = [1/4, 3/4]. At T=2: [0, ln sqrt 3] -> p0 = 1 / (1 + sqrt 3), log p0 = -1.0050525
    logits = torch.tensor([[0.0, math.log(3.0)]])
    close(logprobs_from_logits(logits, torch.tensor([1])), [math.log(0.75)])
    close(logprobs_from_logits(logits, torch.tensor([0]), temperature=2.0), [-1.0050525])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_gathered_log_softmax(dtype: torch.dtype, temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 11, generator=generator) * 4).to(dtype)
    tokens = torch.randint(0, 11, (2, 3), generator=generator)
    expected = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    before = logits.clone()
    actual = logprobs_from_logits(logits, tokens, temperature)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert torch.equal(logits, before)  # the caller's logits are not modified in place


def test_logprobs_gradient_matches_log_softmax() -> None:
    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    tokens = torch.tensor([3, 0])
    logprobs_from_logits(logits, tokens, 0.5).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits / 0.5, -1).gather(-1, tokens[:, None]).sum().backward()
    torch.testing.assert_close(ours, logits.grad)


def test_entropy_by_hand() -> None:
    # uniform over 4: ln 4 = 1.3862944; p = [1/4, 3/4]: 0.25 ln 4 + 0.75 ln(4/3) = 0.5623351
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]])
    close(entropy_from_logits(logits), [1.3862944, 0.5623351])
    close(entropy_from_logits(torch.zeros(1, 4), temperature=0.3), [1.3862944])


# ------------------------------------------------------------------------------------------------------------ KL


def test_kl_estimators_by_hand() -> None:
    # token 0: p = 0.5, q = 0.25 -> log r = ln 0.5 = -0.693147: k1 = 0.693147, k2 = 0.240227, k3 = -0.5 + 0.693147
    # token 1: p = 0.2, q = 0.4  -> log r = ln 2 = 0.693147:    k1 = -0.693147, k2 = 0.240227, k3 = 1 - 0.693147
    logprobs = torch.log(torch.tensor([0.5, 0.2]))
    ref_logprobs = torch.log(torch.tensor([0.25, 0.4]))
    close(kl_penalty(logprobs, ref_logprobs, "k1"), [0.693147, -0.693147])
    close(kl_penalty(logprobs, ref_logprobs, "k2"), [0.240227, 0.240227])
    close(kl_penalty(logprobs, ref_logprobs, "k3"), [0.193147, 0.306853])
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(logprobs, ref_logprobs, "abs")  # type: ignore[arg-type]


def test_kl_shaped_rewards_score_at_last_valid_token() -> None:
    # beta = 0.1, k1 kl row 0: 0.5, 0, -1 -> rewards -0.05, 0, 0.1 + score 2.0
    #               row 1: -0.5, 0, (pad) -> rewards 0.05, 0 + score -1.0, 0
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 5.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, -40.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    close(kl, [[0.5, 0.0, -1.0], [-0.5, 0.0, 0.0]])
    close(rewards, [[-0.05, 0.0, 2.1], [0.05, -1.0, 0.0]])


def test_kl_shaped_rewards_rejects_empty_response() -> None:
    with pytest.raises(ValueError, match="no valid token"):
        kl_shaped_rewards(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 0.1)


# -------------------------------------------------------------------------------------------------- clipped losses


def test_clipped_policy_loss_two_tokens_one_clipped() -> None:
    # token 0: ratio 1.5, A = 1  -> max(-1.5, -1.2) = -1.2 (clipped, no gradient)
    # token 1: ratio 0.9, A = -2 -> max(1.8, 1.8) = 1.8; d/dlogp = 2 * 0.9 / 2 tokens = 0.9
    # loss = (-1.2 + 1.8) / 2 = 0.3; clipfrac 1/2; approx_kl = 0.5 * (0.164402 + 0.011101) / 2 = 0.0438757
    # k3 = ((0.5 - ln 1.5) + (-0.1 - ln 0.9)) / 2 = (0.094535 + 0.005361) / 2 = 0.049948; ratio mean 1.2
    logprobs = torch.log(torch.tensor([[1.5, 0.9]])).requires_grad_()
    loss, stats = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -2.0]]), torch.ones(1, 2))
    close(loss, 0.3)
    close(stats["clipfrac"], 0.5)
    close(stats["approx_kl"], 0.0438757)
    close(stats["approx_kl_k3"], 0.049948)
    close(stats["ratio_mean"], 1.2)
    loss.backward()
    close(logprobs.grad, [[0.0, 0.9]])


def test_dual_clip_caps_negative_advantage_loss() -> None:
    # ratio 4, A = -1: max(4, -1.2) = 4, capped at -c A = 3
    logprobs = torch.log(torch.tensor([[4.0]]))
    loss, stats = clipped_policy_loss(logprobs, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), dual_clip=3.0)
    close(loss, 3.0)
    close(stats["dual_clipfrac"], 1.0)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(logprobs, torch.zeros(1, 1), -torch.ones(1, 1), torch.ones(1, 1), dual_clip=0.5)


def test_clipped_value_loss_two_tokens_one_clipped() -> None:
    # token 0: v 0.5 -> clipped 0.2: max((0.5-1)^2, (0.2-1)^2) = max(0.25, 0.64) = 0.64
    # token 1: v 0.1 within range: 0.81. loss = 0.5 * (0.64 + 0.81) / 2 = 0.3625, clipfrac 1/2
    loss, clipfrac = clipped_value_loss(
        torch.tensor([[0.5, 0.1]]), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2)
    )
    close(loss, 0.3625)
    close(clipfrac, 0.5)


# --------------------------------------------------------------------------------------- post-EOS never counts


def _everything(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mask = batch["mask"]
    out: dict[str, torch.Tensor] = {}
    rewards, out["kl"] = kl_shaped_rewards(batch["scores"], batch["logprobs"], batch["ref_logprobs"], mask, 0.05)
    out["advantages"], out["returns"] = gae_advantages(rewards, batch["old_values"], mask)
    out["rewards"] = rewards
    whitened = masked_whiten(out["advantages"], mask)
    out["whitened"] = whitened
    out["pg_loss"], stats = clipped_policy_loss(batch["logprobs"], batch["old_logprobs"], whitened, mask, dual_clip=3.0)
    out.update({f"pg_{name}": value for name, value in stats.items()})
    out["vf_loss"], out["vf_clipfrac"] = clipped_value_loss(batch["values"], batch["old_values"], out["returns"], mask)
    out["explained_variance"] = explained_variance(batch["old_values"], out["returns"], mask)
    out["entropy"] = masked_mean(entropy_from_logits(batch["logits"]), mask)
    out["kl_k3"] = masked_mean(kl_penalty(batch["logprobs"], batch["ref_logprobs"], "k3"), mask)
    return out


@pytest.mark.parametrize("junk", [1e6, -1e6, float("nan"), float("inf")])
def test_post_eos_values_never_enter_losses_or_stats(junk: float) -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[5, 6, 2, 7, 7], [5, 6, 7, 8, 9], [2, 9, 9, 9, 9]])
    mask, _ = first_eos_mask(tokens, eos_token_ids=2, pad_token_id=0)
    batch = {name: -torch.rand(3, 5, generator=generator) for name in ("logprobs", "ref_logprobs", "old_logprobs")}
    batch.update(values=torch.randn(3, 5, generator=generator), old_values=torch.randn(3, 5, generator=generator))
    batch.update(
        logits=torch.randn(3, 5, 7, generator=generator), scores=torch.randn(3, generator=generator), mask=mask
    )
    reference = _everything(batch)

    corrupted = {name: tensor.clone() for name, tensor in batch.items()}
    for name in ("logprobs", "ref_logprobs", "old_logprobs", "values", "old_values"):
        corrupted[name][~mask] = junk
    corrupted["logits"][~mask] = junk
    corrupted["logprobs"].requires_grad_()
    corrupted["values"].requires_grad_()
    result = _everything(corrupted)
    for name, expected in reference.items():
        torch.testing.assert_close(result[name].detach(), expected, msg=name, equal_nan=True)
    (result["pg_loss"] + result["vf_loss"]).backward()
    for grad in (corrupted["logprobs"].grad, corrupted["values"].grad):
        assert torch.isfinite(grad).all()
        assert (grad[~mask] == 0).all()


# ------------------------------------------------------------------------------------------------------- EOS mask


def test_first_eos_mask() -> None:
    tokens = torch.tensor(
        [
            [5, 2, 0, 0],  # EOS at 1, then padding
            [5, 6, 7, 8],  # truncated, no EOS
            [2, 0, 0, 0],  # empty answer: the EOS itself is the response
            [5, 6, 0, 0],  # truncated then right-padded
            [5, 3, 7, 2],  # second EOS id (end-of-turn) comes first
        ]
    )
    mask, has_eos = first_eos_mask(tokens, eos_token_ids=[2, 3], pad_token_id=0)
    expected = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert mask.tolist() == [[bool(v) for v in row] for row in expected]
    assert has_eos.tolist() == [True, False, True, False, True]


def test_first_eos_mask_when_pad_is_eos() -> None:
    mask, has_eos = first_eos_mask(torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]]), eos_token_ids=2, pad_token_id=2)
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------------- controllers


def test_fixed_kl_controller() -> None:
    controller = FixedKLController(0.05)
    assert controller.update(100.0, 64) == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.05


def test_adaptive_kl_controller_by_hand() -> None:
    # beta 0.2, target 6, horizon 10000, n = 100:
    #   KL 7  -> e = 7/6 - 1 = 0.166667 -> 0.2 * (1 + 0.166667 * 0.01) = 0.2003333
    #   KL 12 -> e = 1 clipped to 0.2   -> 0.2 * 1.002 = 0.2004
    #   KL 0  -> e = -1 clipped to -0.2 -> 0.2 * 0.998 = 0.1996
    for kl, expected in ((7.0, 0.2003333), (12.0, 0.2004), (0.0, 0.1996)):
        controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
        assert controller.update(kl, 100) == pytest.approx(expected, abs=1e-7)
    restored = AdaptiveKLController(1.0, 1.0, 1.0)
    restored.load_state_dict(controller.state_dict())
    assert (restored.value, restored.target, restored.horizon) == (controller.value, 6.0, 10000.0)
    assert restored.update(12.0, 100) == pytest.approx(0.1996 * 1.002, abs=1e-7)


def test_lagrange_multiplier_by_hand() -> None:
    # log lambda = 0, lr 0.1, d = 0.5.
    #   J_C = 1.5: grad = 1 * (1.5 - 0.5) = 1 -> log lambda = 0.1 -> lambda = e^0.1 = 1.1051709
    #   J_C = 0.0: grad = 1.1051709 * (-0.5) -> log lambda = 0.1 - 0.0552585 = 0.0447415 -> lambda = 1.0457574
    multiplier = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.5)
    assert multiplier.update(1.5) == pytest.approx(1.1051709, abs=1e-7)
    assert multiplier.update(0.0) == pytest.approx(math.exp(0.1 - 0.05), abs=1e-7)  # 1.0512711
    restored = LagrangeMultiplier(init=3.0, lr=1.0)
    restored.load_state_dict(multiplier.state_dict())
    assert restored.value == multiplier.value and restored.threshold == 0.5 and restored.lr == 0.1
    # lambda stays positive however far the cost is below the threshold, and is capped by max_value
    assert restored.update(-1e3) > 0.0
    # A cost held above the threshold grows lambda geometrically, not explosively: exp(0.1 * 0.5 * 100) after 100.
    held = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0)
    for _ in range(100):
        value = held.update(0.5)
    assert value == pytest.approx(math.exp(5.0), rel=1e-9)
    capped = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.5, max_value=1.05)
    assert capped.update(1.5) == pytest.approx(1.05)
    with pytest.raises(ValueError, match="init"):
        LagrangeMultiplier(init=0.0)
