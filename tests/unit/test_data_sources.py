"""Row ranges (``file.jsonl[10:20]``) and mixtures of sources (``dataset_mixture``)."""

from __future__ import annotations

import json

import pytest

from alignment.core.config import DataConfig
from alignment.data.load import load_records
from alignment.data.readers import read_rows, split_row_range
from data_schemas.errors import RecordError


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def pair(i: int) -> dict:
    return {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}


def test_row_range_parses_like_a_python_slice():
    assert split_row_range("a.jsonl[10:20]") == ("a.jsonl", 10, 20)
    assert split_row_range("a.jsonl[:5]") == ("a.jsonl", 0, 5)
    assert split_row_range("a.jsonl[7:]") == ("a.jsonl", 7, None)
    assert split_row_range("dir/a.jsonl") == ("dir/a.jsonl", 0, None)
    with pytest.raises(ValueError, match=r"the row range \[5:5\] is empty"):
        split_row_range("a.jsonl[5:5]")


def test_two_ranges_of_one_file_share_no_row_and_keep_the_file_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(10)])
    first = [r.value["prompt"] for r in read_rows(f"{path}[0:4]")]
    second = list(read_rows(f"{path}[4:]"))
    assert first == [f"question {i}" for i in range(4)]
    assert [r.value["prompt"] for r in second] == [f"question {i}" for i in range(4, 10)]
    assert second[0].line == 5  # errors still name the line in the whole file


def test_an_error_inside_a_range_names_the_line_in_the_whole_file(tmp_path):
    rows = [pair(i) for i in range(6)]
    rows[4] = {"prompt": "q", "chosen": "", "rejected": "x"}
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(RecordError, match=r"pairs.jsonl:5: field 'chosen'"):
        load_records(DataConfig(dataset_name=f"{path}[3:6]"), "comparison")


def test_a_mixture_joins_sources_of_different_formats_in_order(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(6)])
    hh = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": f"\n\nHuman: h{i}\n\nAssistant: yes", "rejected": f"\n\nHuman: h{i}\n\nAssistant: no"}
            for i in range(3)
        ],
    )
    data = DataConfig(dataset_mixture=[f"{pairs}[0:2]", hh])
    records = load_records(data, "comparison")
    assert [r.prompt[-1].content for r in records.records] == ["question 0", "question 1", "h0", "h1", "h2"]
    assert records.format == "preference+hh_rlhf"
    # Held-out records are drawn from the joined sources.
    split = load_records(DataConfig(dataset_mixture=[f"{pairs}[0:2]", hh], eval_split_size=2), "comparison")
    assert len(split.records) == 3 and len(split.eval_records) == 2


def test_a_mixture_may_name_the_built_in_demo_data(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(2)])
    demo_only = load_records(DataConfig(dataset_name="demo"), "comparison")
    mixed = load_records(DataConfig(dataset_mixture=[pairs, "demo"]), "comparison")
    assert len(mixed.records) == 2 + len(demo_only.records)
    assert [r.prompt for r in mixed.records[2:]] == [r.prompt for r in demo_only.records]


def test_prompt_labels_label_the_unlabelled_prompts_of_one_source(tmp_path):
    plain = write_jsonl(tmp_path / "red_team.jsonl", [f"request {i}" for i in range(3)])
    labelled = write_jsonl(tmp_path / "labelled.jsonl", [{"prompt": "a safe one", "label": "safe"}])
    data = DataConfig(dataset_mixture=[f"{plain}[0:2]", labelled], prompt_labels={f"{plain}[0:2]": "harmful"})
    records = load_records(data, "prompt").records
    assert [(r.text, r.label) for r in records] == [
        ("request 0", "harmful"),
        ("request 1", "harmful"),
        ("a safe one", "safe"),
    ]
    # A label for a source the stage does not read is a typo: named before anything loads.
    with pytest.raises(ValueError, match=r"prompt_labels: 'other.jsonl' is not a source this stage reads"):
        DataConfig(dataset_mixture=[plain], prompt_labels={"other.jsonl": "harmful"})
    # With a mixture, dataset_name is not read: a label for it would silently do nothing.
    with pytest.raises(ValueError, match=r"prompt_labels: 'named.jsonl' is not a source this stage reads"):
        DataConfig(dataset_name="named.jsonl", dataset_mixture=[plain], prompt_labels={"named.jsonl": "harmful"})


def test_select_rows_keeps_the_rows_of_chosen_categories_and_names_a_missing_column(tmp_path):
    rows = [{**pair(i), "category": "harmless" if i % 3 == 0 else "helpful"} for i in range(6)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    kept = load_records(DataConfig(dataset_name=path, select_rows={"category": ["harmless"]}), "comparison")
    assert [r.prompt[-1].content for r in kept.records] == ["question 0", "question 3"]
    unlabelled = write_jsonl(tmp_path / "plain.jsonl", [pair(0)])
    with pytest.raises(RecordError, match=r"plain.jsonl:1: field 'category': select_rows names the column"):
        load_records(DataConfig(dataset_name=unlabelled, select_rows={"category": ["harmless"]}), "comparison")
    with pytest.raises(ValueError, match="select_rows: 'category' needs a list"):
        DataConfig(dataset_name=path, select_rows={"category": "harmless"})
