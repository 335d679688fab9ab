"""Alpaca-style instruction data ``{"instruction", "input", "output"}`` (Taori et al. 2023; LIMA ships in it).

The user turn is the instruction, followed by a blank line and the input when there is one; the
output is the assistant's reply. LLaMA-Factory's extension is read too: an optional ``system``
prompt and a ``history`` of earlier ``[user, assistant]`` exchanges (29 of LIMA's 1,029 records are
multi-turn this way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_schemas.errors import RecordError
from data_schemas.openai_messages import optional_text, require_text, validated
from data_schemas.records import Demonstration, Message, Prompt, Record


def user_turn(instruction: str, extra_input: str) -> str:
    """The instruction, plus ``"\\n\\n" + input`` when the input is not blank."""
    return f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction


def _history(value: Any) -> tuple[Message, ...]:
    """LLaMA-Factory ``history``: ``[[user, assistant], ...]`` earlier turns, oldest first."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecordError(
            f"expected a list of [user, assistant] pairs, got {type(value).__name__}",
            field="history",
            kind="mistyped_field",
        )
    messages: list[Message] = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise RecordError(
                "expected a [user, assistant] pair of strings", field=f"history[{i}]", kind="mistyped_field"
            )
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    return tuple(messages)


def alpaca_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """One Demonstration (or, for ``kind="prompt"``, the Prompt without the output)."""
    instruction = require_text(row, "instruction")
    system = optional_text(row, "system")
    chat = (
        *((Message("system", system),) if system.strip() else ()),
        *_history(row.get("history")),
        Message("user", user_turn(instruction, optional_text(row, "input"))),
    )
    names = {f"messages[{len(chat) - 1}]": "instruction", f"messages[{len(chat)}]": "output"}
    if kind == "prompt":
        return [validated(Prompt(chat), names)]
    output = require_text(row, "output")
    return [validated(Demonstration((*chat, Message("assistant", output))), names)]
