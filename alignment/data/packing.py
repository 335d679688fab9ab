"""Packing sequences into rows without padding: which sequences share a row, and the flat row itself.

A packed row holds several sequences back to back; ``position_ids`` restart at 0 for each, and the
varlen attention (:mod:`alignment.modeling.attention`) keeps each sequence to its own tokens, so no
compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


def pack_rows(lengths: Sequence[int]) -> list[list[int]]:
    """First-fit-decreasing assignment of sequences to rows no longer than the longest sequence.

    Capping rows at the longest sequence keeps attention (quadratic in the row length) no dearer
    than in the padded layout, while the linear layers -- most of the work -- skip the padding.
    """
    capacity = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


class PackedTokens(NamedTuple):
    """``input_ids``/``position_ids`` ``(R, L)``; ``starts`` ``(N,)``: flat index (into R * L) of each sequence's first token.

    ``cu_seq_lens`` ``(N + 1,)`` int32: the sequences' boundaries in a flat row (``flat=True``), else None.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    starts: torch.Tensor
    cu_seq_lens: torch.Tensor | None = None


def pack_token_rows(
    sequences: Sequence[torch.Tensor | Sequence[int]], pad_value: int = 0, flat: bool = False, multiple_of: int = 1
) -> PackedTokens:
    """Sequences packed several to a row (:func:`pack_rows`), positions restarting at 0 for each.

    Call the model with these ``position_ids``, NO attention mask and ``use_cache=False``:
    transformers then builds a block-diagonal causal mask from the restarts
    (``masking_utils.find_packed_sequence_indices``), so no token sees another sequence. The filler
    at a row's end continues the last sequence's positions: it forms no block of its own and, coming
    after every real token of the row, is seen by none of them (causal attention). Decoder-only models only.

    ``flat=True``: all sequences in ONE row, in order, with no filler, and ``cu_seq_lens``; for models
    whose attention takes the boundaries (``alignment.modeling.attention``): pass ``varlen_kwargs(cu_seq_lens)``
    to the model as well. ``multiple_of`` (flat only): the row is rounded up to a multiple of it with one filler
    sequence of ``pad_value`` after the last (its own block in ``cu_seq_lens``, positions from 0, in no ``starts``),
    so batches come in a few row lengths (see ``alignment.core.precision.flat_row_multiple``).
    """
    sequences = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
    lengths = [int(s.numel()) for s in sequences]
    device = sequences[0].device
    if flat:
        real = len(sequences)
        filler = -sum(lengths) % multiple_of
        if filler:
            sequences = [*sequences, torch.full((filler,), pad_value, dtype=torch.long, device=device)]
            lengths = [*lengths, filler]
        bounds = torch.tensor([0, *lengths], dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)
        position_ids = torch.cat([torch.arange(n, device=device) for n in lengths])
        return PackedTokens(torch.cat(sequences).unsqueeze(0), position_ids.unsqueeze(0), bounds[:real].long(), bounds)
    rows = pack_rows(lengths)
    capacity = max(lengths)
    input_ids = torch.full((len(rows), capacity), pad_value, dtype=torch.long, device=device)
    position_ids = torch.zeros(len(rows), capacity, dtype=torch.long, device=device)
    starts = [0] * len(sequences)
    for r, members in enumerate(rows):
        offset = 0
        for i in members:
            input_ids[r, offset : offset + lengths[i]] = sequences[i]
            position_ids[r, offset : offset + lengths[i]] = torch.arange(lengths[i], device=device)
            starts[i] = r * capacity + offset
            offset += lengths[i]
        if offset < capacity:
            position_ids[r, offset:] = lengths[members[-1]] + torch.arange(capacity - offset, device=device)
    return PackedTokens(input_ids, position_ids, torch.tensor(starts, dtype=torch.long, device=device))
