"""Reward batches: every one of a comparison's K responses tokenized as prompt + response, with ``group_ids`` and
``ranks`` so the loss forms every pair of a group in one forward (InstructGPT, Ouyang et al. 2022, sec. 3.5).

Rows are truncated from the LEFT (the prompt's start goes; the reward is read at the response's end-of-turn token).
Padded, packed without padding, or with each comparison's prompt computed once for all its responses
(:func:`alignment.data.packing.pack_shared_prefixes`). Scoring uses :func:`tokenize_reward_texts`, so a reward model
sees the same tokens when it is trained and when it scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alignment.data.chat_template import has_chat_template, render_reward_texts
from alignment.data.collate import encode_left_truncated, pad_rows, row_attention_mask, tokenizer_pad_id
from alignment.data.packing import pack_shared_prefixes, pack_token_rows
from data_schemas.records import Comparison


class RewardCollator:
    """Batches :class:`Comparison` s: all K responses of each record, flattened to N = sum of K rows.

    Returns ``input_ids`` (N, T) right-padded, ``attention_mask`` (N, T), ``group_ids`` (N,) (the
    record's position in the batch), ``ranks`` (N,) (0 = best; equal = tie), ``last_token_index``
    (N,) (where the reward is read) and ``num_truncated`` (0-dim). Rows longer than ``max_length``
    are truncated from the LEFT (the prompt's start goes, the response's end stays);
    ``self.num_truncated`` counts them over the collator's life.

    ``padding_free=True`` (decoder-only models): ``input_ids``/``position_ids`` (R, L) from
    :func:`pack_token_rows` instead of the padded rows and mask, ``last_token_index`` (N,) as a flat
    index into R * L, and ``num_tokens`` (0-dim); with ``flat_rows`` one row and ``cu_seq_lens``
    (see :class:`alignment.data.collate.SFTCollator`, also for ``row_multiple``). ``share_prompts`` (with ``flat_rows``; attention that
    honours ``branch_lengths``): each record's responses share the tokens they have in common (its prompt), computed
    once (:func:`pack_shared_prefixes`: its fields are the batch's keys, ``branch_lengths`` for ``varlen_kwargs``).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        padding_free: bool = False,
        flat_rows: bool = False,
        row_multiple: int = 1,
        share_prompts: bool = False,
    ) -> None:
        tokenizer_pad_id(tokenizer)  # fail at construction, not at the first batch
        if share_prompts and not (padding_free and flat_rows):
            raise ValueError("share_prompts needs padding_free and flat_rows (one flat row with boundaries)")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding_free = padding_free
        self.flat_rows = flat_rows
        self.row_multiple = row_multiple
        self.share_prompts = share_prompts
        self.num_truncated = 0

    def __call__(self, comparisons: Sequence[Comparison]) -> dict[str, torch.Tensor]:
        if not comparisons:
            raise ValueError("cannot collate an empty batch")
        texts, group_ids, ranks = [], [], []
        for group, comparison in enumerate(comparisons):
            for response, rank in zip(comparison.responses, comparison.ranks, strict=True):
                texts.append(render_reward_texts(self.tokenizer, comparison.prompt, response))
                group_ids.append(group)
                ranks.append(rank)
        batch = tokenize_reward_texts(self.tokenizer, texts, self.max_length)
        self.num_truncated += int(batch["num_truncated"])
        if self.share_prompts:  # one group per record: its K responses are consecutive rows
            lengths = batch.pop("attention_mask").sum(dim=1).tolist()
            rows = iter(row[:n] for row, n in zip(batch.pop("input_ids").tolist(), lengths))
            groups = [[next(rows) for _ in c.responses] for c in comparisons]
            shared = pack_shared_prefixes(groups, tokenizer_pad_id(self.tokenizer), self.row_multiple)._asdict()
            batch.update({k: v for k, v in shared.items() if k != "token_index"})
        elif self.padding_free:
            lengths = batch.pop("attention_mask").sum(dim=1)
            padded = batch.pop("input_ids")
            packed = pack_token_rows(
                [row[:n] for row, n in zip(padded, lengths.tolist())],
                tokenizer_pad_id(self.tokenizer),
                flat=self.flat_rows,
                multiple_of=self.row_multiple,
            )
            batch.update(
                input_ids=packed.input_ids,
                position_ids=packed.position_ids,
                last_token_index=packed.starts + lengths - 1,
                num_tokens=lengths.sum(),
            )
            if packed.cu_seq_lens is not None:
                batch["cu_seq_lens"] = packed.cu_seq_lens
        batch["group_ids"] = torch.tensor(group_ids, dtype=torch.long)
        batch["ranks"] = torch.tensor(ranks, dtype=torch.long)
        return batch


def tokenize_reward_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize :func:`render_reward_texts` outputs exactly as :class:`RewardCollator` does (use it when scoring).

    Returns ``input_ids`` (N, T) right-padded, ``attention_mask`` (N, T), ``last_token_index`` (N,)
    and ``num_truncated`` (0-dim). Rows are truncated from the LEFT (keeping a leading BOS/CLS);
    the tokenizer adds its own special tokens only for the plain-text fallback.
    """
    add_special = not has_chat_template(tokenizer)
    rows, num_truncated = encode_left_truncated(tokenizer, list(texts), max_length, add_special)
    attention_mask = row_attention_mask(rows, "right")
    return {
        "input_ids": pad_rows(rows, tokenizer_pad_id(tokenizer), "right"),
        "attention_mask": attention_mask,
        "last_token_index": attention_mask.sum(dim=1) - 1,
        "num_truncated": torch.tensor(num_truncated),
    }
