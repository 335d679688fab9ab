"""SDPA over packed sequences given their boundaries: one flat row per batch, no filler, no cross-sequence work.

Padding-free batches put several sequences in a row with ``position_ids`` restarting at 0. Plain SDPA
sees that as one long sequence, so transformers builds a block-diagonal mask and every row costs
L^2 attention whatever its blocks; rows were therefore capped at the longest sequence
(``alignment.data.packing.pack_rows``), and their ends hold filler that every linear layer computes (17 % of the
positions in the SFT benchmark's batches). flash-attention's varlen kernels take the boundaries
instead (``cu_seq_lens_q``/``_k``, the kwargs trl's ``DataCollatorWithFlattening`` passes through
``model(**batch)``); this module gives SDPA the same interface, registered with transformers'
``AttentionInterface`` as ``sdpa_varlen``, so a batch becomes ONE row with no filler and each
sequence's attention is its own causal SDPA call, on the CPU and on GPUs without flash-attn.

Written here rather than taken from a library: PyTorch's varlen SDPA (nested jagged tensors) has no
CPU backward kernel, and flex-attention's block masks need compilation to be fast. A call without
``cu_seq_lens_q`` (generation, padded batches) is transformers' plain SDPA, masks included.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from alignment.data.packing import branch_positions
from alignment.modeling.module_utils import unwrap_transformers_model

SDPA_VARLEN = "sdpa_varlen"
# Attention implementations that honour ``cu_seq_lens_q``/``_k``: packed batches may be one flat row.
VARLEN_IMPLEMENTATIONS = frozenset({SDPA_VARLEN, "flash_attention_2", "flash_attention_3", "flash_attention_4"})

_registered = False


def sdpa_varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``(B, H, T, D)`` in, ``(B, T, H, D)`` out."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if cu_seq_lens is None or query.shape[0] != 1 or not causal or key.shape[2] != query.shape[2]:
        if kwargs.get("branch_lengths") is not None:  # plain SDPA would let a block's branches see each other
            raise ValueError("branch_lengths need one flat causal row with cu_seq_lens_q (varlen_kwargs)")
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = _bounds(cu_seq_lens)
    if bounds[0] != 0 or bounds[-1] != query.shape[2]:
        raise ValueError(f"cu_seq_lens {bounds[:3]}...{bounds[-1]} do not cover the row's {query.shape[2]} positions")
    # The mask transformers built from the position restarts is the same block-diagonal causal one. A sliding-window
    # layer (Gemma 2/3, Mistral) and an attention logit cap (Gemma 2) arrive as kwargs and are honoured per sequence.
    window, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    # One split, not a slice per sequence: the backward of a slice writes its gradient into a zero tensor the size of
    # the whole row, so n sequences cost n full-row fills and adds per layer (O(n * row)), where a split's backward
    # is one concatenation. Same numbers; on 9 sequences of ~120 tokens it took SmolLM2-135M's attention forward and
    # backward from 21 to 13 ms a layer in fp32 (the 2-core AMX benchmark host).
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:])]
    # Blocks that hold a shared prefix and its branches (alignment.data.packing.pack_shared_prefixes), checked against
    # the blocks once per forward by varlen_kwargs.
    branch_lengths = kwargs.get("branch_lengths") or [None] * len(lengths)
    outputs = [
        sequence_attention(q, k, v, dropout, scaling, window, softcap, branches)
        for q, k, v, branches in zip(
            query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2), branch_lengths
        )
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def sequence_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout: float,
    scaling: float | None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    branch_lengths: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Causal attention of one sequence, ``(1, H, n, D)``: token i sees j with ``i - window < j <= i``
    (transformers' ``sliding_window_overlay``), and with ``softcap`` the scores pass through
    ``softcap * tanh(scores / softcap)`` before the softmax (Gemma 2; SDPA has no such option, so it runs eagerly,
    as the model's own eager attention does). With ``branch_lengths`` ``(prefix, suffix_1, ...)`` of more than one
    part, the block is a shared prefix and its branches (:func:`prefix_tree_mask`; :func:`branched_attention` where
    neither a window nor a cap applies and the mask would be mostly masked)."""
    n = query.shape[2]
    windowed = bool(sliding_window) and n > sliding_window
    branched = branch_lengths is not None and len(branch_lengths) > 1
    if not softcap and not windowed and not branched:
        if n <= CPU_FP32_ATTENTION_MAX_LENGTH and query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return _fp32_causal_attention(query, key, value, dropout, scaling)
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True)
    if not softcap and not windowed and _mostly_masked(branch_lengths):
        return branched_attention(query, key, value, branch_lengths, dropout, scaling)
    if branched:
        allowed, positions = prefix_tree_mask(branch_lengths, query.device)
    else:
        positions = torch.arange(n, device=query.device)
        allowed = positions[:, None] >= positions[None, :]
    if windowed:
        allowed &= positions[None, :] > positions[:, None] - sliding_window
    if not softcap:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, dropout_p=dropout, scale=scaling)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = softcap * torch.tanh(torch.matmul(query, key.transpose(2, 3)) * scale / softcap)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = F.dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), p=dropout)
    return torch.matmul(probs, value)


def branched_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    branch_lengths: tuple[int, ...],
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """A ``[prefix, suffix_1, ..., suffix_K]`` block (:func:`prefix_tree_mask`'s rule) without its block-sized mask:
    the prefix attends causally to itself, and each suffix in one SDPA call over ``[prefix | suffix]``'s keys.

    The block's mask would score every pair of its tokens, most of them masked (suffixes never see each other):
    ``(p + sum s_k)^2`` scores where ``p^2 + sum s_k (p + s_k)`` are needed, a difference that grows with K (GRPO's
    groups of 8-16 long samples: a block of thousands of tokens). The prefix's keys and values are concatenated to
    each suffix's, so the backward sums their gradients over the suffixes.
    """
    prefix = branch_lengths[0]
    queries, keys, values = (t.split(list(branch_lengths), dim=2) for t in (query, key, value))
    outputs = []
    if prefix:
        outputs.append(
            F.scaled_dot_product_attention(
                queries[0], keys[0], values[0], dropout_p=dropout, scale=scaling, is_causal=True
            )
        )
    for q, k, v in zip(queries[1:], keys[1:], values[1:]):
        n = q.shape[2]
        if prefix:
            k, v = torch.cat([keys[0], k], dim=2), torch.cat([values[0], v], dim=2)
        # Query i (position prefix + i) sees every prefix key and the suffix's keys up to its own.
        allowed = (
            torch.arange(prefix + n, device=q.device)[None, :] <= torch.arange(n, device=q.device)[:, None] + prefix
        )
        outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling))
    return torch.cat(outputs, dim=2)


def _mostly_masked(branch_lengths: tuple[int, ...]) -> bool:
    """Whether a block's full mask would score over twice the pairs its tokens may see, where the per-suffix calls of
    :func:`branched_attention` pay for their overhead. Forward and backward of one layer's attention, 9 heads of 64
    (SmolLM2-135M), fp32, the 2-core AVX-512 host: a pair of 50-token answers to a 120-token prompt 3.9 ms masked
    against 4.4 per suffix (1.5x the pairs needed); 4 answers of 56 to 40: 4.7 against 3.2 (3.0x); 16 of 200 to 40:
    611 against 65 ms."""
    prefix, *suffixes = branch_lengths
    needed = prefix * prefix + sum(n * (prefix + n) for n in suffixes)
    return sum(branch_lengths) ** 2 > 2 * needed


def prefix_tree_mask(branch_lengths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Who may attend to whom in a block laid out ``[prefix, suffix_1, ..., suffix_K]``, and each token's position.

    A token sees the tokens before it in its own part and, in a suffix, the whole prefix: the mask each suffix's
    sequence ``prefix + suffix_k`` would have alone. Positions continue the prefix's in every suffix.
    """
    prefix, *suffixes = branch_lengths
    part = torch.cat(
        [torch.zeros(prefix, dtype=torch.long), *(torch.full((n,), k + 1) for k, n in enumerate(suffixes))]
    ).to(device)
    positions = branch_positions(branch_lengths).to(device)
    order = torch.arange(part.numel(), device=device)
    allowed = (order[:, None] >= order[None, :]) & ((part[None, :] == 0) | (part[None, :] == part[:, None]))
    return allowed, positions


# Under CPU bf16/fp16 autocast, sequences up to this many tokens attend in fp32 (see _fp32_causal_attention).
CPU_FP32_ATTENTION_MAX_LENGTH = 256


def _fp32_causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float, scaling: float | None
) -> torch.Tensor:
    """Causal SDPA of one short sequence in fp32 under CPU autocast, returned in the autocast dtype.

    PyTorch's CPU flash-attention backward is slow in bf16 on short blocks: in a LoRA SFT step of SmolLM2-135M on
    a row of 8 sequences of 90-180 tokens (bf16 autocast, frozen weights in bf16, the 2-core AMX benchmark host),
    attention in fp32 took the step from 2.42 to 2.02 s. From about 300 tokens on, bf16 is the faster (one
    sequence of 9 heads, forward and backward: 256 tokens 3.3 ms either way, 448 tokens 6.9 ms in bf16 and 8.6 ms in
    fp32). It is also the more exact of the two; the output is rounded to the autocast dtype, as autocast's own SDPA
    returns it.
    """
    dtype = torch.get_autocast_dtype("cpu")
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(
            query.float(), key.float(), value.float(), dropout_p=dropout, scale=scaling, is_causal=True
        )
    return out.to(dtype)


def _bounds(cu_seq_lens: torch.Tensor) -> list[int]:
    """``cu_seq_lens`` as Python ints, once per forward (every layer gets the same tensor; a GPU read syncs).

    Memoised on the tensor object itself, so it dies with it. A cache keyed by ``(id, data_ptr)`` returned a freed
    tensor's bounds for a new one that Python and the allocator happened to place at the same id and address.
    """
    bounds = getattr(cu_seq_lens, "_alignment_bounds", None)
    if bounds is None:
        bounds = [int(b) for b in cu_seq_lens.tolist()]
        cu_seq_lens._alignment_bounds = bounds
    return bounds


def register() -> None:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention_forward)
    # Same masks as SDPA: padded batches and generation need them; flat packed rows ignore them.
    AttentionMaskInterface.register(SDPA_VARLEN, sdpa_mask)
    _registered = True


def use_varlen_sdpa(model: torch.nn.Module) -> bool:
    """Switch a decoder model that runs plain SDPA to ``sdpa_varlen``; returns whether its attention is varlen now."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in VARLEN_IMPLEMENTATIONS:
        return True
    if current != "sdpa" or not getattr(model, "_supports_attention_backend", False):
        return False
    register()
    model.set_attn_implementation(SDPA_VARLEN)
    return True


def supports_flat_packing(model: torch.nn.Module) -> bool:
    """Whether packed batches for ``model`` (possibly peft/DDP-wrapped) may be one flat row with boundaries."""

    config = getattr(unwrap_transformers_model(model), "config", None)
    return getattr(config, "_attn_implementation", None) in VARLEN_IMPLEMENTATIONS


def supports_shared_prefixes(model: torch.nn.Module) -> bool:
    """Whether ``model``'s attention honours ``branch_lengths`` (this module's ``sdpa_varlen``; flash-attention's
    varlen kernels would take a shared-prefix block for one causal sequence and let branches see each other)."""

    config = getattr(unwrap_transformers_model(model), "config", None)
    return getattr(config, "_attn_implementation", None) == SDPA_VARLEN


def varlen_kwargs(
    cu_seq_lens: torch.Tensor, branch_lengths: tuple[tuple[int, ...], ...] | None = None
) -> dict[str, Any]:
    """Model-call kwargs describing a flat packed row (the names transformers' flash-attention path reads), and with
    ``branch_lengths`` its shared-prefix blocks (``alignment.data.packing.pack_shared_prefixes``; ``sdpa_varlen``
    only, see :func:`supports_shared_prefixes`)."""
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    kwargs: dict[str, Any] = {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
    }
    if branch_lengths is not None:
        blocks = (cu_seq_lens[1:] - cu_seq_lens[:-1]).tolist()
        if [sum(b) for b in branch_lengths] != blocks:
            raise ValueError(f"branch_lengths {list(branch_lengths)[:3]}... do not match the blocks {blocks[:3]}...")
        kwargs["branch_lengths"] = branch_lengths
    return kwargs
