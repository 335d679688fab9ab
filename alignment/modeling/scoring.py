"""Reward scoring that works with any reward model tokenizer.

``RewardScorer.score(prompts, responses)`` renders each conversation with the *reward model's*
own tokenizer and chat template (verl's ``_switch_chat_template``, safe-rlhf's
``batch_retokenize``), so a BERT or DeBERTa reward model can judge a Llama policy. Scores are
normalised with the statistics the reward stage saved (``reward_stats.json``: mean and std on a
reference set; "The N Implementation Details of RLHF with PPO", reward normalisation), so the
same KL coefficient means the same thing whichever reward model is plugged in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from alignment.core.config import LoraConfig, ModelConfig, QuantConfig
from alignment.data.chat_template import render_reward_texts
from alignment.data.reward_batches import tokenize_reward_texts
from alignment.modeling.load import load_reward_model
from alignment.modeling.module_utils import disable_dropout
from alignment.modeling.tokenizer import load_tokenizer
from data_schemas.records import Message

logger = logging.getLogger(__name__)

STATS_FILE = "reward_stats.json"
DEFAULT_SCORING_MAX_LENGTH = 1024


@dataclass
class RewardStats:
    mean: float = 0.0
    std: float = 1.0

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / max(self.std, 1e-6)

    @classmethod
    def load(cls, model_dir: str | Path) -> RewardStats:
        path = Path(model_dir) / STATS_FILE
        if not path.is_file():
            logger.warning("%s has no %s: scores are used unnormalised", model_dir, STATS_FILE)
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(mean=float(data["mean"]), std=float(data["std"]))


class RewardScorer:
    """Batched scoring of (prompt messages, response text) pairs by a sequence-classification reward model."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        stats: RewardStats | None = None,
        batch_size: int = 8,
        max_length: int = DEFAULT_SCORING_MAX_LENGTH,
        name: str = "reward",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stats = stats or RewardStats()
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name

    @property
    def max_length(self) -> int:
        return self._max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        # Capped at the model's positions however it is set: an encoder fails on longer inputs instead of degrading.
        self._max_length = scoring_max_length(self.model, value)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(
        self, prompts: Sequence[Sequence[Message]], responses: Sequence[str], normalize: bool = False
    ) -> torch.Tensor:
        """Raw (or normalised) scalar rewards, shape ``(N,)``, fp32 on the CPU."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        was_training = self.model.training
        self.model.eval()
        out = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [
                render_reward_texts(self.tokenizer, list(p), r)
                for p, r in zip(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])
            ]
            out.append(self._forward(texts))
        self.model.train(was_training)
        scores = torch.cat(out) if out else torch.zeros(0)
        return self.stats.normalize(scores) if normalize else scores

    def _forward(self, texts: list[str]) -> torch.Tensor:
        # The same tokenization as reward training (special tokens, left truncation keeping the end).
        batch = tokenize_reward_texts(self.tokenizer, texts, self.max_length)
        logits = self.model(
            input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
        ).logits
        return logits[:, 0].float().cpu()


def load_reward_scorer(
    model_dir: str | Path,
    *,
    name: str | None = None,
    batch_size: int = 8,
    quant_cfg=None,
    device: torch.device | str | None = None,
    max_length: int = DEFAULT_SCORING_MAX_LENGTH,
) -> RewardScorer:
    """A scorer for a reward stage output directory (or any sequence-classification model); inputs longer than
    ``max_length`` (or than the model's positions) lose the start of the prompt."""

    model_cfg = ModelConfig(model_name_or_path=str(model_dir))
    tokenizer = load_tokenizer(model_cfg)
    model = load_reward_model(
        model_cfg, LoraConfig(use_lora=False), quant_cfg or QuantConfig(), trainable=False, tokenizer=tokenizer
    )
    disable_dropout(model)
    model.eval()
    if device is not None and not (quant_cfg and (quant_cfg.load_in_8bit or quant_cfg.load_in_4bit)):
        model.to(device)
    return RewardScorer(
        model,
        tokenizer,
        RewardStats.load(model_dir),
        batch_size=batch_size,
        max_length=max_length,
        name=name or Path(model_dir).name,
    )


def scoring_max_length(model: torch.nn.Module, cap: int = DEFAULT_SCORING_MAX_LENGTH) -> int:
    """The longest input a reward model is given: ``cap``, or less where its position table is shorter (every
    :class:`RewardScorer` applies it to the length it is asked for).

    An encoder with learned absolute positions (BERT, MiniLM: 512) fails on longer inputs instead of degrading, and a
    policy's prompt plus response can be longer; texts are cut from the left, so the response's end is kept.
    """
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(cap, int(positions)) if isinstance(positions, int) and positions > 0 else cap
