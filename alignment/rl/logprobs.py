"""Log-probabilities, entropy and the valid-token mask of sampled responses (pure tensor math).

The conventions of every module here (shapes, masks, fp32) are in :mod:`alignment.rl`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _scaled_fp32_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 ``logits / temperature`` with at most one new full-vocab tensor."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dtype != torch.float32:
        # .float() already made a fresh copy, so dividing it in place is safe (ToCopy's backward does not need it).
        scaled = logits.float()
        return scaled.div_(temperature) if temperature != 1.0 else scaled
    return logits / temperature if temperature != 1.0 else logits


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of ``tokens`` under ``softmax(logits / temperature)``, in fp32.

    The rollout was sampled from ``softmax(logits / T)``, so the logprobs of the policy and the reference must be
    recomputed at the same T, or the KL is biased (negative KL; TRL divides the logits by the temperature too).
    Uses ``log p(y) = z_y - logsumexp(z)`` instead of a full ``log_softmax``: besides the fp32 scaled logits, only the
    ``(...,)``-shaped results are kept.

    Args:
        logits: ``(..., V)`` any float dtype, already aligned with ``tokens`` (i.e. logits at position t predict token t).
        tokens: ``(...)`` integer token ids.
        temperature: sampling temperature T > 0.

    Returns:
        ``(...)`` fp32 log-probabilities.
    """
    scaled = _scaled_fp32_logits(logits, temperature)
    token_logits = scaled.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return token_logits - torch.logsumexp(scaled, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` along the last axis, in fp32.

    ``H = logsumexp(z) - sum_v p_v z_v`` (equivalent to ``-sum p log p``, without materialising ``log p``).

    Args:
        logits: ``(..., V)``.
        temperature: T > 0.

    Returns:
        ``(...)`` fp32 entropies in nats.
    """
    scaled = _scaled_fp32_logits(logits, temperature)
    probs = torch.softmax(scaled, dim=-1)
    return torch.logsumexp(scaled, dim=-1) - (probs * scaled).sum(dim=-1)


def first_eos_mask(
    response_tokens: torch.Tensor,
    eos_token_ids: int | Sequence[int],
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-token mask of generated responses: 1 up to and including the first EOS, 0 after (padding and anything sampled past EOS never reach a loss).

    A row without EOS (truncated at ``max_new_tokens``) is valid up to, excluding, its first ``pad_token_id`` (right
    padding added when rollouts of different lengths are stacked); ``has_eos`` is False for it so the caller can apply
    the missing-EOS penalty (TRL ``missing_eos_penalty``). When ``pad_token_id`` is itself an EOS id, padding cannot be
    told from an EOS and the first one counts as the EOS.

    Args:
        response_tokens: ``(B, T)`` generated token ids (prompt removed).
        eos_token_ids: one id or several (chat models often stop on both ``eos`` and an end-of-turn token).
        pad_token_id: the padding id, or None when rows are never padded.

    Returns:
        ``(response_mask, has_eos)``: ``(B, T)`` bool and ``(B,)`` bool.
    """
    eos_ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    eos_tensor = torch.tensor(eos_ids, dtype=response_tokens.dtype, device=response_tokens.device)
    is_eos = torch.isin(response_tokens, eos_tensor)
    is_stop = is_eos
    if pad_token_id is not None:
        is_stop = is_stop | (response_tokens == pad_token_id)
    # Tokens before the first stop token are valid; the stop token itself is valid only when it is an EOS.
    stops_before = torch.cumsum(is_stop.int(), dim=-1) - is_stop.int()
    before_first_stop = stops_before == 0
    first_stop = before_first_stop & is_stop
    response_mask = before_first_stop & (~is_stop | is_eos)
    has_eos = (first_stop & is_eos).any(dim=-1)
    return response_mask, has_eos
