"""The PPO networks on one shared base: policy, reference, critic and (optionally) reward.

All roles run the same backbone with a different LoRA adapter active (see ``adapters.py``). Every pass after
generation is a teacher-forced pass of :mod:`alignment.modeling.sequences` (packed rows without padding by
default), so the policy's log-probs here and the KL that evaluation measures are computed the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch

from alignment.core.precision import head_weight
from alignment.core.sharding import blocks_gathered
from alignment.modeling.attention import supports_flat_packing, supports_shared_prefixes
from alignment.modeling.fused_lora import merged_for_sampling
from alignment.modeling.generation import generation_cache
from alignment.modeling.sequences import SequenceBatch, last_hidden, response_hidden, response_logprobs
from alignment.modeling.target_logits import target_logits
from alignment.ppo.adapters import POLICY, REWARD, SFT, VALUE, use_adapter

if TYPE_CHECKING:
    from peft import PeftModel


class ActorCritic(torch.nn.Module):
    """Policy, reference, critic and shared-base reward (and cost) models as adapters of one ``PeftModel``.

    ``value_head`` is None for the critic-free estimators: no value adapter, no value pass (:attr:`has_critic`).
    """

    def __init__(
        self,
        model: PeftModel,
        value_head: torch.nn.Linear | None,
        reward_heads: dict[str, torch.nn.Linear] | None = None,
        reference_adapter: str | None = SFT,
        padding_free: bool = True,
    ) -> None:
        super().__init__()
        self.padding_free = padding_free
        self.model = model
        self.value_head = value_head
        # Reward (and cost) models that are LoRA outputs on this base: adapter name -> score head.
        self.reward_heads = torch.nn.ModuleDict(reward_heads or {})
        self.reference_adapter = reference_adapter
        causal_lm = model.get_base_model()
        self._backbone = causal_lm.base_model  # e.g. LlamaModel: LoRA layers are injected in place
        self._lm_head = causal_lm.get_output_embeddings()
        self._flat = supports_flat_packing(causal_lm)  # one packed row without filler (varlen attention)
        # The samples of one prompt share its tokens in that row, computed once (sequences.pack_sequences).
        self._share_prompts = self._flat and supports_shared_prefixes(causal_lm)
        self.row_multiple = 1  # what that row is rounded up to (``Run.flat_row_multiple``, set by the stage)
        # The mixed-precision context of every pass through the base (``Accelerator.autocast`` for ``bf16``);
        # the scalar heads, log-softmax and losses stay in fp32.
        self.autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
        # The tied LM head in the autocast dtype, swapped in for generation (precision.tied_head_copy).
        self.generation_head: torch.Tensor | None = None
        # Sampling runs the policy folded into a copy of the weights, in this dtype (the compute dtype under
        # autocast, else the weights'): ``generation_weights``, decided by the loop.
        self.merge_for_sampling = False
        self.compute_dtype: torch.dtype | None = None
        # FSDP (``fsdp: true``): the base's blocks are sharded (core.sharding.shard_model(root=False)); every pass
        # is then collective, and generation runs as many decoding steps on every process. "full": the blocks are
        # gathered once for sampling instead of once per decoding step (the fsdp_generation setting).
        self.sharded = False
        self.gather_for_generation = False

    @property
    def reward_head(self) -> torch.nn.Linear | None:
        """The first reward model's head (the one the critic starts from), when it shares the base."""
        return self.reward_heads[REWARD] if REWARD in self.reward_heads else None

    @property
    def has_critic(self) -> bool:
        return self.value_head is not None

    @property
    def device(self) -> torch.device:
        return self._lm_head.weight.device

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype the base's weights were loaded in (``dtype`` setting), read off the LM head."""
        return self._lm_head.weight.dtype

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
            return response_logprobs(
                self._backbone,
                self._lm_head,
                batch,
                response_ids,
                temperature,
                self.padding_free,
                self._flat,
                with_entropy,
                self.row_multiple,
                self._share_prompts,
            )

    def response_values(self, batch: SequenceBatch, response_length: int) -> torch.Tensor:
        """``(B, T)`` critic values V(s_t) for each response token."""
        if self.value_head is None:
            raise ValueError("this actor-critic has no critic (a critic-free algorithm)")
        with use_adapter(self.model, VALUE), self.autocast():
            hidden = response_hidden(
                self._backbone,
                batch,
                response_length,
                self.padding_free,
                self._flat,
                self.row_multiple,
                self._share_prompts,
            )
        return self.value_head(hidden.float()).squeeze(-1)

    def demonstration_logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (M, V), targets (M,))`` of the policy at the M assistant tokens of an SFT-layout batch (PPO-ptx)."""
        with use_adapter(self.model, POLICY), self.autocast():
            logits, targets, _ = target_logits(self.model, self._lm_head, batch)
        return logits, targets

    @torch.no_grad()
    def reward_scores(self, batch: SequenceBatch, adapter: str = REWARD) -> torch.Tensor:
        """``(B,)`` raw scores of the shared-base reward model ``adapter``, read at the last attended token."""
        if adapter not in self.reward_heads:
            raise ValueError(f"this actor-critic has no shared-base reward model {adapter!r}")
        with use_adapter(self.model, adapter), self.autocast():
            picked = last_hidden(
                self._backbone, batch, self.padding_free, self._flat, self.row_multiple, self._share_prompts
            )
        return self.reward_heads[adapter](picked.float()).squeeze(-1)

    @torch.no_grad()
    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generation_config, with_logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample responses with the policy adapter.

        Returns ``(B, T)`` response ids and, with ``with_logits``, their ``(B, T, V)`` raw sampling logits
        (else None: a rollout that recomputes its log-probs need not keep a vocabulary row per token).
        """
        gathered = blocks_gathered(self.model) if self.gather_for_generation else contextlib.nullcontext()
        merged = (
            merged_for_sampling(self.model, POLICY, self.compute_dtype or self.weights_dtype)
            if self.merge_for_sampling
            else contextlib.nullcontext()
        )
        with use_adapter(self.model, POLICY), self.autocast(), head_weight(self._lm_head, self.generation_head):
            cache = generation_cache(self.model, prompt_ids, prompt_mask, generation_config, self.padding_free)
            with gathered, merged:
                out = self.model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    generation_config=generation_config,
                    return_dict_in_generate=True,
                    output_logits=with_logits,
                    # Sharded: a process whose samples all ended keeps stepping until every process's have.
                    synced_gpus=self.sharded,
                    **({"cache": cache} if cache is not None else {}),
                )
        response_ids = out.sequences[:, prompt_ids.shape[1] :]
        return response_ids, torch.stack(out.logits, dim=1) if with_logits else None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
