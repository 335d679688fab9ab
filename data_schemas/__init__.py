"""Typed records (Demonstration, Comparison, Prompt), their errors, and the source-format adapters.

``load_records`` lives in :mod:`alignment.data.load` (it needs the config types) and is re-exported
lazily here, so ``import data_schemas`` stays free of the training stack and of import cycles.
"""

from __future__ import annotations

from typing import Any

from data_schemas.errors import RecordError, SkipReport
from data_schemas.formats import FORMATS, KINDS, Format, detect_format, get_format
from data_schemas.records import Comparison, Demonstration, Message, Prompt, Record, make_messages

__all__ = [
    "FORMATS",
    "KINDS",
    "Comparison",
    "Demonstration",
    "Format",
    "Message",
    "Prompt",
    "Record",
    "RecordError",
    "SkipReport",
    "detect_format",
    "get_format",
    "load_records",
    "make_messages",
]


def __getattr__(name: str) -> Any:
    if name == "load_records":
        from alignment.data.load import load_records

        return load_records
    raise AttributeError(f"module 'data_schemas' has no attribute {name!r}")
