"""OpenAI chat format ``{"messages": [{"role", "content"}, ...]}``, and the field readers every adapter shares.

A chat ending with the assistant's reply is a :class:`Demonstration`; a chat ending with a user
turn is a :class:`Prompt`. Asked for prompts, a finished chat gives the turns before its last
assistant reply, so the same SFT file can feed PPO's prompt set.

The field readers (:func:`require`, :func:`require_text`, :func:`text_or_messages`) live here
because this is the canonical message shape the other formats are converted to; they turn a
missing or mistyped column into a :class:`RecordError` that names the field, instead of a
``KeyError`` deep in a stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_schemas.errors import RecordError
from data_schemas.records import Demonstration, Message, Prompt, Record, make_messages


def require(row: Mapping[str, Any], name: str, expected: type | tuple[type, ...]) -> Any:
    """``row[name]``, which must be present, not None and of the ``expected`` type."""
    if not isinstance(row, Mapping):
        raise RecordError(f"expected an object with fields, got {type(row).__name__}", kind="mistyped_field")
    value = row.get(name)
    if value is None:
        raise RecordError(f"missing '{name}'", field=name, kind="missing_field")
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise RecordError(f"expected {names}, got {type(value).__name__}", field=name, kind="mistyped_field")
    return value


def require_text(row: Mapping[str, Any], name: str) -> str:
    """A required string field (emptiness is left to ``validate()`` so every format reports it alike)."""
    return require(row, name, str)


def optional_text(row: Mapping[str, Any], name: str) -> str:
    """An optional string field; absent or None reads as ``""``."""
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"expected str, got {type(value).__name__}", field=name, kind="mistyped_field")
    return value


def text_or_messages(value: Any, name: str, role: str) -> tuple[Message, ...]:
    """A field that is either plain text (one ``role`` turn) or a list of ``{"role", "content"}`` messages."""
    if value is None:
        raise RecordError(f"missing '{name}'", field=name, kind="missing_field")
    if isinstance(value, str):
        return (Message(role, value),)
    return make_messages(value, name)


def reply_text(value: Any, name: str) -> str:
    """A response given as text or as messages whose last turn is the assistant's (trl's conversational style)."""
    if isinstance(value, str):
        return value
    messages = text_or_messages(value, name, "assistant")
    if not messages or messages[-1].role != "assistant":
        raise RecordError("expected the assistant's reply as text or messages", field=name, kind="no_assistant_turn")
    if len(messages) > 1:
        raise RecordError(
            f"expected one assistant reply, got {len(messages)} messages (put earlier turns in the prompt)",
            field=name,
            kind="mistyped_field",
        )
    return messages[0].content


def rename_fields(error: RecordError, names: Mapping[str, str]) -> RecordError:
    """Rename the field ``validate()`` reported (``responses[1]`` -> ``rejected``) to the source's own column.

    ``names`` maps a field prefix (``prompt``, ``messages[2]``) to the column it came from; a
    trailing ``.content`` is dropped when the column holds plain text.
    """
    field = error.field or ""
    for internal, external in names.items():
        rest = field[len(internal) :] if field.startswith(internal) else None
        if rest is None or rest[:1] not in ("", "[", "."):
            continue
        field = external if rest == ".content" else external + rest
        break
    return RecordError(error.reason, field=field or None, kind=error.kind)


def validated(record: Record, field_names: Mapping[str, str] | None = None) -> Record:
    """``record.validate()``, with the reported field renamed to the source's column where given."""
    try:
        return record.validate()
    except RecordError as e:
        if not field_names:
            raise
        raise rename_fields(e, field_names) from None


def prompt_before_last_reply(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """The turns before the last assistant reply (the whole chat when it ends with the user)."""
    if messages and messages[-1].role == "assistant":
        return messages[:-1]
    return messages


def messages_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """``{"messages": [...]}`` -> a Demonstration, or a Prompt when the last turn is the user's (or asked for)."""
    messages = make_messages(require(row, "messages", list), "messages")
    if kind == "prompt" or (messages and messages[-1].role == "user"):
        if kind == "demonstration":
            raise RecordError(
                "the last message is the user's: there is no assistant reply to learn from",
                field="messages",
                kind="no_assistant_turn",
            )
        return [Prompt(prompt_before_last_reply(messages)).validate()]
    return [Demonstration(messages).validate()]
