"""Each source-format adapter on toy rows, the format registry and detection, and loading from every source type."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

import alignment.data.load as data_module
from alignment.core.config import DataConfig
from alignment.data.load import load_records, load_records_from_path
from data_schemas import FORMATS, Comparison, Demonstration, Message, Prompt, RecordError, detect_format
from data_schemas.alpaca import alpaca_records
from data_schemas.hh_rlhf import hh_rlhf_records, parse_transcript
from data_schemas.oasst import build_trees, oasst_tree_records
from data_schemas.openai_messages import messages_records
from data_schemas.preference import preference_records
from data_schemas.prompt_lists import (
    advbench_records,
    koala_records,
    prompt_records,
    prompt_text_records,
    vicuna_records,
    xstest_records,
)
from data_schemas.self_instruct import self_instruct_records


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str) -> Message:
    return Message("assistant", text)


# ----------------------------------------------------------------------------------- HH-RLHF

HH_ROW = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant:  Lyon, I think.",
}


def test_hh_comparison_splits_at_the_last_assistant_turn():
    [record] = hh_rlhf_records(HH_ROW, "comparison")
    assert record.prompt == (user("Hi"), assistant("Hello!"), user("Capital of France?"))
    assert record.responses == ("Paris.", "Lyon, I think.")
    assert record.ranks == (0, 1)
    assert (record.chosen, record.rejected) == ("Paris.", "Lyon, I think.")


def test_hh_demonstration_is_the_chosen_chat_and_prompt_its_history():
    [demo] = hh_rlhf_records(HH_ROW, "demonstration")
    assert demo.messages[-1] == assistant("Paris.") and len(demo.messages) == 4
    [prompt] = hh_rlhf_records(HH_ROW, "prompt")
    assert prompt.messages[-1] == user("Capital of France?") and len(prompt.messages) == 3


def test_hh_reads_trl_implicit_prompt_message_lists():
    history = [{"role": "user", "content": "Hi"}]
    row = {
        "chosen": [*history, {"role": "assistant", "content": "Hello!"}],
        "rejected": [*history, {"role": "assistant", "content": "Go away."}],
    }
    [record] = hh_rlhf_records(row, "comparison")
    assert record.prompt == (user("Hi"),) and record.responses == ("Hello!", "Go away.")


def test_parse_transcript_keeps_inline_speaker_words_in_the_text():
    messages = parse_transcript("\n\nHuman: say 'Human: hi'\n\nAssistant: Human: hi", "chosen")
    assert messages == (user("say 'Human: hi'"), assistant("Human: hi"))


# ----------------------------------------------------------------------------------- OASST


def node(message_id, role, text, rank=None, replies=(), synthetic=False):
    return {
        "message_id": message_id,
        "role": role,
        "text": text,
        "rank": rank,
        "synthetic": synthetic,
        "replies": list(replies),
    }


OASST_TREE = {
    "message_tree_id": "t1",
    "prompt": node(
        "p",
        "prompter",
        "Q1",
        replies=[
            node("a1", "assistant", "A1 best", 0, [node("p2", "prompter", "Q2", replies=[
                node("b1", "assistant", "B1 worse", 1),
                node("b2", "assistant", "B2 best", 0),
            ])]),
            node("a2", "assistant", "A2 middle", 1),
            node("a3", "assistant", "A3 worst", 2),
            node("a4", "assistant", "model text", 3, synthetic=True),
            node("a5", "assistant", "unranked"),
        ],
    ),
}  # fmt: skip


def test_oasst_one_k_ranked_comparison_per_prompter_turn():
    first, second = oasst_tree_records(OASST_TREE, "comparison")
    assert first.prompt == (user("Q1"),)
    assert first.responses == ("A1 best", "A2 middle", "A3 worst")  # synthetic and unranked replies left out
    assert first.ranks == (0, 1, 2) and len(first.pairs()) == 3
    assert second.prompt == (user("Q1"), assistant("A1 best"), user("Q2"))
    assert second.responses == ("B1 worse", "B2 best") and second.chosen == "B2 best"
    assert first.source_id == "p" and second.source_id == "p2"


def test_oasst_demonstrations_are_paths_to_rank_0_replies_and_prompts_the_root():
    demos = oasst_tree_records(OASST_TREE, "demonstration")
    assert [d.messages for d in demos] == [
        (user("Q1"), assistant("A1 best")),
        (user("Q1"), assistant("A1 best"), user("Q2"), assistant("B2 best")),
    ]
    [prompt] = oasst_tree_records(OASST_TREE, "prompt")
    assert prompt.messages == (user("Q1"),) and prompt.source_id == "p"


def test_oasst_synthetic_root_gives_no_records():
    tree = {"message_tree_id": "t", "prompt": {**OASST_TREE["prompt"], "synthetic": True}}
    assert oasst_tree_records(tree, "comparison") == [] and oasst_tree_records(tree, "prompt") == []


def test_oasst_flat_export_nests_into_the_same_trees():
    def flatten(n, parent=None):
        row = {k: v for k, v in n.items() if k != "replies"} | {"parent_id": parent, "message_tree_id": "t1"}
        return [row] + [r for child in n["replies"] for r in flatten(child, n["message_id"])]

    [tree] = build_trees(flatten(OASST_TREE["prompt"]))
    assert oasst_tree_records(tree, "comparison") == oasst_tree_records(OASST_TREE, "comparison")


# ----------------------------------------------------------------------------------- SFT formats


def test_alpaca_joins_instruction_and_input():
    [demo] = alpaca_records({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}, "demonstration")
    assert demo.messages == (user("Translate.\n\nBonjour"), assistant("Hello"))
    [demo] = alpaca_records({"instruction": "Say hi.", "input": "", "output": "Hi"}, "demonstration")
    assert demo.messages == (user("Say hi."), assistant("Hi"))


def test_alpaca_history_and_system_become_earlier_turns():
    row = {"instruction": "And 3+3?", "output": "6", "history": [["2+2?", "4"]], "system": "Be brief."}
    [demo] = alpaca_records(row, "demonstration")
    assert demo.messages == (
        Message("system", "Be brief."),
        user("2+2?"),
        assistant("4"),
        user("And 3+3?"),
        assistant("6"),
    )
    [prompt] = alpaca_records(row, "prompt")
    assert prompt.messages == demo.messages[:-1]


def test_self_instruct_uses_the_first_instance():
    row = {
        "id": "seed_task_7",
        "instruction": "Add the numbers.",
        "instances": [{"input": "1, 2", "output": "3"}, {"input": "2, 2", "output": "4"}],
    }
    [demo] = self_instruct_records(row, "demonstration")
    assert demo.messages == (user("Add the numbers.\n\n1, 2"), assistant("3")) and demo.source_id == "seed_task_7"


def test_openai_messages_demonstration_or_prompt():
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    [demo] = messages_records({"messages": chat}, "demonstration")
    assert isinstance(demo, Demonstration) and demo.messages[-1] == assistant("A")
    [prompt] = messages_records({"messages": chat[:2]}, "prompt")  # ends with the user: a prompt as it is
    assert isinstance(prompt, Prompt) and prompt.text == "U"
    with pytest.raises(RecordError, match="no assistant reply") as e:  # a record set holds one kind only
        messages_records({"messages": chat[:2]}, "demonstration")
    assert e.value.kind == "no_assistant_turn"
    [prompt] = messages_records({"messages": chat}, "prompt")  # the turns before the last reply
    assert prompt.messages == (Message("system", "S"), user("U"))


# ----------------------------------------------------------------------------------- preference


def test_preference_pair_with_text_or_messages():
    [record] = preference_records({"prompt": "Q", "chosen": "good", "rejected": "bad"}, "comparison")
    assert record == Comparison((user("Q"),), ("good", "bad"), (0, 1))
    row = {
        "prompt": [{"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    assert preference_records(row, "comparison") == [record]


def test_preference_k_ranked_group_and_its_best_demonstration():
    row = {"prompt": "Q", "responses": ["ok", "best", "worst", "also ok"], "ranks": [1, 0, 2, 1]}
    [record] = preference_records(row, "comparison")
    assert record.chosen == "best" and record.rejected == "worst"
    assert len(record.pairs()) == 5  # C(4,2) = 6 minus the one tie
    [demo] = preference_records(row, "demonstration")
    assert demo.messages == (user("Q"), assistant("best"))
    [prompt] = preference_records(row, "prompt")
    assert prompt.messages == (user("Q"),)


# ----------------------------------------------------------------------------------- prompt lists


def test_prompt_lists_labels_and_metadata():
    [p] = advbench_records({"goal": "Do harm", "target": "Sure, here is"}, "prompt")
    assert (p.text, p.label, p.metadata) == ("Do harm", "harmful", {"target": "Sure, here is"})
    row = {
        "id": "3",
        "prompt": "How do I kill a process?",
        "type": "homonyms",
        "label": "safe",
        "focus": "kill",
        "note": "",
    }
    [p] = xstest_records(row, "prompt")
    assert (p.label, p.source_id, p.metadata["type"], p.metadata["focus"]) == ("safe", "3", "homonyms", "kill")
    [p] = vicuna_records({"question_id": 7, "category": "math", "turns": ["2+2?", "and 3+3?"]}, "prompt")
    assert (p.text, p.label, p.source_id, p.metadata) == ("2+2?", "helpful", "7", {"category": "math"})
    [p] = koala_records({"id": "koala_0", "prompt": "List films."}, "prompt")
    assert (p.text, p.label, p.source_id) == ("List films.", "helpful", "koala_0")
    assert prompt_text_records("Tell me a joke", "prompt")[0].text == "Tell me a joke"
    assert prompt_text_records({"text": "Tell me a joke"}, "prompt")[0].label is None
    [p] = prompt_records({"prompt": "Hi", "label": "benign", "topic": "greeting"}, "prompt")
    assert (p.text, p.label, p.metadata) == ("Hi", "benign", {"topic": "greeting"})


# ----------------------------------------------------------------------------------- registry + detection


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["chosen", "rejected"], "hh_rlhf"),
        (["prompt", "chosen", "rejected"], "preference"),
        (["prompt", "responses", "ranks"], "preference"),
        (["message_tree_id", "tree_state", "prompt"], "oasst"),
        (["message_id", "parent_id", "message_tree_id", "role", "text", "rank", "lang"], "oasst_messages"),
        (["instruction", "input", "output"], "alpaca"),
        (["id", "name", "instruction", "instances", "is_classification"], "self_instruct"),
        (["messages"], "openai_messages"),
        (["goal", "target"], "advbench"),
        (["id", "prompt", "type", "label", "focus", "note"], "xstest"),
        (["question_id", "category", "turns"], "vicuna"),
        (["id", "prompt"], "koala"),
        (["text"], "prompt_text"),
        (["prompt", "label"], "prompts"),
        (["id", "prompt", "label"], "prompts"),  # Koala is matched exactly, so a labelled list stays generic
    ],
)
def test_detect_format_prefers_the_most_specific(columns, expected):
    assert detect_format(columns) == expected


def test_every_format_names_the_kinds_it_gives():
    assert set(FORMATS["hh_rlhf"].kinds) == {"demonstration", "comparison", "prompt"}
    assert FORMATS["alpaca"].kinds == ("demonstration", "prompt")
    assert FORMATS["advbench"].kinds == ("prompt",)
    with pytest.raises(ValueError, match="cannot produce comparison records"):
        FORMATS["alpaca"].to_records({"instruction": "x", "output": "y"}, "comparison")


# ----------------------------------------------------------------------------------- loading


def write_jsonl(path: Path, rows: list) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


ALPACA_ROWS = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(10)]


@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz", "data.json", "data.json.gz"])
def test_load_jsonl_and_gzip_keep_order_and_fill_source_ids(tmp_path, name):
    path = write_jsonl(tmp_path / name, ALPACA_ROWS)
    record_set = load_records_from_path(path, "demonstration")
    assert record_set.format == "alpaca" and record_set.rows_read == 10
    assert [r.messages[-1].content for r in record_set.records] == [str(i) for i in range(10)]
    assert record_set.records[2].source_id == f"{name}:3"  # line 3


def test_load_json_list_locates_records_by_index(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ALPACA_ROWS, indent=2), encoding="utf-8")
    record_set = load_records_from_path(path, "demonstration")
    assert len(record_set.records) == 10 and record_set.records[4].source_id == "data.json[4]"


def test_load_csv_with_a_multiline_field(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('goal,target\n"Line one\nline two",Sure\nSecond,Sure\n', encoding="utf-8")
    record_set = load_records_from_path(path, "prompt")
    assert [p.text for p in record_set.records] == ["Line one\nline two", "Second"]
    assert [p.source_id for p in record_set.records] == ["prompts.csv:2", "prompts.csv:4"]


def test_load_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("goal,target\nDo harm,Sure\n".encode("utf-8-sig"))
    assert load_records_from_path(path, "prompt").records[0].text == "Do harm"


def test_load_parquet_through_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Q", "chosen": "good", "rejected": "bad"}] * 3), path)
    record_set = load_records_from_path(path, "comparison")
    assert record_set.format == "preference" and len(record_set.records) == 3


def test_hub_ids_pass_subset_data_dir_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, subset=None, data_dir=None, split=None):
        calls.append((name, subset, data_dir, split))
        return datasets.Dataset.from_list([HH_ROW, HH_ROW])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(dataset_name="Anthropic/hh-rlhf", dataset_data_dir="helpful-online", dataset_split="test")
    record_set = load_records(cfg, "comparison")
    assert calls == [("Anthropic/hh-rlhf", None, "helpful-online", "test")]
    assert len(record_set.records) == 2 and record_set.records[1].source_id == "Anthropic/hh-rlhf[1]"


def test_demo_resolves_to_the_built_in_file_for_the_kind(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi"}])
    monkeypatch.setattr(data_module, "DEMO_DIR", tmp_path)
    record_set = load_records(DataConfig(dataset_name="demo"), "prompt")
    assert record_set.source == str(tmp_path / "prompts.jsonl") and record_set.records[0].text == "Hi"


def test_eval_split_is_seeded_disjoint_and_sized(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)
    first = load_records(DataConfig(dataset_name=str(path), eval_split_size=0.3), "demonstration", seed=1)
    again = load_records(DataConfig(dataset_name=str(path), eval_split_size=0.3), "demonstration", seed=1)
    other = load_records(DataConfig(dataset_name=str(path), eval_split_size=3), "demonstration", seed=2)
    assert len(first.eval_records) == 3 and len(first.records) == 7
    assert first.eval_records == again.eval_records and set(first.eval_records).isdisjoint(first.records)
    assert len(other.eval_records) == 3 and other.eval_records != first.eval_records


def test_eval_split_keeps_each_oasst_tree_on_one_side(tmp_path):
    tree_text = json.dumps(OASST_TREE)
    trees = [json.loads(tree_text.replace('"message_id": "', f'"message_id": "t{i}-')) for i in range(6)]
    path = write_jsonl(tmp_path / "trees.jsonl", trees)
    record_set = load_records(DataConfig(dataset_name=str(path), eval_split_size=2), "comparison")
    train_trees = {r.source_id.split("-")[0] for r in record_set.records}
    eval_trees = {r.source_id.split("-")[0] for r in record_set.eval_records}
    assert len(record_set.eval_records) == 2 and len(eval_trees) == 1 and train_trees.isdisjoint(eval_trees)


def test_eval_dataset_and_sample_caps(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ALPACA_ROWS)
    held = write_jsonl(tmp_path / "eval.jsonl", ALPACA_ROWS[:4])
    cfg = DataConfig(dataset_name=str(train), eval_dataset_name=str(held), max_samples=5, max_eval_samples=2)
    record_set = load_records(cfg, "demonstration")
    assert len(record_set.records) == 5 and len(record_set.eval_records) == 2
    assert record_set.rows_read == 5  # reading stops once max_samples records are in hand


def test_load_logs_a_summary(tmp_path, caplog):
    path = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS[:2])
    with caplog.at_level(logging.INFO, logger="alignment.data.load"):
        load_records_from_path(path, "demonstration")
    assert "2 demonstration records (format alpaca)" in caplog.text
