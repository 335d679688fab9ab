"""The PPO networks on one shared base: policy, reference, critic and (optionally) reward.

All roles run the same backbone with a different LoRA adapter active (see ``adapters.py``).
Log-probs are computed from the hidden states of the response positions only, so the
full-vocabulary logits of the prompt are never materialised (trl 1.12 computed them for the
whole prompt + response, the largest activation of its PPO step).

Sequences are ``[left-padded prompt | response | right padding]``. Positions follow the
attention mask (``cumsum - 1``), exactly as ``generate`` assigns them with left padding, so the
log-probs recomputed here match the ones seen while sampling.

Padding-free passes (default): every pass after generation (reference, critic, reward, and the
training forward/backward) runs on the sequences packed several to a row without padding
(``pack_sequences``). Prompt lengths vary a lot, so a left-padded batch is mostly padding when
one prompt is long (HH-RLHF prompts of 35-208 tokens: 1.5x the real tokens); packing skips that
work without changing a single log-prob beyond float rounding. Rows are no longer than the
longest sequence, so attention costs no more than in the padded layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alignment.core.precision import head_weight
from alignment.data.packing import pack_token_rows
from alignment.modeling.attention import supports_flat_packing, varlen_kwargs
from alignment.modeling.generation import generation_cache
from alignment.ppo.adapters import POLICY, REWARD, SFT, VALUE, use_adapter
from alignment.rl.logprobs import entropy_from_logits, logprobs_from_logits

if TYPE_CHECKING:
    from peft import PeftModel


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
    ``cu_seq_lens``: the boundaries when all sequences are in one flat row (varlen attention), else None.

    ``response_index`` ``(B, T)``: flat index (into ``R * L``) of the hidden state that predicts
    response token t of sequence b (positions past the valid response repeat the last token, and
    are masked by the caller); ``last_index`` ``(B,)``: flat index of each sequence's last token.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    response_index: torch.Tensor
    last_index: torch.Tensor
    cu_seq_lens: torch.Tensor | None = None


def pack_sequences(batch: SequenceBatch, response_length: int, flat: bool = False) -> PackedRows:
    """The real tokens of each sequence (prompt without its left padding, response up to EOS), packed."""
    prompt_lengths, response_lengths = batch.sequence_lengths()
    packed = pack_token_rows([ids[mask.bool()] for ids, mask in zip(batch.input_ids, batch.attention_mask)], flat=flat)
    last = packed.starts + prompt_lengths + response_lengths - 1
    steps = torch.arange(response_length, device=last.device)
    response_index = torch.minimum(packed.starts[:, None] + prompt_lengths[:, None] - 1 + steps, last[:, None])
    return PackedRows(packed.input_ids, packed.position_ids, response_index, last, packed.cu_seq_lens)


class ActorCritic(torch.nn.Module):
    """Policy, reference, critic and shared-base reward model as adapters of one ``PeftModel``."""

    def __init__(
        self,
        model: PeftModel,
        value_head: torch.nn.Linear,
        reward_head: torch.nn.Linear | None = None,
        reference_adapter: str | None = SFT,
        padding_free: bool = True,
    ) -> None:
        super().__init__()
        self.padding_free = padding_free
        self.model = model
        self.value_head = value_head
        self.reward_head = reward_head
        self.reference_adapter = reference_adapter
        causal_lm = model.get_base_model()
        self._backbone = causal_lm.base_model  # e.g. LlamaModel: LoRA layers are injected in place
        self._lm_head = causal_lm.get_output_embeddings()
        self._flat = supports_flat_packing(causal_lm)  # one packed row without filler (varlen attention)
        # The mixed-precision context of every pass through the base (``Accelerator.autocast`` for ``bf16``);
        # the scalar heads, log-softmax and losses stay in fp32.
        self.autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
        # The tied LM head in the autocast dtype, swapped in for generation (precision.tied_head_copy).
        self.generation_head: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype the base's weights were loaded in (``dtype`` setting), read off the LM head."""
        return self._lm_head.weight.dtype

    def hidden_states(self, batch: SequenceBatch) -> torch.Tensor:
        out = self._backbone(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    def _packed_hidden(self, packed: PackedRows) -> torch.Tensor:
        extra = varlen_kwargs(packed.cu_seq_lens) if packed.cu_seq_lens is not None else {}
        out = self._backbone(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False, **extra)
        hidden = out.last_hidden_state
        return hidden.reshape(-1, hidden.shape[-1])

    def _response_hidden(self, batch: SequenceBatch, response_length: int) -> torch.Tensor:
        # The hidden state at position P-1+t predicts response token t (and is the critic's state for it).
        if self.padding_free:
            packed = pack_sequences(batch, response_length, self._flat)
            return self._packed_hidden(packed)[packed.response_index]
        hidden = self.hidden_states(batch)
        start = batch.prompt_length - 1
        return hidden[:, start : start + response_length]

    def response_logprobs(
        self,
        batch: SequenceBatch,
        response_ids: torch.Tensor,
        temperature: float,
        role: str = POLICY,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, T)`` log-probs of the response tokens under ``role`` ("policy" or "reference")."""
        adapter = self.reference_adapter if role == "reference" else role
        with use_adapter(self.model, adapter), self.autocast():
            hidden = self._response_hidden(batch, response_ids.shape[1])
            logits = self._lm_head(hidden).float()
        logprobs = logprobs_from_logits(logits, response_ids, temperature)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = entropy_from_logits(logits.detach(), temperature)
        return logprobs, entropy

    def response_values(self, batch: SequenceBatch, response_length: int) -> torch.Tensor:
        """``(B, T)`` critic values V(s_t) for each response token."""
        with use_adapter(self.model, VALUE), self.autocast():
            hidden = self._response_hidden(batch, response_length)
        return self.value_head(hidden.float()).squeeze(-1)

    @torch.no_grad()
    def reward_scores(self, batch: SequenceBatch) -> torch.Tensor:
        """``(B,)`` raw scores of the shared-base reward model, read at the last attended token."""
        if self.reward_head is None:
            raise ValueError("this actor-critic has no shared-base reward model")
        with use_adapter(self.model, REWARD), self.autocast():
            if self.padding_free:
                packed = pack_sequences(batch, 1, self._flat)
                picked = self._packed_hidden(packed)[packed.last_index]
            else:
                hidden = self.hidden_states(batch)
                picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.last_index()]
        return self.reward_head(picked.float()).squeeze(-1)

    @torch.no_grad()
    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generation_config, with_logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample responses with the policy adapter.

        Returns ``(B, T)`` response ids and, with ``with_logits``, their ``(B, T, V)`` raw sampling logits
        (else None: a rollout that recomputes its log-probs need not keep a vocabulary row per token).
        """
        with use_adapter(self.model, POLICY), self.autocast(), head_weight(self._lm_head, self.generation_head):
            cache = generation_cache(self.model, prompt_ids, prompt_mask, generation_config, self.padding_free)
            out = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=generation_config,
                return_dict_in_generate=True,
                output_logits=with_logits,
                **({"cache": cache} if cache is not None else {}),
            )
        response_ids = out.sequences[:, prompt_ids.shape[1] :]
        return response_ids, torch.stack(out.logits, dim=1) if with_logits else None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
