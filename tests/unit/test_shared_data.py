"""Every real dataset in ``../shared/data`` loads with the counts it really holds, and is detected by its columns.

The counts differ from ``shared/data/README.md`` where the README counts something else; each
such test says what and why. Also: ``alignment data inspect`` on real files, with a small
word-level tokenizer standing in for the model's.
"""

from __future__ import annotations

import gzip
import itertools
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from alignment.data.load import load_records_from_path
from alignment.data.readers import read_rows
from alignment.inspect_data import format_report, inspect_source, length_stats
from data_schemas import RecordError, detect_format
from tests.helpers import SHARED_DATA


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real data not available: {path} (the ../shared/data checkout is absent)")
    return path


# ----------------------------------------------------------------------------------- HH-RLHF


@pytest.mark.parametrize(
    ("name", "rows", "valid", "skipped"),
    [
        # README: 1,137 pairs, 2 with chosen == rejected. The file holds 6 more unusable pairs:
        # 3 empty rejected replies (lines 553, 894, 1054), 2 rejected transcripts that end with a
        # Human turn (786, 1056) and 1 empty assistant turn inside the shared history (465).
        ("helpful-online", 1137, 1129, {"chosen_equals_rejected": 2, "empty_text": 4, "no_assistant_turn": 2}),
        # README: 2,749 pairs, 32 identical. 3 more pairs differ before the last reply because a
        # turn was written "  Human: ..." without the blank line (lines 720, 1598, 2365).
        ("helpful-rejection-sampled", 2749, 2714, {"chosen_equals_rejected": 32, "prefix_mismatch": 3}),
        # 4 pairs whose CHOSEN reply is empty (silence preferred to a harmful answer: lines 87, 517,
        # 926, 1104) and 1 prefix mismatch (line 1255).
        ("harmless-base-part1", 1500, 1495, {"empty_text": 4, "prefix_mismatch": 1}),
    ],
)
def test_hh_rlhf_pairs(name, rows, valid, skipped):
    path = shared(f"hh-rlhf/{name}.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        assert sum(1 for _ in f) == rows
    record_set = load_records_from_path(path, "comparison", invalid="skip")
    assert record_set.format == "hh_rlhf" and record_set.rows_read == rows
    assert len(record_set.records) == valid
    assert dict(record_set.skipped.by_reason) == skipped
    assert all(r.ranks == (0, 1) and r.prompt[-1].role == "user" for r in record_set.records)


def test_hh_rlhf_raise_stops_at_the_first_identical_pair():
    path = shared("hh-rlhf/helpful-online.jsonl.gz")
    with pytest.raises(RecordError) as e:
        load_records_from_path(path, "comparison")
    assert str(e.value) == f"{path}:199: field 'rejected': chosen is identical to rejected"


def test_hh_rlhf_as_demonstrations_and_prompts():
    path = shared("hh-rlhf/helpful-online.jsonl.gz")
    demos = load_records_from_path(path, "demonstration", invalid="skip")
    prompts = load_records_from_path(path, "prompt", invalid="skip")
    # Only the chosen transcript is read; line 465's empty history turn is its one defect.
    assert len(demos.records) == len(prompts.records) == 1136
    assert dict(demos.skipped.by_reason) == {"empty_text": 1}


# ----------------------------------------------------------------------------------- OpenAssistant


def _raw_oasst_counts(path: Path) -> Counter:
    """The README's figures, counted straight from the JSON (all nodes, synthetic included)."""
    counts: Counter = Counter()

    def walk(node: dict, in_synthetic_tree: bool) -> None:
        counts[node["role"]] += 1
        counts["synthetic"] += bool(node["synthetic"])
        ranked = [r["rank"] for r in node["replies"] if r["role"] == "assistant" and r.get("rank") is not None]
        if len(ranked) >= 2:
            pairs = sum(1 for a, b in itertools.combinations(ranked, 2) if a != b)
            counts["pairs"] += pairs
            counts["synthetic_tree_pairs"] += pairs if in_synthetic_tree else 0
        for reply in node["replies"]:
            walk(reply, in_synthetic_tree)

    with path.open(encoding="utf-8") as f:
        for line in f:
            root = json.loads(line)["prompt"]
            walk(root, bool(root["synthetic"]))
    return counts


def test_oasst_trees_ranked_groups_and_pairs():
    path = shared("oasst1/en_100_tree.jsonl")
    raw = _raw_oasst_counts(path)
    # README: 687 assistant messages, 754 better/worse pairs, 22 synthetic nodes.
    assert (raw["assistant"], raw["prompter"], raw["synthetic"]) == (687, 480, 22)
    # 754 is sum over every prompter turn of C(K, 2) for its K ranked replies: there are no tied
    # ranks in this file, so C(K, 2) pairs and strictly-ordered pairs coincide. It counts the 5
    # trees whose root prompt is synthetic (model-written, "chip20b"; 5 roots + 17 replies = the 22
    # synthetic nodes), which hold 22 pairs. Dropping them leaves 95 trees, 207 groups, 732 pairs.
    assert (raw["pairs"], raw["synthetic_tree_pairs"]) == (754, 22)

    comparisons = load_records_from_path(path, "comparison").records
    assert len(comparisons) == 207
    assert sum(len(c.pairs()) for c in comparisons) == 732 == raw["pairs"] - raw["synthetic_tree_pairs"]
    assert Counter(len(c.responses) for c in comparisons) == {2: 56, 3: 116, 4: 24, 5: 3, 6: 6, 8: 1, 9: 1}
    assert sum(len(c.responses) for c in comparisons) == 624  # of 670 human replies; 46 are unranked
    assert Counter(len(c.prompt) for c in comparisons) == {1: 94, 3: 111, 5: 2}  # depth of the ranked turn

    demos = load_records_from_path(path, "demonstration").records
    prompts = load_records_from_path(path, "prompt").records
    assert len(demos) == 207 and len(prompts) == 95  # one best reply per group; one root per human tree
    assert {d.messages[-1].content for d in demos} == {c.chosen for c in comparisons}


def test_oasst_prompt_lottery():
    record_set = load_records_from_path(shared("oasst1/prompt_lottery_en_250_text.jsonl"), "prompt")
    assert record_set.format == "prompt_text" and len(record_set.records) == 250
    assert len({p.text for p in record_set.records}) == 250


# ----------------------------------------------------------------------------------- SFT


def test_lima():
    record_set = load_records_from_path(shared("sft/lima.json"), "demonstration")
    assert record_set.format == "alpaca" and len(record_set.records) == 1029
    # 29 records carry a LLaMA-Factory "history" of earlier turns (up to 9 exchanges).
    turns = Counter(len(d.messages) for d in record_set.records)
    assert turns[2] == 1000 and sum(turns.values()) - turns[2] == 29 and max(turns) == 20


def test_self_instruct_seed_tasks():
    record_set = load_records_from_path(shared("sft/self-instruct-seed-tasks.jsonl"), "demonstration")
    assert record_set.format == "self_instruct" and len(record_set.records) == 175
    assert sum("\n\n" in d.messages[0].content for d in record_set.records) == 125  # tasks with an input


# ----------------------------------------------------------------------------------- prompt sets


def test_advbench():
    record_set = load_records_from_path(shared("safety/advbench-harmful-behaviors.csv"), "prompt")
    assert record_set.format == "advbench" and len(record_set.records) == 520
    assert {p.label for p in record_set.records} == {"harmful"}


def test_xstest():
    record_set = load_records_from_path(shared("safety/xstest-prompts.csv"), "prompt")
    assert record_set.format == "xstest"
    assert Counter(p.label for p in record_set.records) == {"safe": 250, "unsafe": 200}
    assert len({p.metadata["type"] for p in record_set.records}) == 18


def test_vicuna_and_koala():
    vicuna = load_records_from_path(shared("helpfulness/vicuna-questions.jsonl"), "prompt")
    koala = load_records_from_path(shared("helpfulness/koala-test-set.jsonl"), "prompt")
    assert (vicuna.format, len(vicuna.records)) == ("vicuna", 80)
    assert (koala.format, len(koala.records)) == ("koala", 180)
    assert {p.label for p in vicuna.records + koala.records} == {"helpful"}


# ----------------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("hh-rlhf/helpful-online.jsonl.gz", "hh_rlhf"),
        ("hh-rlhf/helpful-rejection-sampled.jsonl.gz", "hh_rlhf"),
        ("hh-rlhf/harmless-base-part1.jsonl.gz", "hh_rlhf"),
        ("oasst1/en_100_tree.jsonl", "oasst"),
        ("oasst1/prompt_lottery_en_250_text.jsonl", "prompt_text"),
        ("sft/lima.json", "alpaca"),
        ("sft/self-instruct-seed-tasks.jsonl", "self_instruct"),
        ("safety/advbench-harmful-behaviors.csv", "advbench"),
        ("safety/xstest-prompts.csv", "xstest"),
        ("helpfulness/vicuna-questions.jsonl", "vicuna"),
        ("helpfulness/koala-test-set.jsonl", "koala"),
    ],
)
def test_detection_on_real_columns(relative, expected):
    [first] = itertools.islice(read_rows(str(shared(relative))), 1)
    columns = ["text"] if isinstance(first.value, str) else list(first.value)
    assert detect_format(columns) == expected


def test_detection_failure_on_real_columns_lists_them_and_the_formats():
    columns = list(json.loads(shared("helpfulness/koala-test-set.jsonl").open().readline())) + ["extra"]
    with pytest.raises(RecordError) as e:
        detect_format(["question_id", "text_body"])
    assert "[question_id, text_body]" in str(e.value) and "koala: {id, prompt} (exactly)" in str(e.value)
    assert detect_format(columns) == "prompts"  # Koala's columns plus one more: a generic prompt list


# ----------------------------------------------------------------------------------- inspection


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def word_tokenizer():
    """Every word and punctuation run is one (unknown) token: lengths are easy to count by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_length_stats():
    assert length_stats(list(range(1, 101))) == {"min": 1, "median": 50, "p95": 95, "max": 100}
    assert length_stats([]) == {}


def test_inspect_counts_tokens_as_the_template_renders(tmp_path, word_tokenizer):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"prompt": "hi there", "chosen": "yo", "rejected": "go away now"},
        {"prompt": "x", "chosen": "a", "rejected": "a"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = inspect_source(str(path), word_tokenizer, kind="comparison")
    info = report["kinds"]["comparison"]
    # "<user> hi there\n<assistant> yo\n" = < user > hi there < assistant > yo = 9 tokens; the rejected one 11.
    assert (report["format"], info["records"], info["invalid"]) == ("preference", 1, {"chosen_equals_rejected": 1})
    assert info["tokens"] == {"min": 9, "median": 10, "p95": 11, "max": 11}
    assert info["examples"] == ["<user> hi there\n<assistant>\n[rank 0] yo\n[rank 1] go away now"]


def test_inspect_demo_reads_one_built_in_file_per_kind(tmp_path, monkeypatch, word_tokenizer):
    import alignment.data.load as data_module

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    files = {
        "demonstrations.jsonl": {"messages": chat},
        "comparisons.jsonl": {"prompt": "Hi", "chosen": "Hello", "rejected": "Go"},
        "prompts.jsonl": {"prompt": "Hi", "label": "helpful"},
    }
    for name, row in files.items():
        (tmp_path / name).write_text(json.dumps(row) + "\n", encoding="utf-8")
    monkeypatch.setattr(data_module, "DEMO_DIR", tmp_path)
    report = inspect_source("demo", word_tokenizer)
    assert report["format"] == "openai_messages/preference/prompts"
    assert {kind: info["records"] for kind, info in report["kinds"].items()} == {
        "demonstration": 1,
        "comparison": 1,
        "prompt": 1,
    }


def test_inspect_real_file_every_kind(word_tokenizer):
    report = inspect_source(str(shared("hh-rlhf/helpful-online.jsonl.gz")), word_tokenizer)
    assert report["format"] == "hh_rlhf" and set(report["kinds"]) == {"demonstration", "comparison", "prompt"}
    comparison = report["kinds"]["comparison"]
    assert comparison["records"] == 1129 and comparison["invalid"]["chosen_equals_rejected"] == 2
    assert comparison["sequences"] == 2 * 1129 and len(comparison["examples"]) == 2
    tokens = comparison["tokens"]
    assert 0 < tokens["min"] <= tokens["median"] <= tokens["p95"] <= tokens["max"]
    text = format_report(report)
    assert "format:  hh_rlhf (gives: demonstration, comparison, prompt)" in text
    assert "comparison: 1129 records from 1137 rows" in text and "chosen_equals_rejected: 2" in text


def test_data_inspect_stage_prints_the_report(monkeypatch, capsys, word_tokenizer):
    from alignment.cli import main as cli_main

    seen = []
    fake_models = types.ModuleType("alignment.modeling.tokenizer")

    def load_tokenizer(model_cfg):
        seen.append(model_cfg.model_name_or_path)
        return word_tokenizer

    fake_models.load_tokenizer = load_tokenizer
    monkeypatch.setitem(sys.modules, "alignment.modeling.tokenizer", fake_models)
    source = str(shared("helpfulness/vicuna-questions.jsonl"))
    assert cli_main(["data", "inspect", source, "--model_name_or_path", "tiny", "--invalid_records", "skip"]) == 0
    out = capsys.readouterr().out
    assert seen == ["tiny"]
    assert "format:  vicuna (gives: prompt)" in out and "prompt: 80 records from 80 rows" in out
    assert "example 1:" in out and "How can I improve my time management skills?" in out
