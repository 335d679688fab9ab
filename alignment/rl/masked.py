"""Masked sums, means, variances and whitening over the valid tokens of a batch (pure tensor math).

The conventions of every module here (shapes, masks, fp32) are in :mod:`alignment.rl`.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over positions where ``mask`` is true; masked values never touch the arithmetic.

    Args:
        x: ``(B, T)`` (any shape broadcastable with ``mask``).
        mask: same shape, bool or 0/1.
        dim: reduce over this axis, or over everything when None.

    Returns:
        scalar, or ``x`` reduced over ``dim``.
    """
    valid = torch.where(mask.bool(), x.float(), torch.zeros((), dtype=torch.float32, device=x.device))
    return valid.sum() if dim is None else valid.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over valid positions (TRL ``masked_mean``; verl's "token-mean" loss aggregation).

    An empty mask (or an empty row with ``dim``) gives 0 rather than NaN, so one empty minibatch cannot poison a run.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` bool or 0/1.
        dim: reduce over this axis, or over everything when None.

    Returns:
        scalar, or ``x`` reduced over ``dim``.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid positions (TRL ``masked_var``).

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` bool or 0/1.
        unbiased: Bessel's correction ``n / (n - 1)``. With a single valid element this is undefined and the
            (biased) value 0 is returned instead.

    Returns:
        scalar fp32 variance.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x.float() - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its valid positions only (padding would otherwise shift the mean and shrink the variance).

    Padding does not bias the statistics, and padded positions are 0 in the output.
    ``shift_mean=False`` keeps the original mean (only rescales), as TRL/N-implementation-details do for rewards.

    Args:
        x: ``(B, T)``.
        mask: ``(B, T)`` bool or 0/1.
        shift_mean: subtract the mean (True for advantages).
        eps: added to the variance.

    Returns:
        ``(B, T)`` fp32.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x.float() - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))
