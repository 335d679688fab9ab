"""Errors for bad input records, and the report of records skipped instead of raised.

Every error names the file, the record's line (1-based, for line-oriented files) or index
(0-based, for JSON lists, Parquet and Hub datasets), the field and the reason, so a user can
open the file and fix the record without reading a traceback.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class RecordError(ValueError):
    """A malformed input record: ``path:line: field 'x': reason``."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        line: int | None = None,
        index: int | None = None,
        field: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        self.index = index
        self.field = field
        # A short machine-readable category used to count skipped records ("empty_text", ...).
        self.kind = kind or reason.split(":")[0].strip().replace(" ", "_")[:40]
        super().__init__(self._message())

    def located(self, *, path: str | None = None, line: int | None = None, index: int | None = None) -> RecordError:
        """Return a copy that also carries where the record came from (adapters don't know)."""
        return RecordError(
            self.reason,
            path=self.path or path,
            line=self.line if self.line is not None else line,
            index=self.index if self.index is not None else index,
            field=self.field,
            kind=self.kind,
        )

    def _message(self) -> str:
        where = self.path or "<records>"
        if self.line is not None:
            where += f":{self.line}"
        elif self.index is not None:
            where += f" record {self.index}"
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.reason}"


@dataclass
class SkipReport:
    """Counts of records skipped (with ``invalid_records='skip'``), by reason kind."""

    path: str | None = None
    by_reason: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, error: RecordError) -> None:
        self.by_reason[error.kind] += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def summary(self) -> str:
        if not self.total:
            return "no invalid records"
        parts = ", ".join(f"{k}: {v}" for k, v in self.by_reason.most_common())
        return f"skipped {self.total} invalid records ({parts})"
