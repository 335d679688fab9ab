"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any


def interrupt_after(n_steps: int) -> type:
    """A stand-in for ``GracefulInterrupt`` whose flag turns on at the n-th check (loops check once per step)."""

    class InterruptAfter:
        calls = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        @property
        def requested(self) -> bool:
            type(self).calls += 1
            return type(self).calls >= n_steps

    return InterruptAfter


def tiny_llama_config(vocab_size: int, **overrides: Any):
    """A 2-layer Llama (hidden 64, 4 heads over 2 key/value heads): the real code paths in milliseconds."""
    from transformers import LlamaConfig

    settings = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **overrides,
    }
    return LlamaConfig(**settings)
