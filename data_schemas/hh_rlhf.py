"""Anthropic HH-RLHF ``{"chosen", "rejected"}``: two full transcripts that differ only in the last reply.

Each transcript is ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (Bai et al. 2022, "Training a Helpful and
Harmless Assistant with RLHF"). The prompt is everything before the LAST ``"\\n\\nAssistant:"``; the
two final replies are chosen and rejected. The official files hold pairs whose histories differ
(a stray ``"Human:"`` without the blank line before it), so the shared prefix is checked rather
than assumed. trl's conversational "implicit prompt" variant, where chosen and rejected are
message lists, is read the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from data_schemas.errors import RecordError
from data_schemas.openai_messages import validated
from data_schemas.records import Comparison, Demonstration, Message, Prompt, Record, make_messages

SPEAKERS = {"Human": "user", "Assistant": "assistant"}
_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_transcript(text: str, field: str) -> tuple[Message, ...]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> (user a, assistant b); turn text is stripped."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise RecordError(
            "text before the first '\\n\\nHuman:' turn (expected an HH-RLHF transcript)",
            field=field,
            kind="bad_transcript",
        )
    speakers, contents = parts[1::2], parts[2::2]
    return tuple(Message(SPEAKERS[s], c.strip()) for s, c in zip(speakers, contents))


def _conversation(value: Any, field: str) -> tuple[Message, ...]:
    if value is None:
        raise RecordError(f"missing '{field}'", field=field, kind="missing_field")
    if isinstance(value, str):
        return parse_transcript(value, field)
    if isinstance(value, list):
        return make_messages(value, field)
    raise RecordError(
        f"expected a transcript (str) or messages, got {type(value).__name__}", field=field, kind="mistyped_field"
    )


def split_last_reply(messages: tuple[Message, ...], field: str) -> tuple[tuple[Message, ...], str]:
    """(history, final assistant reply); the transcript must end with an assistant turn."""
    if not any(m.role == "assistant" for m in messages):
        raise RecordError("no '\\n\\nAssistant:' turn in the transcript", field=field, kind="no_assistant_turn")
    if messages[-1].role != "assistant":
        raise RecordError(
            "the transcript ends with a Human turn, not the assistant's reply", field=field, kind="no_assistant_turn"
        )
    return messages[:-1], messages[-1].content


def hh_rlhf_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """One Comparison (chosen rank 0, rejected rank 1), or the chosen chat as a Demonstration / its history as a Prompt."""
    if not isinstance(row, Mapping):
        raise RecordError(
            f"expected an object with 'chosen' and 'rejected', got {type(row).__name__}", kind="mistyped_field"
        )
    chosen = _conversation(row.get("chosen"), "chosen")
    if kind == "demonstration":
        split_last_reply(chosen, "chosen")
        return [validated(Demonstration(chosen), {"messages": "chosen"})]
    if kind == "prompt":
        history, _ = split_last_reply(chosen, "chosen")
        return [validated(Prompt(history), {"messages": "chosen"})]
    rejected = _conversation(row.get("rejected"), "rejected")
    chosen_history, chosen_reply = split_last_reply(chosen, "chosen")
    rejected_history, rejected_reply = split_last_reply(rejected, "rejected")
    if chosen_history != rejected_history:
        turn = next((i for i, (a, b) in enumerate(zip(chosen_history, rejected_history)) if a != b), None)
        where = (
            f"turn {turn}" if turn is not None else f"length ({len(chosen_history)} vs {len(rejected_history)} turns)"
        )
        raise RecordError(
            f"chosen and rejected differ before their last assistant reply, at {where}",
            field="rejected",
            kind="prefix_mismatch",
        )
    comparison = Comparison(chosen_history, (chosen_reply, rejected_reply), (0, 1))
    return [validated(comparison, {"prompt": "chosen", "responses[0]": "chosen", "responses[1]": "rejected"})]
