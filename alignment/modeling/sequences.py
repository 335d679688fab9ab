"""Teacher-forced passes over ``[prompt | response]`` batches: the one home of response log-probs and hidden states.

PPO (policy, reference, critic and reward passes on its adapters) and evaluation (the KL between two policies)
both ask one question: given a prompt and a sampled response, what does a model say at each response position?

Sequences are ``[left-padded prompt | response | right padding]``. Positions follow the attention mask
(``cumsum - 1``), exactly as ``generate`` assigns them with left padding, so the log-probs recomputed here match
the ones seen while sampling. Log-probs are computed from the hidden states of the response positions only, so
the full-vocabulary logits of the prompt are never materialised.

Padding-free passes (default): the sequences are packed several to a row without padding (:func:`pack_sequences`).
Prompt lengths vary a lot, so a left-padded batch is mostly padding when one prompt is long (HH-RLHF prompts of
35-208 tokens: 1.5x the real tokens); packing skips that work without changing a log-prob beyond float rounding.
Rows are no longer than the longest sequence, so attention costs no more than in the padded layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignment.data.packing import pack_shared_prefixes, pack_token_rows
from alignment.modeling.attention import varlen_kwargs
from alignment.rl.logprobs import entropy_from_logits, logprobs_from_logits


@dataclass
class SequenceBatch:
    """A rollout's token layout. ``input_ids``/``attention_mask``/``position_ids``: ``(B, P + T)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_length: int  # P: every prompt is left-padded to this length

    @classmethod
    def build(
        cls,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> SequenceBatch:
        attention = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return cls(torch.cat([prompt_ids, response_ids], dim=1), attention, positions, prompt_ids.shape[1])

    def select(self, index: torch.Tensor) -> SequenceBatch:
        return SequenceBatch(
            self.input_ids[index], self.attention_mask[index], self.position_ids[index], self.prompt_length
        )

    def sequence_lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,)`` real prompt tokens and ``(B,)`` valid response tokens of each sequence."""
        prompt = self.attention_mask[:, : self.prompt_length].sum(-1)
        return prompt, self.attention_mask[:, self.prompt_length :].sum(-1)

    def last_index(self) -> torch.Tensor:
        """``(B,)`` index of the last attended token (the EOS, or the last generated token)."""
        positions = torch.arange(self.attention_mask.shape[1], device=self.attention_mask.device)
        return (positions * self.attention_mask).argmax(dim=1)


@dataclass
class PackedRows:
    """Sequences packed several to a row (``alignment.data.packing.pack_token_rows``). ``input_ids``/``position_ids``: ``(R, L)``;
    ``cu_seq_lens``: the boundaries when all sequences are in one flat row (varlen attention), else None;
    ``branch_lengths``: the row's shared-prefix blocks (``alignment.data.packing.pack_shared_prefixes``), else None.

    ``response_index`` ``(B, T)``: flat index (into ``R * L``) of the hidden state that predicts
    response token t of sequence b (positions past the valid response repeat the last token, and
    are masked by the caller); ``last_index`` ``(B,)``: flat index of each sequence's last token.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    response_index: torch.Tensor
    last_index: torch.Tensor
    cu_seq_lens: torch.Tensor | None = None
    branch_lengths: tuple[tuple[int, ...], ...] | None = None


def pack_sequences(
    batch: SequenceBatch, response_length: int, flat: bool = False, row_multiple: int = 1, share_prompts: bool = False
) -> PackedRows:
    """The real tokens of each sequence (prompt without its left padding, response up to EOS), packed (a flat row
    rounded up to a multiple of ``row_multiple``: ``pack_token_rows``). ``share_prompts`` (flat rows, attention that
    takes ``branch_lengths``): the sequences of one prompt (several samples of it, as RLOO and GRPO draw) share its
    tokens in one shared-prefix block, computed once (``pack_shared_prefixes``)."""
    prompt_lengths, response_lengths = batch.sequence_lengths()
    sequences = [ids[mask.bool()] for ids, mask in zip(batch.input_ids, batch.attention_mask)]
    steps = torch.arange(response_length, device=batch.input_ids.device)
    if share_prompts and flat:
        return _pack_by_prompt(sequences, prompt_lengths, steps, row_multiple)
    packed = pack_token_rows(sequences, flat=flat, multiple_of=row_multiple)
    last = packed.starts + prompt_lengths + response_lengths - 1
    response_index = torch.minimum(packed.starts[:, None] + prompt_lengths[:, None] - 1 + steps, last[:, None])
    return PackedRows(packed.input_ids, packed.position_ids, response_index, last, packed.cu_seq_lens)


def _pack_by_prompt(
    sequences: list[torch.Tensor], prompt_lengths: torch.Tensor, steps: torch.Tensor, row_multiple: int
) -> PackedRows:
    """:func:`pack_sequences` with the sequences of each prompt in one shared-prefix block."""
    rows = [s.tolist() for s in sequences]
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, (row, n) in enumerate(zip(rows, prompt_lengths.tolist())):
        by_prompt.setdefault(tuple(row[:n]), []).append(i)
    order = [i for members in by_prompt.values() for i in members]
    packed = pack_shared_prefixes([[rows[i] for i in m] for m in by_prompt.values()], multiple_of=row_multiple)
    device = steps.device
    response_index = torch.empty(len(rows), steps.numel(), dtype=torch.long, device=device)
    last = torch.empty(len(rows), dtype=torch.long, device=device)
    for i, token_index in zip(order, packed.token_index):
        token_index = token_index.to(device)
        response_index[i] = token_index[(prompt_lengths[i] - 1 + steps).clamp(max=token_index.numel() - 1)]
        last[i] = token_index[-1]
    return PackedRows(
        packed.input_ids.to(device),
        packed.position_ids.to(device),
        response_index,
        last,
        packed.cu_seq_lens.to(device),
        packed.branch_lengths,
    )


def hidden_states(backbone: torch.nn.Module, batch: SequenceBatch) -> torch.Tensor:
    """``(B, P + T, H)`` last hidden states of the padded batch."""
    out = backbone(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    return out.last_hidden_state


def packed_hidden(backbone: torch.nn.Module, packed: PackedRows) -> torch.Tensor:
    """``(R * L, H)`` last hidden states of the packed rows, flattened so ``response_index`` indexes them."""
    extra = varlen_kwargs(packed.cu_seq_lens, packed.branch_lengths) if packed.cu_seq_lens is not None else {}
    out = backbone(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False, **extra)
    hidden = out.last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1])


def response_hidden(
    backbone: torch.nn.Module,
    batch: SequenceBatch,
    response_length: int,
    padding_free: bool,
    flat: bool,
    row_multiple: int = 1,
    share_prompts: bool = False,
) -> torch.Tensor:
    """``(B, T, H)``: the hidden state at position P-1+t predicts response token t (and is the critic's state for it).

    ``flat``: the backbone attends within each sequence of one packed row (varlen attention,
    :func:`alignment.modeling.attention.supports_flat_packing`); ``share_prompts``: see :func:`pack_sequences`.
    """
    if padding_free:
        packed = pack_sequences(batch, response_length, flat, row_multiple, share_prompts)
        return packed_hidden(backbone, packed)[packed.response_index]
    hidden = hidden_states(backbone, batch)
    start = batch.prompt_length - 1
    return hidden[:, start : start + response_length]


def last_hidden(
    backbone: torch.nn.Module,
    batch: SequenceBatch,
    padding_free: bool,
    flat: bool,
    row_multiple: int = 1,
    share_prompts: bool = False,
) -> torch.Tensor:
    """``(B, H)`` hidden state at each sequence's last attended token (where a reward head reads)."""
    if padding_free:
        packed = pack_sequences(batch, 1, flat, row_multiple, share_prompts)
        return packed_hidden(backbone, packed)[packed.last_index]
    hidden = hidden_states(backbone, batch)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.last_index()]


def response_logprobs(
    backbone: torch.nn.Module,
    lm_head: torch.nn.Module,
    batch: SequenceBatch,
    response_ids: torch.Tensor,
    temperature: float,
    padding_free: bool = True,
    flat: bool = False,
    with_entropy: bool = False,
    row_multiple: int = 1,
    share_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, T)`` log-probs of the response tokens, ``log softmax(logits / T)[y_t]``, by teacher forcing.

    The LM head runs on the response positions only; log-softmax and entropy are taken in fp32. With
    ``with_entropy`` also the ``(B, T)`` entropy of each position's distribution (no gradient).
    """
    hidden = response_hidden(backbone, batch, response_ids.shape[1], padding_free, flat, row_multiple, share_prompts)
    logits = lm_head(hidden).float()
    logprobs = logprobs_from_logits(logits, response_ids, temperature)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach(), temperature)
    return logprobs, entropy
