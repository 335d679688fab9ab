"""Records -> model inputs: chat-template rendering, assistant-only SFT labels, reward groups, prompts.

What
----
- :func:`render_sft_example` turns a :class:`Demonstration` into ``input_ids`` and ``labels`` where
  only the assistant turns are learned: every assistant content token *and* the end-of-turn token
  that closes it (``<|im_end|>`` for ChatML; the model must learn to stop). System/user turns and
  template scaffolding such as ``<|im_start|>assistant\\n`` get ``-100``.
- :class:`SFTCollator` pads a batch (right padding) or packs it padding-free into one row whose
  ``position_ids`` restart at 0 per example, so transformers builds a block-diagonal causal mask.
- Reward groups (all K responses of a :class:`Comparison`) are batched in :mod:`alignment.data.reward_batches`,
  with this module's row helpers.
- :func:`render_prompt` / :class:`PromptCollator` build left-padded prompt batches for generation.

Truncation policy (SFT)
-----------------------
The *prompt* is everything before the first learned token. If it alone is ``>= max_length`` the
example is rejected with reason ``"prompt_too_long"`` (logged by :func:`tokenize_demonstrations`, never silently
trained on). Otherwise the example is truncated from the right and marked ``truncated=True``; an
example left with no learned token is rejected with ``"no_target_tokens"``. Reward and prompt
batches truncate from the LEFT instead (keeping a leading BOS/CLS token), because the reward is
read at the response's end-of-turn token and generation continues from the prompt's end.

Chat-template rendering and the search for assistant spans live in :mod:`alignment.data.chat_template`;
packing rows without padding in :mod:`alignment.data.packing`.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

from alignment.data.chat_template import (
    ChatTemplateError,
    assistant_char_spans,
    has_chat_template,
    message_dicts,
    render_prompt,
)
from alignment.data.packing import group_by_common_prefix, pack_shared_prefixes, pack_token_rows
from data_schemas.errors import RecordError
from data_schemas.records import Comparison, Demonstration, Prompt

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SFTExample:
    """One tokenized demonstration.

    ``input_ids`` and ``labels`` have the same length (T,); ``labels[t]`` is ``input_ids[t]`` on
    learned tokens and ``-100`` elsewhere (unshifted: the model shifts). ``target_spans`` are the
    learned ``[start, end)`` token ranges, one per learned assistant turn (after truncation).
    ``num_prompt_tokens`` is the index of the first learned token.
    """

    input_ids: list[int]
    labels: list[int]
    target_spans: tuple[tuple[int, int], ...]
    num_prompt_tokens: int
    truncated: bool
    source_id: str | None = None

    @property
    def num_target_tokens(self) -> int:
        return sum(end - start for start, end in self.target_spans)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class RejectedExample:
    """A demonstration that cannot be trained on.

    ``reason`` is ``"prompt_too_long"``, ``"no_target_tokens"`` or ``"no_prompt"`` (an assistant
    turn before any user turn: nothing to condition on, and no generation prompt to render).
    """

    reason: str
    detail: str
    source_id: str | None = None

    def to_record_error(self) -> RecordError:
        """For :class:`data_schemas.errors.SkipReport` (counted by ``reason``)."""
        where = f" (record {self.source_id})" if self.source_id else ""
        return RecordError(f"{self.detail}{where}", field="messages", kind=self.reason)


class TokenCounts(NamedTuple):
    non_pad_tokens: int
    loss_tokens: int


# ----------------------------------------------------------------------------- rendering helpers


# ----------------------------------------------------------------------------- tokenization helpers


def _tokenize_with_boundaries(tokenizer: Any, text: str, boundaries: Sequence[int]) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and, for each character boundary, the number of tokens that start before it."""
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError):  # python / mistral-common backends have no offsets
        encoding = {}
    if "offset_mapping" not in encoding:
        return _boundaries_by_prefix_tokenization(tokenizer, text, boundaries)
    starts = [start for start, _ in encoding["offset_mapping"]]
    return list(encoding["input_ids"]), [bisect.bisect_left(starts, b) for b in boundaries]


def _boundaries_by_prefix_tokenization(
    tokenizer: Any, text: str, boundaries: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Fallback for tokenizers without offsets: tokenize each prefix and require it to be a token prefix.

    Stricter than offsets: whitespace that tokenizes differently at the end of a text (``"\\n\\n"`` before
    the content) raises :class:`ChatTemplateError` although offsets would split it correctly.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    counts = []
    for boundary in boundaries:
        prefix_ids = list(tokenizer(text[:boundary], add_special_tokens=False)["input_ids"])
        if ids[: len(prefix_ids)] != prefix_ids:
            raise ChatTemplateError(
                f"tokenization is not prefix-stable at character {boundary} ({text[max(0, boundary - 20) : boundary + 20]!r}): "
                "the tokens of the text before an assistant turn change when the turn follows"
            )
        counts.append(len(prefix_ids))
    return ids, counts


def tokenizer_pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token (load_tokenizer does)")
    return int(tokenizer.pad_token_id)


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int, side: Literal["left", "right"]) -> torch.Tensor:
    """(N, T) long tensor, T = longest row."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            target = out[i, : len(row)] if side == "right" else out[i, width - len(row) :]
            target.copy_(torch.tensor(row, dtype=torch.long))
    return out


def row_attention_mask(rows: Sequence[Sequence[int]], side: Literal["left", "right"]) -> torch.Tensor:
    return pad_rows([[1] * len(r) for r in rows], 0, side)


def encode_left_truncated(
    tokenizer: Any, texts: list[str], max_length: int, add_special_tokens: bool
) -> tuple[list[list[int]], int]:
    """Tokenize and keep the LAST ``max_length`` tokens (plus a leading BOS/CLS); returns rows, #truncated."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    lead_ids = {tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)} - {None}
    rows, num_truncated = [], 0
    # verbose=False: the rows are cut to max_length just below, so the tokenizer's "longer than the maximum" warning
    # (about the untruncated ids) would be noise.
    for ids in tokenizer(texts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]:
        ids = list(ids)
        if len(ids) > max_length:
            lead = 1 if ids[0] in lead_ids else 0
            ids = ids[:lead] + ids[len(ids) - (max_length - lead) :]
            num_truncated += 1
        rows.append(ids)
    return rows, num_truncated


# ----------------------------------------------------------------------------- SFT


def render_sft_example(
    tokenizer: Any, demo: Demonstration, max_length: int, train_on: Literal["all", "last"] = "all"
) -> SFTExample | RejectedExample:
    """Tokenize ``demo`` with the chat template; label its assistant turns (all, or only the last).

    Returns an :class:`SFTExample` of at most ``max_length`` tokens, or a :class:`RejectedExample`
    (``prompt_too_long`` / ``no_target_tokens`` / ``no_prompt``; see the module docstring). Raises
    :class:`ChatTemplateError` for a tokenizer without a template or a template that is not
    prefix-stable.
    """
    if train_on not in ("all", "last"):
        raise ValueError(f"train_on must be 'all' or 'last', got {train_on!r}")
    messages = message_dicts(demo.messages)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        turns = turns[-1:]
    if not turns:
        return RejectedExample("no_target_tokens", "no assistant turn to learn from", demo.source_id)
    if all(m["role"] == "system" for m in messages[: turns[0]]):
        return RejectedExample("no_prompt", "the first assistant turn answers no user message", demo.source_id)
    text, char_spans = assistant_char_spans(tokenizer, messages, turns)
    input_ids, bounds = _tokenize_with_boundaries(tokenizer, text, [b for span in char_spans for b in span])
    return _truncate_sft(input_ids, list(zip(bounds[0::2], bounds[1::2])), max_length, demo.source_id)


def tokenize_demonstrations(tokenizer, records, max_length: int, train_on: str) -> tuple[list, Counter, int]:
    """Render records as SFT trains on them (SFT, PPO-ptx); a rejected one is logged, not trained on. Returns
    (examples, rejected counts by reason, number truncated)."""
    examples, rejected, truncated = [], Counter(), 0
    for record in records:
        example = render_sft_example(tokenizer, record, max_length, train_on)
        if isinstance(example, RejectedExample):
            rejected[example.reason] += 1
            logger.warning(
                "demonstration %s not trained on: %s (%s)", example.source_id, example.reason, example.detail
            )
            continue
        truncated += int(example.truncated)
        examples.append(example)
    return examples, rejected, truncated


def _truncate_sft(
    input_ids: list[int], token_spans: list[tuple[int, int]], max_length: int, source_id: str | None
) -> SFTExample | RejectedExample:
    prompt_length = token_spans[0][0]
    if prompt_length >= max_length:
        detail = f"the prompt is {prompt_length} tokens, max_length is {max_length}"
        return RejectedExample("prompt_too_long", detail, source_id)
    truncated = len(input_ids) > max_length
    input_ids = input_ids[:max_length]
    spans = tuple((s, min(e, max_length)) for s, e in token_spans if min(e, max_length) > s)
    if not spans:
        return RejectedExample("no_target_tokens", "no assistant token left after tokenization", source_id)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        labels[start:end] = input_ids[start:end]
    return SFTExample(input_ids, labels, spans, spans[0][0], truncated, source_id)


@dataclass
class SFTCollator:
    """Batches :class:`SFTExample` s.

    Padded (default): ``input_ids`` (B, T) right-padded with ``pad_token_id``, ``labels`` (B, T)
    with ``-100`` on padding, ``attention_mask`` (B, T).

    ``padding_free=True``: ``input_ids``, ``labels``, ``position_ids`` of shape (R, L): the examples
    packed several to a row no longer than the longest (:func:`pack_token_rows`; one long row would
    make attention, quadratic in the row length, cost more than the padding saved), positions
    restarting at 0 per example and NO attention mask: transformers' sdpa/eager attention then
    builds a block-diagonal causal mask from the position restarts
    (``transformers.masking_utils.find_packed_sequence_indices``), so no token attends across
    examples; flash-attention uses the same restarts as ``cu_seqlens``. The first label of each
    example and the row filler are ``-100`` so no loss crosses a boundary. Call the model with
    ``use_cache=False``: with a KV cache transformers skips the packed-sequence detection.
    ``flat_rows=True`` (models with varlen attention): one row (1, N) with no filler and
    ``cu_seq_lens`` for the model's ``varlen_kwargs``; ``row_multiple``: that row rounded up to a multiple of it
    (filler labelled ``-100``, :func:`pack_token_rows`). ``share_prefixes`` (flat rows, attention that takes
    ``branch_lengths``): examples that open alike (a chat template's default system turn) share those tokens in one
    block (:func:`alignment.data.packing.pack_shared_prefixes`); a position may then predict several targets, so the
    batch has ``target_index`` (M,) and ``targets`` (M,) instead of ``labels``.
    """

    pad_token_id: int
    padding_free: bool = False
    flat_rows: bool = False
    row_multiple: int = 1
    with_example_ids: bool = False  # also ``example_ids``, shaped like ``labels``: which example each token is of
    share_prefixes: bool = False

    def __post_init__(self) -> None:
        if self.share_prefixes and (not (self.padding_free and self.flat_rows) or self.with_example_ids):
            raise ValueError("share_prefixes needs padding_free and flat_rows, and gives no example_ids")

    def __call__(self, examples: Sequence[SFTExample]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        if self.padding_free:
            return self._pack(examples)
        rows = [e.input_ids for e in examples]
        batch = {
            "input_ids": pad_rows(rows, self.pad_token_id, "right"),
            "labels": pad_rows([e.labels for e in examples], IGNORE_INDEX, "right"),
            "attention_mask": row_attention_mask(rows, "right"),
        }
        if self.with_example_ids:
            batch["example_ids"] = torch.arange(len(rows)).unsqueeze(1).expand_as(batch["input_ids"]).clone()
        return batch

    def _pack(self, examples: Sequence[SFTExample]) -> dict[str, torch.Tensor]:
        if self.share_prefixes:
            return self._pack_shared(examples)
        packed = pack_token_rows(
            [e.input_ids for e in examples], self.pad_token_id, flat=self.flat_rows, multiple_of=self.row_multiple
        )
        labels = torch.full_like(packed.input_ids, IGNORE_INDEX).view(-1)
        example_ids = torch.full_like(labels, -1)
        for i, (example, start) in enumerate(zip(examples, packed.starts.tolist())):
            labels[start + 1 : start + len(example)] = torch.tensor(example.labels[1:], dtype=torch.long)
            example_ids[start : start + len(example)] = i
        batch = {
            "input_ids": packed.input_ids,
            "labels": labels.view_as(packed.input_ids),
            "position_ids": packed.position_ids,
            "num_tokens": torch.tensor(sum(len(e) for e in examples)),
        }
        if self.with_example_ids:
            batch["example_ids"] = example_ids.view_as(packed.input_ids)
        if packed.cu_seq_lens is not None:
            batch["cu_seq_lens"] = packed.cu_seq_lens
        return batch

    def _pack_shared(self, examples: Sequence[SFTExample]) -> dict[str, torch.Tensor]:
        rows = [e.input_ids for e in examples]
        groups = group_by_common_prefix(rows, MIN_SHARED_PREFIX)
        packed = pack_shared_prefixes(
            [[rows[i] for i in g] for g in groups], self.pad_token_id, multiple_of=self.row_multiple
        )
        target_index, targets = [], []
        for i, token_index in zip([i for g in groups for i in g], packed.token_index):
            labels = torch.tensor(examples[i].labels[1:], dtype=torch.long)
            learned = labels != IGNORE_INDEX
            target_index.append(token_index[:-1][learned])  # token t predicts token t + 1, wherever each lies
            targets.append(labels[learned])
        return {
            "input_ids": packed.input_ids,
            "position_ids": packed.position_ids,
            "cu_seq_lens": packed.cu_seq_lens,
            "branch_lengths": packed.branch_lengths,
            "target_index": torch.cat(target_index),
            "targets": torch.cat(targets),
            "num_tokens": torch.tensor(sum(len(e) for e in examples)),
        }


# Examples share a block only when they open with at least this many equal tokens: a few shared tokens do not pay
# for a block's extra attention calls.
MIN_SHARED_PREFIX = 8


def count_tokens(batch: dict[str, torch.Tensor]) -> TokenCounts:
    """Non-padding tokens, and loss tokens: the shifted labels ``labels[:, 1:] != -100`` the causal-LM loss averages."""
    if "attention_mask" in batch:
        non_pad = int(batch["attention_mask"].sum())
    elif "num_tokens" in batch:  # packed rows: the filler at a row's end is not a token
        non_pad = int(batch["num_tokens"])
    else:
        non_pad = int(batch["input_ids"].numel())
    if "targets" in batch:  # shared-prefix rows (SFTCollator share_prefixes)
        return TokenCounts(non_pad, int(batch["targets"].numel()))
    loss = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if "labels" in batch else 0
    return TokenCounts(non_pad, loss)


# ----------------------------------------------------------------------------- prompts


class PromptCollator:
    """Batches prompts for generation: ``input_ids`` (B, T) LEFT-padded, ``attention_mask`` (B, T).

    Accepts :class:`Prompt` records (or :class:`Comparison` s, whose ``prompt`` is used). Prompts
    longer than ``max_prompt_length`` keep their last tokens (plus a leading BOS); the batch's
    ``num_truncated`` (0-dim) and ``self.num_truncated`` (running total) count them.
    """

    def __init__(self, tokenizer: Any, max_prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.pad_token_id = tokenizer_pad_id(tokenizer)
        self.num_truncated = 0

    def __call__(self, prompts: Sequence[Prompt | Comparison]) -> dict[str, torch.Tensor]:
        if not prompts:
            raise ValueError("cannot collate an empty batch")
        texts = [render_prompt(self.tokenizer, p.prompt if isinstance(p, Comparison) else p.messages) for p in prompts]
        add_special = not has_chat_template(self.tokenizer)
        rows, num_truncated = encode_left_truncated(self.tokenizer, texts, self.max_prompt_length, add_special)
        self.num_truncated += num_truncated
        return {
            "input_ids": pad_rows(rows, self.pad_token_id, "left"),
            "attention_mask": row_attention_mask(rows, "left"),
            "num_truncated": torch.tensor(num_truncated),
        }
