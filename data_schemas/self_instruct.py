"""Self-Instruct seed tasks ``{"id", "name", "instruction", "instances": [{"input", "output"}], ...}``.

Wang et al. 2023 ("Self-Instruct") wrote 175 seed tasks by hand, each with one or more
input/output instances. Each task becomes one record from its first instance, so a task with
many instances does not outweigh the others; the user turn is built as for Alpaca.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_schemas.alpaca import user_turn
from data_schemas.errors import RecordError
from data_schemas.openai_messages import optional_text, require, require_text, validated
from data_schemas.records import Demonstration, Message, Prompt, Record


def self_instruct_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """One Demonstration from the first instance (or the Prompt without its output)."""
    instruction = require_text(row, "instruction")
    instances = require(row, "instances", list)
    if not instances:
        raise RecordError("no instances", field="instances", kind="empty_text")
    first = instances[0]
    if not isinstance(first, Mapping):
        raise RecordError(
            f"expected an object with 'input' and 'output', got {type(first).__name__}",
            field="instances[0]",
            kind="mistyped_field",
        )
    try:
        extra_input = optional_text(first, "input")
        output = require_text(first, "output") if kind != "prompt" else ""
    except RecordError as e:
        raise RecordError(e.reason, field=f"instances[0].{e.field or ''}".rstrip("."), kind=e.kind) from None
    task_id = row.get("id") if isinstance(row.get("id"), str) else None
    user = (Message("user", user_turn(instruction, extra_input)),)
    names = {"messages[0]": "instruction", "messages[1]": "instances[0].output"}
    if kind == "prompt":
        return [validated(Prompt(user, source_id=task_id), names)]
    return [validated(Demonstration((*user, Message("assistant", output)), source_id=task_id), names)]
