"""Every bad-input case the data loader raises on, read through its message: file, line (or index), field, reason.

And ``invalid_records="skip"``: the bad rows are left out and counted by reason.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from alignment.core.config import DataConfig
from alignment.data.load import load_records, load_records_from_path
from data_schemas import RecordError, detect_format

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
HH_GOOD = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


def error_for(path: Path, kind: str = "demonstration", **cfg) -> RecordError:
    with pytest.raises(RecordError) as e:
        load_records(DataConfig(dataset_name=str(path), **cfg), kind)
    return e.value


# ----------------------------------------------------------------------------------- one test per bad input


def test_missing_field_names_file_line_and_field(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", [GOOD, {"instruction": "Say hi.", "input": ""}])
    error = error_for(path)
    assert str(error) == f"{path}:2: field 'output': missing 'output'"
    assert (error.path, error.line, error.field, error.kind) == (str(path), 2, "output", "missing_field")


def test_mistyped_field(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", [GOOD, GOOD, {"instruction": ["Say", "hi"], "output": "Hi"}])
    assert str(error_for(path)) == f"{path}:3: field 'instruction': expected str, got list"


def test_empty_text(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", [{"instruction": "Say hi.", "input": "", "output": "   "}])
    error = error_for(path)
    assert str(error) == f"{path}:1: field 'output': empty text" and error.kind == "empty_text"


def test_chosen_identical_to_rejected(tmp_path):
    same = {"chosen": HH_GOOD["chosen"], "rejected": HH_GOOD["chosen"]}
    path = jsonl(tmp_path / "pairs.jsonl", [HH_GOOD, same])
    error = error_for(path, "comparison")
    assert str(error) == f"{path}:2: field 'rejected': chosen is identical to rejected"
    assert error.kind == "chosen_equals_rejected"


def test_transcript_with_no_assistant_turn(tmp_path):
    path = jsonl(tmp_path / "pairs.jsonl", [{"chosen": "\n\nHuman: Hi", "rejected": HH_GOOD["rejected"]}])
    error = error_for(path, "comparison")
    assert str(error).startswith(f"{path}:1: field 'chosen': no '\\n\\nAssistant:' turn")
    assert error.kind == "no_assistant_turn"


def test_transcripts_that_differ_before_the_last_reply(tmp_path):
    other = {"chosen": HH_GOOD["chosen"], "rejected": "\n\nHuman: Hey\n\nAssistant: Go away."}
    error = error_for(jsonl(tmp_path / "pairs.jsonl", [other]), "comparison")
    assert "field 'rejected': chosen and rejected differ before their last assistant reply, at turn 0" in str(error)
    assert error.kind == "prefix_mismatch"


def test_invalid_utf8_byte_in_jsonl(tmp_path):
    bad = b'{"instruction": "caf\xe9", "input": "", "output": "ok"}'  # latin-1 e-acute
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps(GOOD), bad])
    error = error_for(path)
    assert str(error) == f"{path}:2: invalid UTF-8 byte 0xe9 at column 21 (save the file as UTF-8)"
    assert error.kind == "invalid_utf8"


def test_invalid_utf8_byte_in_a_json_list(tmp_path):
    path = tmp_path / "sft.json"
    path.write_bytes(b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "caf\xe9", "output": "b"}\n]')
    assert str(error_for(path)).startswith(f"{path}:3: invalid UTF-8 byte 0xe9")


def test_truncated_last_json_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:25], encoding="utf-8")
    error = error_for(path)
    assert str(error).startswith(f"{path}:2: invalid JSON: ")
    assert "truncated file?" in str(error) and error.kind == "invalid_json"


def test_truncated_gzip_file(tmp_path):
    path = tmp_path / "sft.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(json.dumps(GOOD) for _ in range(200)) + "\n").encode())[:-30])
    error = error_for(path)
    assert error.kind == "truncated_file" and str(error).startswith(f"{path}:")


def test_json_list_errors_name_the_record_index(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text(json.dumps([GOOD, GOOD, {"instruction": "x", "output": ""}]), encoding="utf-8")
    assert str(error_for(path)) == f"{path} record 2: field 'output': empty text"


def test_invalid_json_list(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text(
        '[\n {"instruction": "a", "output": "b"},\n {"instruction": "a" "output": "b"}\n]', encoding="utf-8"
    )
    assert str(error_for(path)).startswith(f"{path}:3: invalid JSON: Expecting ',' delimiter")


def test_csv_errors_name_the_line_a_record_starts_on(tmp_path):
    path = tmp_path / "xstest.csv"
    path.write_text(
        'id,prompt,type,label,focus,note\n1,"two\nlines",homonyms,safe,kill,\n2,Fine?,homonyms,maybe,kill,\n',
        encoding="utf-8",
    )
    error = error_for(path, "prompt")
    assert str(error) == f"{path}:4: field 'label': unknown label 'maybe' (known: safe, unsafe)"


def test_a_row_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [json.dumps(GOOD), "42"])
    assert str(error_for(path)) == f"{path}:2: expected a JSON object (or a string), got int"


def test_bad_message_in_a_message_list(tmp_path):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}
    path = jsonl(tmp_path / "chat.jsonl", [row])
    assert str(error_for(path)) == f"{path}:1: field 'messages[1].content': missing 'content'"


def test_unknown_role(tmp_path):
    row = {"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    error = error_for(jsonl(tmp_path / "chat.jsonl", [row]))
    assert "field 'messages[0].role': unknown role 'human'" in str(error) and error.kind == "bad_role"


def test_ranks_that_do_not_match_the_responses(tmp_path):
    path = jsonl(tmp_path / "ranked.jsonl", [{"prompt": "Q", "responses": ["a", "b", "c"], "ranks": [0, 1]}])
    assert str(error_for(path, "comparison")) == f"{path}:1: field 'ranks': 2 ranks for 3 responses"


def test_all_tied_responses(tmp_path):
    path = jsonl(tmp_path / "ranked.jsonl", [{"prompt": "Q", "responses": ["a", "b"], "ranks": [0, 0]}])
    error = error_for(path, "comparison")
    assert "field 'ranks': all responses are tied" in str(error) and error.kind == "all_tied"


def test_oasst_error_names_the_node_path(tmp_path):
    reply = {"message_id": "a", "role": "robot", "text": "x", "replies": []}
    tree = {"message_tree_id": "t", "prompt": {"message_id": "p", "role": "prompter", "text": "Q", "replies": [reply]}}
    path = jsonl(tmp_path / "trees.jsonl", [tree])
    error = error_for(path, "comparison")
    assert str(error) == f"{path}:1: field 'prompt.replies[0].role': unknown role 'robot' (known: prompter, assistant)"


def test_oasst_empty_reply_names_its_node(tmp_path):
    replies = [
        {"message_id": "a", "role": "assistant", "text": "fine", "rank": 0, "replies": []},
        {"message_id": "b", "role": "assistant", "text": " ", "rank": 1, "replies": []},
    ]
    tree = {"message_tree_id": "t", "prompt": {"message_id": "p", "role": "prompter", "text": "Q", "replies": replies}}
    error = error_for(jsonl(tmp_path / "trees.jsonl", [tree]), "comparison")
    assert "field 'prompt.replies[1].text': empty text" in str(error)


# ----------------------------------------------------------------------------------- configuration mistakes


def test_detection_failure_lists_columns_and_known_formats(tmp_path):
    path = jsonl(tmp_path / "odd.jsonl", [{"question": "Q", "answer": "A"}])
    error = error_for(path)
    assert str(error).startswith(
        f"{path}: field 'columns': cannot detect the dataset format from columns [answer, question]"
    )
    for name in ("hh_rlhf", "oasst", "alpaca", "preference", "openai_messages", "xstest"):
        assert f"  {name}: {{" in str(error)
    with pytest.raises(ValueError, match=r"columns \[none\]"):
        detect_format([])


def test_kind_the_format_cannot_give(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", [GOOD])
    with pytest.raises(ValueError, match="format 'alpaca' cannot produce comparison records"):
        load_records_from_path(path, "comparison")
    with pytest.raises(ValueError, match="unknown record kind 'pairs'"):
        load_records_from_path(path, "pairs")
    with pytest.raises(ValueError, match="unknown dataset_format 'alpacca'"):
        load_records_from_path(path, "demonstration", format="alpacca")


def test_bad_settings(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", [GOOD, GOOD])
    with pytest.raises(ValueError, match="invalid_records must be one of raise, skip"):
        load_records_from_path(path, "demonstration", invalid="ignore")
    with pytest.raises(ValueError, match="holds out 2 of 2 records"):
        load_records(DataConfig(dataset_name=str(path), eval_split_size=2), "demonstration")
    with pytest.raises(ValueError, match="dataset_name is not set"):
        load_records(DataConfig(), "demonstration")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        load_records_from_path(tmp_path / "nope.jsonl", "demonstration")
    (tmp_path / "data.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_records_from_path(tmp_path / "data.txt", "prompt")


# ----------------------------------------------------------------------------------- skip


def test_skip_counts_invalid_records_by_reason(tmp_path, caplog):
    lines = [
        json.dumps(HH_GOOD),
        json.dumps({"chosen": HH_GOOD["chosen"], "rejected": HH_GOOD["chosen"]}),  # identical
        json.dumps({"chosen": HH_GOOD["chosen"], "rejected": HH_GOOD["chosen"]}),  # identical
        json.dumps({"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Hi"}),  # no assistant turn
        json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": HH_GOOD["rejected"]}),  # empty reply
        json.dumps({"rejected": HH_GOOD["rejected"]}),  # missing chosen
        b'{"chosen": "\xff"}',  # invalid UTF-8
        json.dumps(HH_GOOD)[:30],  # cut-off line
        json.dumps(HH_GOOD),
    ]
    path = write_lines(tmp_path / "pairs.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="alignment.data.load"):
        record_set = load_records_from_path(path, "comparison", invalid="skip")
    assert len(record_set.records) == 2 and record_set.rows_read == 9
    assert dict(record_set.skipped.by_reason) == {
        "chosen_equals_rejected": 2,
        "no_assistant_turn": 1,
        "empty_text": 1,
        "missing_field": 1,
        "invalid_utf8": 1,
        "invalid_json": 1,
    }
    assert record_set.skipped.total == 7
    assert record_set.skipped.examples[0] == f"{path}:2: field 'rejected': chosen is identical to rejected"
    assert "skipped 7 invalid records (chosen_equals_rejected: 2" in caplog.text


def test_a_malformed_line_mid_file_is_not_called_truncated(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", ['{"instruction": "a" "output": "b"}', json.dumps(GOOD)])
    error = error_for(path)
    assert str(error) == f"{path}:1: invalid JSON: Expecting ',' delimiter at column 21"


def test_data_inspect_needs_a_source():
    import alignment.inspect_data as data_stage
    from alignment.core.config import ConfigError

    with pytest.raises(ConfigError, match="expected `inspect SOURCE`"):
        data_stage.main(["inspect", "--model_name_or_path", "x"])
    with pytest.raises(ConfigError, match="expected `inspect SOURCE`"):
        data_stage.main(["show", "file.jsonl"])
