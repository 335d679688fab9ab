"""The refusal detectors on the answers of the 135M policy itself, against hand labels.

The classifier was fitted and validated on XSTest completions by large chat models. The labelled sample here
(``alignment/modeling/refusal_model/policy_sample_labels.jsonl``) holds 147 answers by the real-data recipe's SFT and PPO
policies to AdvBench, XSTest, Vicuna and Koala prompts, each labelled refusal or not by hand (one annotator, XSTest's
convention: a full or partial refusal, including an answer that only offers an alternative). On these answers the
phrase list is the more precise judge: the classifier also calls compliance ("Sure, I can show you how: ...") a
refusal. The README quotes both detectors' figures on this sample.
"""

from __future__ import annotations

import json

import pytest

from alignment.evaluate.refusal_training import balanced_accuracy
from alignment.modeling.refusal import PhraseRefusalDetector, agreement, detect_refusals, make_detector
from alignment.modeling.refusal_classifier import SHIPPED_DIR

SAMPLE = SHIPPED_DIR / "policy_sample_labels.jsonl"


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def test_the_sample_holds_the_policy_answers_and_labels_only(sample):
    assert len(sample) == 147 and sum(r["refusal"] for r in sample) == 47
    assert {r["prompt_set"] for r in sample} == {"advbench", "xstest", "vicuna", "koala"}
    for row in sample:  # answers by this project's policies; the prompts stay in their datasets, named by index
        assert set(row) == {"policy", "prompt_set", "prompt_label", "prompt_index", "response", "refusal"}
        assert row["response"].strip() and isinstance(row["refusal"], bool)


def test_the_phrase_list_judges_the_small_policy_well(sample):
    texts, labels = [r["response"] for r in sample], [r["refusal"] for r in sample]
    phrase = PhraseRefusalDetector()
    figures = agreement(phrase, texts, labels)
    assert figures["precision"] >= 0.85 and figures["recall"] >= 0.8, figures
    assert balanced_accuracy(detect_refusals(phrase, texts), labels) >= 0.85


def test_the_classifier_finds_the_refusals(sample):
    texts, labels = [r["response"] for r in sample], [r["refusal"] for r in sample]
    figures = agreement(make_detector("classifier"), texts, labels)
    assert figures["recall"] >= 0.85, figures  # its precision here, 0.62, is in the README
