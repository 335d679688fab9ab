"""Typed records every stage consumes, whatever file format they came from.

- ``Demonstration``: a chat; the assistant turns are the SFT targets.
- ``Comparison``: prompt messages and K >= 2 responses with ranks (0 = best; equal ranks are
  ties). Chosen/rejected is K = 2 with ranks (0, 1). K ranked responses to one prompt stay one
  record so the reward model sees the whole group in one forward (InstructGPT, Ouyang et al.
  2022, sec. 3.5).
- ``Prompt``: messages to be answered, with an optional label (``helpful``, ``harmful``,
  ``benign`` / ``safe``, ``unsafe``) used by evaluation.

``validate()`` raises :class:`RecordError` naming the field; adapters call it so every format
gets the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_schemas.errors import RecordError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def make_messages(raw: Any, field_name: str) -> tuple[Message, ...]:
    """Turn a list of ``{"role", "content"}`` dicts (or Messages) into Messages, checking types."""
    if not isinstance(raw, (list, tuple)):
        raise RecordError(
            f"expected a list of messages, got {type(raw).__name__}", field=field_name, kind="mistyped_field"
        )
    messages = []
    for i, item in enumerate(raw):
        if isinstance(item, Message):
            messages.append(item)
            continue
        if not isinstance(item, dict):
            raise RecordError(
                f"message {i} is {type(item).__name__}, expected an object with 'role' and 'content'",
                field=f"{field_name}[{i}]",
                kind="mistyped_field",
            )
        role, content = item.get("role"), item.get("content")
        if role is None or content is None:
            missing = "role" if role is None else "content"
            raise RecordError(f"missing '{missing}'", field=f"{field_name}[{i}].{missing}", kind="missing_field")
        if not isinstance(content, str):
            raise RecordError(
                f"expected text, got {type(content).__name__}",
                field=f"{field_name}[{i}].content",
                kind="mistyped_field",
            )
        messages.append(Message(str(role), content))
    return tuple(messages)


def _check_messages(messages: tuple[Message, ...], field_name: str) -> None:
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise RecordError(
                f"unknown role {m.role!r} (known: {', '.join(ROLES)})", field=f"{field_name}[{i}].role", kind="bad_role"
            )
        if not m.content.strip():
            raise RecordError("empty text", field=f"{field_name}[{i}].content", kind="empty_text")


@dataclass(frozen=True)
class Demonstration:
    messages: tuple[Message, ...]
    source_id: str | None = None

    def validate(self) -> Demonstration:
        if not self.messages:
            raise RecordError("no messages", field="messages", kind="empty_text")
        _check_messages(self.messages, "messages")
        if not any(m.role == "assistant" for m in self.messages):
            raise RecordError("no assistant turn to learn from", field="messages", kind="no_assistant_turn")
        if self.messages[-1].role != "assistant":
            raise RecordError(
                "the last message must be the assistant's reply", field="messages", kind="no_assistant_turn"
            )
        return self


@dataclass(frozen=True)
class Comparison:
    prompt: tuple[Message, ...]
    responses: tuple[str, ...]
    ranks: tuple[int, ...] = ()
    source_id: str | None = None

    def __post_init__(self) -> None:
        if not self.ranks:
            object.__setattr__(self, "ranks", tuple(range(len(self.responses))))

    @property
    def chosen(self) -> str:
        return self.responses[self.ranks.index(min(self.ranks))]

    @property
    def rejected(self) -> str:
        return self.responses[self.ranks.index(max(self.ranks))]

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) index pairs: every pair with strictly different ranks."""
        k = len(self.responses)
        return [(i, j) for i in range(k) for j in range(k) if self.ranks[i] < self.ranks[j]]

    def validate(self) -> Comparison:
        if not self.prompt:
            raise RecordError("no prompt messages", field="prompt", kind="empty_text")
        _check_messages(self.prompt, "prompt")
        if self.prompt[-1].role != "user":
            raise RecordError("the prompt must end with a user turn", field="prompt", kind="bad_role")
        if len(self.responses) < 2:
            raise RecordError(
                f"need at least 2 responses, got {len(self.responses)}", field="responses", kind="too_few_responses"
            )
        if len(self.ranks) != len(self.responses):
            raise RecordError("ranks and responses differ in length", field="ranks", kind="mistyped_field")
        for i, r in enumerate(self.responses):
            if not isinstance(r, str):
                raise RecordError(
                    f"expected text, got {type(r).__name__}", field=f"responses[{i}]", kind="mistyped_field"
                )
            if not r.strip():
                raise RecordError("empty text", field=f"responses[{i}]", kind="empty_text")
        if not self.pairs():
            raise RecordError("all responses are tied: nothing to learn", field="ranks", kind="all_tied")
        texts = [r.strip() for r in self.responses]
        for i, j in self.pairs():
            if texts[i] == texts[j]:
                raise RecordError("chosen is identical to rejected", field="rejected", kind="chosen_equals_rejected")
        return self


@dataclass(frozen=True)
class Prompt:
    messages: tuple[Message, ...]
    label: str | None = None
    source_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def validate(self) -> Prompt:
        if not self.messages:
            raise RecordError("no messages", field="messages", kind="empty_text")
        _check_messages(self.messages, "messages")
        if self.messages[-1].role != "user":
            raise RecordError("a prompt must end with a user turn", field="messages", kind="bad_role")
        return self

    @property
    def text(self) -> str:
        return self.messages[-1].content


Record = Demonstration | Comparison | Prompt
