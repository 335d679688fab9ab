"""The format registry: name -> adapter, the record kinds it can produce, and the columns that identify it.

``detect_format(columns)`` picks the format whose identifying columns are all present, preferring
the most specific (most columns), so ``{"prompt", "chosen", "rejected"}`` is ``preference`` and not
``hh_rlhf``. When nothing matches, the error lists the columns seen and every known format with
its columns, so a user can rename a column or pass ``--dataset_format``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from data_schemas.alpaca import alpaca_records
from data_schemas.errors import RecordError
from data_schemas.hh_rlhf import hh_rlhf_records
from data_schemas.oasst import build_trees, oasst_tree_records
from data_schemas.openai_messages import messages_records
from data_schemas.preference import preference_records
from data_schemas.prompt_lists import (
    advbench_records,
    koala_records,
    prompt_records,
    prompt_text_records,
    vicuna_records,
    xstest_records,
)
from data_schemas.records import Record
from data_schemas.self_instruct import self_instruct_records

KINDS = ("demonstration", "comparison", "prompt")

Adapter = Callable[[Mapping[str, Any], str], list[Record]]


@dataclass(frozen=True)
class Format:
    """One source format.

    ``signatures``: column sets that identify it (any one suffices); with ``exact`` the columns
    must equal a signature (Koala's ``{"id", "prompt"}`` would otherwise claim every prompt file
    with an id). ``prepare`` reshapes all rows before the per-row adapter (oasst1's flat export
    -> trees).
    """

    name: str
    adapter: Adapter
    kinds: tuple[str, ...]
    signatures: tuple[frozenset[str], ...]
    description: str
    exact: bool = False
    prepare: Callable[[list[Mapping[str, Any]]], list[dict[str, Any]]] | None = field(default=None, compare=False)

    def to_records(self, row: Mapping[str, Any], kind: str) -> list[Record]:
        """Records of ``kind`` from one raw row; RecordError (without location) on a bad row."""
        check_kind(self, kind)
        return self.adapter(row, kind)

    def matches(self, columns: set[str]) -> int:
        """The size of the largest signature the columns satisfy (0: no match)."""
        hits = [len(s) for s in self.signatures if (columns == s if self.exact else s <= columns)]
        return max(hits, default=0)


def _sig(*sets: str) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(s.split(",")) for s in sets)


_PROMPT = ("prompt",)

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "hh_rlhf",
            hh_rlhf_records,
            KINDS,
            _sig("chosen,rejected"),
            "HH-RLHF transcripts (or message lists) sharing a prefix",
        ),
        Format(
            "preference",
            preference_records,
            KINDS,
            _sig("prompt,chosen,rejected", "prompt,responses,ranks"),
            "prompt + chosen/rejected, or K ranked responses",
        ),
        Format(
            "oasst",
            oasst_tree_records,
            KINDS,
            _sig("message_tree_id,prompt"),
            "OpenAssistant message trees, one per row",
        ),
        Format(
            "oasst_messages",
            oasst_tree_records,
            KINDS,
            _sig("message_id,parent_id,message_tree_id,role,text"),
            "OpenAssistant flat export (one message per row), nested into trees",
            prepare=build_trees,
        ),
        Format(
            "alpaca",
            alpaca_records,
            ("demonstration", "prompt"),
            _sig("instruction,output"),
            "instruction/input/output (LIMA, Alpaca)",
        ),
        Format(
            "self_instruct",
            self_instruct_records,
            ("demonstration", "prompt"),
            _sig("instruction,instances"),
            "Self-Instruct seed tasks",
        ),
        Format(
            "openai_messages", messages_records, ("demonstration", "prompt"), _sig("messages"), "OpenAI chat messages"
        ),
        Format(
            "advbench", advbench_records, _PROMPT, _sig("goal,target"), "AdvBench harmful behaviours (label harmful)"
        ),
        Format("xstest", xstest_records, _PROMPT, _sig("prompt,type,label,focus"), "XSTest safe/unsafe prompts"),
        Format("vicuna", vicuna_records, _PROMPT, _sig("question_id,turns"), "Vicuna questions (label helpful)"),
        Format("koala", koala_records, _PROMPT, _sig("id,prompt"), "Koala test set (label helpful)", exact=True),
        Format("prompt_text", prompt_text_records, _PROMPT, _sig("text"), "plain strings, one prompt each", exact=True),
        Format("prompts", prompt_records, _PROMPT, _sig("prompt"), "generic prompt list with optional label"),
    )
}


def get_format(name: str) -> Format:
    """The registered format called ``name``; ValueError listing the known ones otherwise."""
    if name not in FORMATS:
        raise ValueError(f"unknown dataset_format {name!r}; known formats: {', '.join(FORMATS)} (or 'auto')")
    return FORMATS[name]


def check_kind(fmt: Format, kind: str) -> None:
    """ValueError when ``fmt`` cannot produce ``kind`` records (a configuration mistake, not a bad record)."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    if kind not in fmt.kinds:
        raise ValueError(f"format {fmt.name!r} cannot produce {kind} records (it gives: {', '.join(fmt.kinds)})")


def describe_formats() -> str:
    """One line per known format: name, identifying columns, description."""
    lines = []
    for f in FORMATS.values():
        columns = " | ".join("{" + ", ".join(sorted(s)) + "}" for s in f.signatures)
        lines.append(f"  {f.name}: {columns}{' (exactly)' if f.exact else ''} - {f.description}")
    return "\n".join(lines)


def detect_format(columns: Sequence[str]) -> str:
    """The most specific format whose identifying columns are all in ``columns``.

    Raises RecordError (a ValueError) listing the columns seen and the formats known.
    """
    seen = set(columns)
    scores = {name: f.matches(seen) for name, f in FORMATS.items()}
    best = max(scores.values(), default=0)
    if best == 0:
        raise RecordError(
            f"cannot detect the dataset format from columns [{', '.join(sorted(seen)) or 'none'}]; "
            f"pass dataset_format explicitly or rename the columns. Known formats:\n{describe_formats()}",
            field="columns",
            kind="unknown_format",
        )
    return next(name for name, score in scores.items() if score == best)
