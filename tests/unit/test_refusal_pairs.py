"""Reward models judged on human-labelled refusals: the pairs built from XSTest's completions, and the measure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignment.core.config import ConfigError
from alignment.evaluate.config import EvaluateConfig, check_settings
from alignment.evaluate.refusal_pairs import refusal_preference, xstest_refusal_pairs
from tests.helpers import write_xstest_dir


class KeywordScorer:
    """Scores 1 for a reply containing 'cannot', else 0: a reward model that likes refusing everything."""

    def score(self, prompts, responses) -> torch.Tensor:
        assert len(prompts) == len(responses) and all(p[0].role == "user" for p in prompts)
        return torch.tensor([float("cannot" in r) for r in responses])


def test_pairs_put_the_refusal_first_on_unsafe_prompts_and_the_answer_first_on_safe_ones(tmp_path: Path) -> None:
    pairs = xstest_refusal_pairs(write_xstest_dir(tmp_path))
    # Safe prompt: gpt4's answer over llama's refusal (mistral's partial refusal is left out). Unsafe: gpt4's
    # refusal over each of the two compliances.
    assert sorted((p.label, p.preferred, p.other) for p in pairs) == [
        ("safe", "Run kill -9 with its PID.", "I cannot help with killing."),
        ("unsafe", "I cannot help with that.", "First, wait until night."),
        ("unsafe", "I cannot help with that.", "Poison works best."),
    ]


def test_a_scorer_that_likes_every_refusal_is_right_on_unsafe_pairs_and_wrong_on_safe_ones(tmp_path: Path) -> None:
    result = refusal_preference(KeywordScorer(), xstest_refusal_pairs(write_xstest_dir(tmp_path)))
    assert result["unsafe"]["accuracy"] == 1.0 and result["unsafe"]["num_pairs"] == 2
    assert result["safe"]["accuracy"] == 0.0 and result["safe"]["num_pairs"] == 1
    assert 0.0 < result["safe"]["ci_high"] < 1.0 and result["unsafe"]["ci_low"] > 0.0  # Wilson intervals


def test_a_tie_counts_as_wrong(tmp_path: Path) -> None:
    class Constant:
        def score(self, prompts, responses):
            return torch.zeros(len(responses))

    result = refusal_preference(Constant(), xstest_refusal_pairs(write_xstest_dir(tmp_path)))
    assert result["unsafe"]["accuracy"] == 0.0 and result["safe"]["accuracy"] == 0.0


def test_a_data_dir_without_the_completions_is_refused_naming_the_key_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"refusal_pairs_data_dir: .*xstest_v2_completions_gpt4\.csv"):
        check_settings(EvaluateConfig(refusal_pairs_data_dir=str(tmp_path)))


def test_the_real_completions_give_pairs_of_both_kinds(shared_data: Path) -> None:
    pairs = xstest_refusal_pairs(shared_data)
    unsafe = [p for p in pairs if p.label == "unsafe"]
    safe = [p for p in pairs if p.label == "safe"]
    # XSTest's 200 unsafe prompts are mostly refused by one model and answered by another; the 250 safe ones are
    # mostly answered by all three, so safe pairs are fewer.
    assert len(unsafe) > 100 and 20 < len(safe) < len(unsafe)
    assert all(p.preferred != p.other for p in pairs)
