"""The evaluation's data types and prompt labels, shared by every other module of the stage.

A prompt's label decides the group it is measured in: ``helpful``; ``harmful`` (``harmful`` and XSTest's ``unsafe``);
``safe`` (``safe`` and ``benign``). Prompts read from an XSTest file keep that format so that the detector's agreement
with ideal behaviour can be measured on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from data_schemas.records import Message, Prompt

HELPFUL_LABELS = ("helpful",)
HARMFUL_LABELS = ("harmful", "unsafe")
SAFE_LABELS = ("safe", "benign")
LABEL_GROUPS: dict[str, tuple[str, ...]] = {"helpful": HELPFUL_LABELS, "harmful": HARMFUL_LABELS, "safe": SAFE_LABELS}
XSTEST_FORMAT = "xstest"


@dataclass(frozen=True)
class EvalPrompt:
    """A prompt with the label evaluation groups it by and the format of the set it came from."""

    prompt: Prompt
    source: str
    format: str

    @property
    def label(self) -> str | None:
        return self.prompt.label.lower() if self.prompt.label else None


@dataclass
class Generation:
    """One response of one policy to one prompt (a row of ``generations/<policy>.jsonl``)."""

    index: int
    messages: tuple[Message, ...]
    label: str | None
    format: str
    response: str
    num_tokens: int
    has_eos: bool
    response_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["messages"] = [m.to_dict() for m in self.messages]
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Generation:
        messages = tuple(Message(m["role"], m["content"]) for m in row["messages"])
        return cls(**{**row, "messages": messages})


@dataclass
class PolicyOutputs:
    """Everything measured for one policy: its generations, per-RM scores (aligned with them) and per-sample KL."""

    name: str
    path: str
    generations: list[Generation]
    rewards: dict[str, list[float]] = field(default_factory=dict)
    kl: list[float] | None = None
    step: int | None = None
    answers_per_prompt: int = 1  # consecutive generations answering the same prompt (their CIs count the prompt once)


@dataclass(frozen=True)
class PolicySpec:
    name: str
    path: str
    step: int | None = None
