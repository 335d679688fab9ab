"""Plain preference data: ``{"prompt", "chosen", "rejected"}`` or K-ranked ``{"prompt", "responses", "ranks"}``.

The prompt is text (one user turn) or a list of ``{"role", "content"}`` messages; each response is
text or a one-message assistant list (trl's conversational style). A pair becomes a Comparison
with ranks (0, 1); K ranked responses stay one K-way record (rank 0 best, equal ranks are ties),
so the reward model scores the whole group together (InstructGPT, Ouyang et al. 2022, sec. 3.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_schemas.errors import RecordError
from data_schemas.openai_messages import reply_text, require, text_or_messages, validated
from data_schemas.records import Comparison, Demonstration, Message, Prompt, Record


def _ranks(value: Any, count: int) -> tuple[int, ...]:
    if value is None:
        raise RecordError("missing 'ranks'", field="ranks", kind="missing_field")
    if not isinstance(value, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in value):
        raise RecordError("expected a list of integer ranks (0 = best)", field="ranks", kind="mistyped_field")
    if len(value) != count:
        raise RecordError(f"{len(value)} ranks for {count} responses", field="ranks", kind="mistyped_field")
    return tuple(value)


def _comparison(row: Mapping[str, Any]) -> tuple[Comparison, dict[str, str]]:
    """The row's Comparison and how its fields map back to the row's columns."""
    prompt = text_or_messages(row.get("prompt"), "prompt", "user")
    source_id = row.get("id") if isinstance(row.get("id"), str) else None
    if "responses" in row:
        raw = require(row, "responses", list)
        responses = tuple(reply_text(r, f"responses[{i}]") for i, r in enumerate(raw))
        return Comparison(prompt, responses, _ranks(row.get("ranks"), len(responses)), source_id), {}
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise RecordError(f"missing '{name}'", field=name, kind="missing_field")
    chosen, rejected = reply_text(row["chosen"], "chosen"), reply_text(row["rejected"], "rejected")
    names = {"responses[0]": "chosen", "responses[1]": "rejected"}
    return Comparison(prompt, (chosen, rejected), (0, 1), source_id), names


def preference_records(row: Mapping[str, Any], kind: str) -> list[Record]:
    """A Comparison, or the prompt with its best response as a Demonstration, or the prompt alone."""
    if not isinstance(row, Mapping):
        raise RecordError(f"expected an object with 'prompt', got {type(row).__name__}", kind="mistyped_field")
    if kind == "prompt":
        prompt = text_or_messages(row.get("prompt"), "prompt", "user")
        return [validated(Prompt(prompt), {"messages": "prompt"})]
    comparison, names = _comparison(row)
    if kind == "demonstration":
        chat = (*comparison.prompt, Message("assistant", comparison.chosen))
        best = comparison.ranks.index(min(comparison.ranks))
        reply_field = names.get(f"responses[{best}]", f"responses[{best}]")
        return [
            validated(
                Demonstration(chat, comparison.source_id),
                {f"messages[{len(chat) - 1}]": reply_field, "messages": "prompt"},
            )
        ]
    return [validated(comparison, names)]
