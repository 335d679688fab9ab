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


class SharedPrefixTokens(NamedTuple):
    """One flat row of groups, each group's common prefix computed once (:func:`pack_shared_prefixes`).

    ``last_token_index`` ``(N,)``: flat index of each sequence's last token, in the order given. ``cu_seq_lens``
    ``(B + 1,)`` int32: the blocks' boundaries, one block per group (and one for the filler). ``branch_lengths``: per
    block, ``(prefix, suffix_1, ..., suffix_K)``; a block of one length is an ordinary causal sequence.
    ``num_tokens``: the positions the model computes (filler excluded). ``token_index``: per sequence, in the order
    given, the flat index of each of its tokens (its prefix's, then its suffix's).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    last_token_index: torch.Tensor
    cu_seq_lens: torch.Tensor
    branch_lengths: tuple[tuple[int, ...], ...]
    num_tokens: int
    token_index: tuple[torch.Tensor, ...]


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares, kept below the shortest one's length so that each sequence
    keeps at least its last token (where a reward is read) outside the shared part."""
    shortest = min(len(s) for s in sequences)
    length = 0
    while length < shortest - 1 and all(s[length] == sequences[0][length] for s in sequences[1:]):
        length += 1
    return length


def group_by_common_prefix(sequences: Sequence[Sequence[int]], min_shared: int) -> list[list[int]]:
    """Indices of ``sequences`` in groups whose members all open with the same ``min_shared`` tokens or more (sorted,
    then cut where the group's common prefix would fall below ``min_shared``); a group of one shares nothing."""
    order = sorted(range(len(sequences)), key=lambda i: list(sequences[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups and common_prefix_length([sequences[groups[-1][0]], sequences[i]]) >= min_shared:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def branch_positions(branch_lengths: Sequence[int]) -> torch.Tensor:
    """Position ids of a ``[prefix, suffix_1, ..., suffix_K]`` block: every suffix continues the prefix's."""
    prefix, *suffixes = branch_lengths
    return torch.cat([torch.arange(prefix), *(torch.arange(prefix, prefix + n) for n in suffixes)])


def pack_shared_prefixes(
    groups: Sequence[Sequence[Sequence[int]]], pad_value: int = 0, multiple_of: int = 1
) -> SharedPrefixTokens:
    """Groups of sequences in ONE flat row, each group laid out as its common prefix followed by every sequence's
    own suffix: ``[prefix, suffix_1, ..., suffix_K]``.

    Suffix k's positions continue the prefix's (``prefix, prefix + 1, ...``), and the attention
    (``alignment.modeling.attention``, given ``varlen_kwargs(cu_seq_lens, branch_lengths)``) lets it see the prefix
    and itself only, so every token gets the hidden state it has in its own sequence: the K responses to one prompt
    share the prompt's computation (forward and backward) instead of repeating it K times. ``multiple_of``: as in
    :func:`pack_token_rows`.
    """
    tokens: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    branches: list[tuple[int, ...]] = []
    token_index: list[torch.Tensor] = []
    offset = 0
    for group in groups:
        rows = [[int(t) for t in s] for s in group]
        if len(rows) == 1:  # an ordinary causal sequence: all prefix, no branches
            prefix, suffixes = len(rows[0]), []
        else:
            prefix = common_prefix_length(rows)
            suffixes = [row[prefix:] for row in rows]
        tokens.append(torch.tensor(rows[0][:prefix] + [t for s in suffixes for t in s], dtype=torch.long))
        positions.append(branch_positions((prefix, *(len(s) for s in suffixes))))
        shared = torch.arange(offset, offset + prefix)
        offset += prefix
        if not suffixes:
            token_index.append(shared)
        for suffix in suffixes:
            token_index.append(torch.cat([shared, torch.arange(offset, offset + len(suffix))]))
            offset += len(suffix)
        branches.append((prefix, *(len(s) for s in suffixes)))
    num_tokens = offset
    filler = -num_tokens % multiple_of
    if filler:
        tokens.append(torch.full((filler,), pad_value, dtype=torch.long))
        positions.append(torch.arange(filler))
        branches.append((filler,))
    bounds = torch.tensor([0, *(sum(b) for b in branches)], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return SharedPrefixTokens(
        torch.cat(tokens).unsqueeze(0),
        torch.cat(positions).unsqueeze(0),
        torch.stack([index[-1] for index in token_index]),
        bounds,
        tuple(branches),
        num_tokens,
        tuple(token_index),
    )
