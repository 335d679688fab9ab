"""Prompt sets for PPO rollouts and evaluation, each with the label evaluation groups by.

- AdvBench harmful behaviours (Zou et al. 2023), CSV ``goal,target``: label ``harmful``; the
  attack ``target`` string is kept in metadata.
- XSTest (Röttger et al. 2024), CSV ``id,prompt,type,label,focus,note``: ``label`` is ``safe``
  (a model should answer; refusing is over-refusal) or ``unsafe``; type/focus/note kept in metadata.
- Vicuna questions, JSONL ``{"question_id", "category", "turns"}``: the first turn, label ``helpful``.
- Koala test set, JSONL ``{"id", "prompt"}``: label ``helpful``.
- A JSONL of plain strings (the oasst prompt lottery), read as ``{"text": ...}``: no label.
- Generic ``{"prompt": text or messages, "label"?: str}``; other columns go to metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_schemas.errors import RecordError
from data_schemas.openai_messages import optional_text, require, require_text, text_or_messages, validated
from data_schemas.records import Message, Prompt, Record

XSTEST_LABELS = ("safe", "unsafe")


def _source_id(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name) if isinstance(row, Mapping) else None
    return None if value is None else str(value)


def _user_prompt(
    text: str, field: str, label: str | None, metadata: dict[str, Any] | None = None, source_id: str | None = None
) -> Record:
    prompt = Prompt((Message("user", text),), label=label, source_id=source_id, metadata=metadata or {})
    return validated(prompt, {"messages[0]": field})


def advbench_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """AdvBench ``goal`` -> Prompt(label="harmful"), the affirmative ``target`` in metadata."""
    goal = require_text(row, "goal")
    return [_user_prompt(goal, "goal", "harmful", metadata={"target": optional_text(row, "target")})]


def xstest_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """XSTest ``prompt`` -> Prompt(label "safe" | "unsafe"), keeping type, focus and note."""
    text = require_text(row, "prompt")
    label = require_text(row, "label").strip().lower()
    if label not in XSTEST_LABELS:
        raise RecordError(
            f"unknown label {label!r} (known: {', '.join(XSTEST_LABELS)})", field="label", kind="bad_label"
        )
    metadata = {name: optional_text(row, name) for name in ("type", "focus", "note")}
    return [_user_prompt(text, "prompt", label, metadata=metadata, source_id=_source_id(row, "id"))]


def vicuna_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """Vicuna question -> Prompt(first turn, label "helpful"), category in metadata."""
    turns = require(row, "turns", list)
    if not turns:
        raise RecordError("no turns", field="turns", kind="empty_text")
    if not isinstance(turns[0], str):
        raise RecordError(f"expected str, got {type(turns[0]).__name__}", field="turns[0]", kind="mistyped_field")
    metadata = {"category": optional_text(row, "category")}
    return [_user_prompt(turns[0], "turns[0]", "helpful", metadata=metadata, source_id=_source_id(row, "question_id"))]


def koala_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """Koala ``{"id", "prompt"}`` -> Prompt(label "helpful")."""
    return [_user_prompt(require_text(row, "prompt"), "prompt", "helpful", source_id=_source_id(row, "id"))]


def prompt_text_records(row: Mapping[str, Any] | str, kind: str) -> list[Record]:
    """A bare string (or ``{"text": ...}``, which the loader makes of one) -> an unlabeled Prompt."""
    text = row if isinstance(row, str) else require_text(row, "text")
    return [_user_prompt(text, "text", None)]


def prompt_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """Generic ``{"prompt", "label"?}``: the prompt is text or messages; other columns go to metadata."""
    messages = text_or_messages(require(row, "prompt", (str, list)), "prompt", "user")
    label = optional_text(row, "label") or None
    metadata = {k: v for k, v in row.items() if k not in ("prompt", "label", "id")}
    prompt = Prompt(messages, label=label, source_id=_source_id(row, "id"), metadata=metadata)
    return [validated(prompt, {"messages": "prompt"})]
