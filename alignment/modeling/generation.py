"""A KV cache for ``generate`` that is filled from packed prompts and written in place; one random stream per row.

Two costs of transformers' ``generate`` with its default ``DynamicCache``, measured on the 2-core CPU
benchmark machine for 8 HH-RLHF prompts (35-208 tokens) and 48 sampled tokens:

- The prefill runs the left-padded prompts: 1.5x their real tokens in the benchmark's batches. Here
  the prompts (all but their last token) run as one flat packed row through varlen attention, and
  their keys and values are laid out left-padded in the cache; ``generate`` then runs only each
  prompt's last token before sampling. The padded slots hold zeros that the attention mask hides.
- ``DynamicCache`` appends each step's keys and values with ``torch.cat``, copying the whole cache
  on every decoded token (73 ms of a 300 ms decode step). :class:`PreallocatedLayer` reserves room
  for the new tokens once and writes each step into it; attention reads a view of the filled part,
  so it computes exactly what it computed before (same logits, bit for bit).

Only for caches of plain full-attention layers (no sliding windows, no hybrid or linear-attention
layers) and one sequence per prompt (no beam search); otherwise ``generate`` keeps its own cache.

:class:`RowStreamSampler` samples each row from its own seeded stream, so that evaluation's answers do not depend on
how the prompts are batched, and a larger generation batch (2.7x faster for the quickstart's 48 prompts at 48 rows
than at 8) changes nothing but the time.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor
from transformers.cache_utils import DynamicLayer

from alignment.data.packing import pack_token_rows
from alignment.modeling.attention import supports_flat_packing, varlen_kwargs
from alignment.modeling.module_utils import unwrap_transformers_model


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer with room reserved for ``room`` more positions than its first update."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self._length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._key_buffer is None or self._length + new > self._key_buffer.shape[-2]:
            self._grow(key_states, value_states, self._length + new + self.room)
        end = self._length + new
        self._key_buffer[..., self._length : end, :] = key_states
        self._value_buffer[..., self._length : end, :] = value_states
        self._length = end
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        buffers = []
        for old, like in ((self._key_buffer, key_states), (self._value_buffer, value_states)):
            shape = (*like.shape[:-2], capacity, like.shape[-1])
            buffer = like.new_empty(shape)
            if old is not None:
                buffer[..., : self._length, :] = old[..., : self._length, :]
            buffers.append(buffer)
        self._key_buffer, self._value_buffer = buffers

    def reset(self) -> None:
        super().reset()
        self._length = 0
        self._key_buffer = self._value_buffer = None


def generation_cache(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    generation_config: GenerationConfig,
    packed_prefill: bool = True,
) -> DynamicCache | None:
    """A KV cache to pass to ``model.generate(cache=...)`` for these prompts, or None to let it make its own.

    ``model``: the causal LM as ``generate`` is called on (peft-wrapped or not), with the adapter that
    will sample already active. With ``packed_prefill`` and a varlen-attention model, the cache already
    holds every prompt token but the last (left-padded prompts only).
    """

    max_new_tokens = generation_config.max_new_tokens
    one_per_prompt = (generation_config.num_beams or 1) == 1 and (generation_config.num_return_sequences or 1) == 1
    if max_new_tokens is None or not one_per_prompt:
        return None
    causal_lm = unwrap_transformers_model(model)
    cache = DynamicCache(config=causal_lm.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None  # sliding-window, hybrid or linear-attention layers: transformers knows their cache
    cache.layers = [PreallocatedLayer(room=max_new_tokens + 1) for _ in cache.layers]
    lengths = prompt_mask.sum(-1)
    left_padded = bool(prompt_mask[:, -1].all()) and int(lengths.min()) >= 2
    if packed_prefill and left_padded and supports_flat_packing(causal_lm):
        _prefill_packed(causal_lm.base_model, cache, prompt_ids, prompt_mask)
    return cache


@torch.no_grad()
def _prefill_packed(
    backbone: torch.nn.Module, cache: DynamicCache, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> None:
    """Run every prompt token but the last as one packed row; store their keys/values left-padded in ``cache``."""
    packed = pack_token_rows([ids[mask.bool()][:-1] for ids, mask in zip(prompt_ids, prompt_mask)], flat=True)
    flat_cache = DynamicCache()
    backbone(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        cache=flat_cache,
        use_cache=True,
        **varlen_kwargs(packed.cu_seq_lens),
    )
    width = prompt_ids.shape[1] - 1
    bounds = packed.cu_seq_lens.tolist()
    for flat_layer, layer in zip(flat_cache.layers, cache.layers):
        padded = []
        for flat in (flat_layer.keys, flat_layer.values):  # (1, kv heads, real tokens, head dim)
            out = flat.new_zeros(prompt_ids.shape[0], flat.shape[1], width, flat.shape[3])
            for row, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
                out[row, :, width - (end - start) :] = flat[0, :, start:end]
            padded.append(out)
        layer.update(*padded)


def row_seed(seed: int, row: int) -> int:
    """The seed of row ``row``'s random stream: both numbers mixed (SplitMix64), so nearby rows and seeds differ."""
    x = (seed * 0x9E3779B97F4A7C15 + row + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


class RowStreamSampler(LogitsProcessor):
    """Temperature sampling in which each row draws from its own seeded random stream.

    ``generate`` samples every row of a batch from one random stream, so a row's answer depends on which
    rows share its batch and on how long earlier batches ran: changing the batch size changes every sample.
    Here row ``i`` draws its token at each step from a generator seeded with ``seeds[i]``, so its answer
    depends only on its own seed, prompt and model, whatever batch it is in (up to the last float bits of
    the logits, which batch shapes can move). Used as ``generate``'s only logits processor with greedy
    decoding: it returns scores that are ``-inf`` everywhere but the drawn token, which greedy then picks.
    """

    def __init__(self, temperature: float, seeds: list[int]) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.temperature = temperature
        self.seeds = seeds
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        if scores.shape[0] != len(self._generators):
            raise ValueError(f"{scores.shape[0]} rows to sample, {len(self._generators)} seeds")
        # Inverse-CDF sampling, one uniform per row: torch.multinomial takes ~1 ms a row on a 49k vocabulary (one
        # exponential per token); a batched cumulative sum and search take ~2 ms for 48 rows.
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        cdf = probs.double().cumsum(dim=-1)
        uniform = torch.cat(
            [torch.rand(1, generator=g, dtype=torch.float64, device=cdf.device) for g in self._generators]
        )
        # right=True: the first token whose cumulative probability exceeds u * total, never one of probability 0.
        drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(1), right=True).clamp_(max=scores.shape[1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, drawn, 0.0)
