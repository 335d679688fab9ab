"""The PPO networks on one shared base: policy, reference, critic and (optionally) reward.

All roles run the same backbone with a different LoRA adapter active (see ``adapters.py``).
Log-probs are computed from the hidden states of the response positions only, so the
full-vocabulary logits of the prompt are never materialised (trl 1.12 computed them for the
whole prompt + response, its memory hot spot Q11).

Sequences are ``[left-padded prompt | response | right padding]``. Positions follow the
attention mask (``cumsum - 1``), exactly as ``generate`` assigns them with left padding, so the
log-probs recomputed here match the ones seen while sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from alignment.adapters import POLICY, REWARD, SFT, VALUE, use_adapter
from alignment.rl_math import entropy_from_logits, logprobs_from_logits

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

    def last_index(self) -> torch.Tensor:
        """``(B,)`` index of the last attended token (the EOS, or the last generated token)."""
        positions = torch.arange(self.attention_mask.shape[1], device=self.attention_mask.device)
        return (positions * self.attention_mask).argmax(dim=1)


class ActorCritic(torch.nn.Module):
    """Policy, reference, critic and shared-base reward model as adapters of one ``PeftModel``."""

    def __init__(
        self,
        model: PeftModel,
        value_head: torch.nn.Linear,
        reward_head: torch.nn.Linear | None = None,
        reference_adapter: str | None = SFT,
    ) -> None:
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.reward_head = reward_head
        self.reference_adapter = reference_adapter
        causal_lm = model.get_base_model()
        self._backbone = causal_lm.base_model  # e.g. LlamaModel: LoRA layers are injected in place
        self._lm_head = causal_lm.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    def hidden_states(self, batch: SequenceBatch) -> torch.Tensor:
        out = self._backbone(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    def _response_hidden(self, batch: SequenceBatch, response_length: int) -> torch.Tensor:
        # The hidden state at position P-1+t predicts response token t (and is the critic's state for it).
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
        with use_adapter(self.model, adapter):
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
        with use_adapter(self.model, VALUE):
            hidden = self._response_hidden(batch, response_length)
        return self.value_head(hidden.float()).squeeze(-1)

    @torch.no_grad()
    def reward_scores(self, batch: SequenceBatch) -> torch.Tensor:
        """``(B,)`` raw scores of the shared-base reward model, read at the last attended token."""
        if self.reward_head is None:
            raise ValueError("this actor-critic has no shared-base reward model")
        with use_adapter(self.model, REWARD):
            hidden = self.hidden_states(batch)
        last = batch.last_index()
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.reward_head(picked.float()).squeeze(-1)

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generation_config) -> torch.Tensor:
        """Sample responses with the policy adapter; returns ``(B, T)`` response ids and ``(B, T, V)`` raw logits."""
        with use_adapter(self.model, POLICY):
            out = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=generation_config,
                return_dict_in_generate=True,
                output_logits=True,
            )
        response_ids = out.sequences[:, prompt_ids.shape[1] :]
        return response_ids, torch.stack(out.logits, dim=1)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
