"""Typed records (Demonstration, Comparison, Prompt), their errors, and the source-format adapters.

This package imports nothing from ``alignment``: it is the bottom layer. Reading files and Hub datasets into
these records is :func:`alignment.data.load.load_records`.
"""

from __future__ import annotations

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
    "make_messages",
]
