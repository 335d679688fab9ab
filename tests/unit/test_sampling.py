"""Evaluation's sampler: one seeded random stream per row, drawing from the tempered softmax."""

from __future__ import annotations

import torch


def test_row_stream_sampler_draws_from_the_tempered_softmax_and_never_a_masked_token() -> None:
    """20,000 draws from one row: frequencies within 0.015 of softmax(scores / T); a -inf score is never drawn."""
    from alignment.modeling.generation import RowStreamSampler, row_seed

    scores = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, -1.0]])
    expected = torch.softmax(scores / 0.7, dim=-1)[0]
    sampler = RowStreamSampler(0.7, [row_seed(3, 0)])
    counts = torch.zeros(5)
    for _ in range(20_000):
        out = sampler(None, scores)
        assert int(torch.isfinite(out).sum()) == 1  # one token left for greedy to pick
        counts[int(out.argmax())] += 1
    assert counts[2] == 0
    torch.testing.assert_close(counts / 20_000, expected, atol=0.015, rtol=0)
    # Rows are independent streams: a row's draws do not change when another row joins the batch.
    alone = RowStreamSampler(1.0, [row_seed(3, 1)])
    paired = RowStreamSampler(1.0, [row_seed(3, 0), row_seed(3, 1)])
    flat = torch.zeros(1, 50)
    assert [int(alone(None, flat).argmax()) for _ in range(20)] == [
        int(paired(None, flat.expand(2, -1))[1].argmax()) for _ in range(20)
    ]
    assert len({row_seed(42, i) for i in range(1000)} | {row_seed(43, i) for i in range(1000)}) == 2000
