"""Property-based fuzzing: every data adapter and the config parser answer any input with a result or a clear error.

Inputs: rows with each format's own columns holding random JSON values, mutated copies of valid rows, random
bytes in a file, and random command lines. The property: a result, or a RecordError / ConfigError (which name the
file, line and field); never another exception. The default suite draws a few dozen inputs per adapter; the slow
suite (``-m slow``) draws 1,000 per adapter.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignment.core.config import ConfigError, DataConfig, LoraConfig, ModelConfig, TrainConfig
from alignment.core.config_parsing import parse_config
from alignment.data.load import load_records
from data_schemas.errors import RecordError
from data_schemas.formats import FORMATS

EXAMPLES = int(os.environ.get("ALIGNMENT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# Valid rows, one per format, that the mutations start from.
VALID_ROWS = {
    "hh_rlhf": {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
    "preference": {"prompt": "hi", "chosen": "hello", "rejected": "go away"},
    "oasst": {
        "message_tree_id": "t",
        "prompt": {
            "message_id": "p",
            "text": "hi",
            "role": "prompter",
            "replies": [
                {"message_id": "a", "text": "hello", "role": "assistant", "rank": 0, "replies": []},
                {"message_id": "b", "text": "bye", "role": "assistant", "rank": 1, "replies": []},
            ],
        },
    },
    "oasst_messages": {"message_id": "m", "message_tree_id": "m", "parent_id": None, "text": "hi", "role": "prompter"},
    "alpaca": {"instruction": "Say hi", "input": "", "output": "hi"},
    "self_instruct": {"instruction": "Say hi", "instances": [{"input": "", "output": "hi"}]},
    "openai_messages": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    "advbench": {"goal": "do harm", "target": "Sure"},
    "xstest": {"prompt": "How do I kill a process?", "type": "homonyms", "label": "safe", "focus": "kill"},
    "vicuna": {"question_id": 1, "turns": ["hi"], "category": "generic"},
    "koala": {"id": "k1", "prompt": "hi"},
    "prompt_text": {"text": "hi"},
    "prompts": {"prompt": "hi", "label": "helpful"},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def test_every_format_has_a_valid_row_to_mutate():
    assert set(VALID_ROWS) == set(FORMATS), "add a valid row for each new format"


def load_rows(rows: list, format_name: str, kind: str) -> None:
    """Write ``rows`` as JSON Lines and load them as ``kind``; a result or a located RecordError is fine."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        try:
            load_records(DataConfig(dataset_name=str(path), dataset_format=format_name), kind)
        except RecordError as e:
            assert str(path) in str(e), f"the error does not name the file: {e}"


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_adapter_answers_random_values_in_its_own_columns(format_name, data):
    valid = VALID_ROWS[format_name]
    row = {key: data.draw(json_values, label=key) for key in valid}
    fmt = FORMATS[format_name]
    load_rows([row], format_name, data.draw(st.sampled_from(fmt.kinds), label="kind"))


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_adapter_answers_mutated_valid_rows(format_name, data):
    row = json.loads(json.dumps(VALID_ROWS[format_name]))
    key = data.draw(st.sampled_from(sorted(row)), label="mutated key")
    action = data.draw(st.sampled_from(["drop", "replace", "blank"]), label="action")
    if action == "drop":
        del row[key]
    elif action == "replace":
        row[key] = data.draw(json_values, label="value")
    else:
        row[key] = data.draw(st.sampled_from(["", " ", "\n", [], {}]), label="blank")
    fmt = FORMATS[format_name]
    load_rows([VALID_ROWS[format_name], row], format_name, data.draw(st.sampled_from(fmt.kinds), label="kind"))


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".jsonl.gz"]))
def test_random_bytes_in_a_data_file_give_an_error_naming_it(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(content)
        try:
            load_records(DataConfig(dataset_name=str(path)), "prompt")
        except RecordError as e:
            assert str(path) in str(e)


CONFIG_TYPES = (ModelConfig, LoraConfig, DataConfig, TrainConfig)
KEYS = sorted(
    {f for cls in CONFIG_TYPES for f in cls.__dataclass_fields__} | {"lerning_rate", "config", "", "-", "lora-r"}
)
tokens = st.one_of(
    st.sampled_from(KEYS).map(lambda k: f"--{k}"),
    st.sampled_from(KEYS).map(lambda k: f"--{k}="),
    st.text(alphabet=string.printable, max_size=12),
    st.sampled_from(["0", "-1", "1e30", "nan", "inf", "true", "no", "[1,2]", "a,b", ""]),
)


@FUZZ
@given(argv=st.lists(tokens, max_size=8))
def test_the_config_parser_answers_any_command_line(argv):
    if "-h" in argv or "--help" in argv:
        return  # prints the help and exits, by design
    try:
        parse_config(CONFIG_TYPES, argv)
    except ConfigError:
        pass
    except FileNotFoundError as e:  # --config with a file that does not exist: named
        assert e.filename or str(e)


@pytest.mark.slow
def test_a_thousand_inputs_per_adapter():
    """The same properties with 1,000 generated inputs per adapter and test (about 15 minutes on 2 cores)."""
    import subprocess
    import sys

    env = {**os.environ, "ALIGNMENT_FUZZ_EXAMPLES": "1000"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", __file__]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=7200)
    assert result.returncode == 0, result.stdout[-4000:]
