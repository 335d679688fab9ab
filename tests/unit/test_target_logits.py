"""The LM head on labelled positions only: position t predicts labels[t + 1], with or without the head hook."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.modeling.target_logits import target_logits


class TinyLM(torch.nn.Module):
    """Hidden state = one-hot of the token id; the head maps it to logits through a fixed table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.head = torch.nn.Linear(table.shape[0], table.shape[1], bias=False)
        self.head.weight.data = table.T.clone()

    def forward(self, input_ids, use_cache=False, **_):
        hidden = torch.nn.functional.one_hot(input_ids, self.head.in_features).float()
        return type("Out", (), {"logits": self.head(hidden)})()


@pytest.mark.parametrize("with_head", [True, False])
def test_each_target_is_predicted_by_the_position_before_it(with_head):
    # Token 0 predicts token 1 with p = 3/4; token 1 predicts token 0 with p = 4/5.
    model = TinyLM(torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]]))
    batch = {"input_ids": torch.tensor([[0, 1, 0]]), "labels": torch.tensor([[-100, 1, 0]])}
    logits, targets, where = target_logits(model, model.head if with_head else None, batch)
    assert targets.tolist() == [1, 0] and where.tolist() == [[0, 0], [1, 2]]
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert losses.tolist() == pytest.approx([-math.log(0.75), -math.log(0.8)], abs=1e-6)
