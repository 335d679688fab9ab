"""PPO-ptx: the demonstrations' log-likelihood as a term of the policy's objective.

InstructGPT (Ouyang et al. 2022, eq. 2) adds ``gamma * E_{x ~ D_pretrain}[log pi(x)]`` to the RL objective, so
that optimising the reward does not undo what the policy already did well. Here the term reads demonstrations
(``ptx_dataset_name``: the SFT stage's, say) rather than pretraining text, with the loss on the
assistant tokens only, as SFT's: the policy is held to the demonstrations' answers to safe requests and their
refusals of harmful ones while the reward moves it, where the KL penalty holds it only on what it samples.

Each policy step takes the next ``ptx_batch_size`` demonstrations of a seeded permutation per epoch; the position
follows from the update number, so a resumed run reads the demonstrations an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from alignment.core.config import Config, DataConfig
from alignment.data.collate import SFTCollator, tokenize_demonstrations
from alignment.data.load import load_records
from alignment.modeling.attention import supports_flat_packing
from alignment.ppo.actor_critic import ActorCritic
from alignment.training.batching import local_shard, micro_batch_indices

logger = logging.getLogger(__name__)


class PtxTerm:
    """The demonstrations' token-mean negative log-likelihood under the policy, one batch per policy step."""

    def __init__(
        self, examples: list, collator: SFTCollator, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        if not examples:
            raise ValueError("ptx_dataset_name holds no demonstration that can be trained on")
        self.examples, self.collator = examples, collator
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.position = 0  # global policy steps taken: where the next batch comes from

    def seek(self, position: int) -> None:
        """Read from policy step ``position`` on (the loop sets it at each update, so resume needs no state)."""
        self.position = position

    def next_batch(self) -> dict[str, torch.Tensor]:
        global_batch = self.batch_size * self.world
        per_epoch = math.ceil(len(self.examples) / global_batch)
        epoch, k = divmod(self.position, per_epoch)
        self.position += 1
        indices = micro_batch_indices(len(self.examples), global_batch, epoch, self.seed)[k]
        # An epoch's last batch may leave a process nothing: it reads one demonstration rather than skip the term.
        return self.collator([self.examples[i] for i in local_shard(indices, self.rank, self.world) or indices[:1]])

    def loss(self, ac: ActorCritic) -> torch.Tensor:
        """The next batch's mean negative log-likelihood per assistant token under the policy adapter (temperature 1:
        the demonstrations' own likelihood, not the sampling distribution)."""
        logits, targets = ac.demonstration_logits(self.next_batch())
        return torch.nn.functional.cross_entropy(logits.float(), targets)


def build_ptx_term(cfg: Config, ac: ActorCritic, tokenizer: Any, rank: int = 0, world: int = 1) -> PtxTerm | None:
    """The ptx term of ``cfg.ppo`` (None when ``ptx_coef`` is 0), its demonstrations rendered as SFT renders them."""
    ppo = cfg.ppo
    if not ppo.ptx_coef:
        return None
    data = DataConfig(
        dataset_name=ppo.ptx_dataset_name, invalid_records=cfg.data.invalid_records, select_rows=ppo.ptx_select_rows
    )
    records = load_records(data, "demonstration", seed=cfg.train.seed).records
    examples, _, _ = tokenize_demonstrations(tokenizer, records, cfg.train.max_length, "all")  # as SFT renders them
    logger.info(
        "ptx: %d of %d demonstrations of %s, gamma %g", len(examples), len(records), data.dataset_name, ppo.ptx_coef
    )
    flat = ppo.padding_free and supports_flat_packing(ac.model.get_base_model())
    collator = SFTCollator(
        tokenizer.pad_token_id, padding_free=ppo.padding_free, flat_rows=flat, row_multiple=ac.row_multiple
    )
    return PtxTerm(examples, collator, ppo.ptx_batch_size, cfg.train.seed, rank, world)
