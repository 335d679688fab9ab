"""Load typed records from a file, a Hub dataset or the built-in demo data: ``load_records(data_cfg, kind)``.

source (json / jsonl[.gz] / csv / parquet / Hub id / "demo") -> raw rows -> the format's adapter
(named, or detected from the columns) -> Demonstration / Comparison / Prompt records.

Local JSON, JSONL and CSV are read here, line by line, rather than through ``datasets``: its
Arrow reader reports neither the file nor the line of an invalid UTF-8 byte or a cut-off JSON
line, and it forces one schema on all rows (a response that is text in one row and a message
list in the next fails to load). Parquet files, directories and Hub ids go through
``datasets.load_dataset``; their rows are located by 0-based index.

A malformed row raises the first :class:`RecordError` (path, line or index, field, reason) with
``invalid_records="raise"``; with ``"skip"`` it is counted in a :class:`SkipReport` by reason and
the summary is logged. The held-out split is drawn by source row with a seeded shuffle, so the
records of one OpenAssistant tree never straddle train and eval.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.core.config import DataConfig
from alignment.data.demo import DEMO_DIR
from alignment.data.readers import RawRow, read_rows, split_row_range
from data_schemas.errors import RecordError, SkipReport
from data_schemas.formats import FORMATS, KINDS, Format, check_kind, detect_format, get_format
from data_schemas.records import Record

logger = logging.getLogger(__name__)

DEMO_FILES = {"demonstration": "demonstrations.jsonl", "comparison": "comparisons.jsonl", "prompt": "prompts.jsonl"}
POLICIES = ("raise", "skip")
DETECTION_ROWS = 100  # rows whose columns are pooled to detect the format


@dataclass
class RecordSet:
    """What a stage trains or evaluates on, and what was left out."""

    records: list[Record]
    eval_records: list[Record]
    skipped: SkipReport
    format: str
    source: str
    kind: str
    rows_read: int = 0
    eval_skipped: SkipReport | None = None

    def __len__(self) -> int:
        return len(self.records)


# ----------------------------------------------------------------------------------- rows -> records


def _as_row(raw: RawRow, source: str) -> Mapping[str, Any]:
    """A row object; a bare JSON string becomes ``{"text": ...}`` (prompt lists)."""
    if isinstance(raw.value, str):
        return {"text": raw.value}
    if not isinstance(raw.value, Mapping):
        raise RecordError(
            f"expected a JSON object (or a string), got {type(raw.value).__name__}", kind="mistyped_field"
        ).located(path=source, line=raw.line, index=raw.index)
    return raw.value


def _columns(rows: Iterable[RawRow], source: str) -> list[str]:
    seen: dict[str, None] = {}
    for raw in rows:
        if raw.error is None and isinstance(raw.value, (Mapping, str)):
            seen.update(dict.fromkeys(_as_row(raw, source)))
    return list(seen)


def resolve_format(name: str, rows: list[RawRow], source: str) -> Format:
    """The named format, or the one detected from the columns of the first rows."""
    if name != "auto":
        return get_format(name)
    if not rows:
        raise RecordError("the file holds no records (it is empty)", path=source, kind="empty_file")
    if all(raw.error is not None for raw in rows):  # nothing parsed: say why, not "columns [none]"
        first = rows[0].error
        raise RecordError(
            f"no row could be read; the first: {first.reason}", path=source, line=first.line, kind=first.kind
        )
    try:
        return FORMATS[detect_format(_columns(rows, source))]
    except RecordError as e:
        raise e.located(path=source) from None


def _handle(error: RecordError, policy: str, report: SkipReport) -> None:
    if policy == "raise":
        raise error
    report.add(error)


def _with_source_id(record: Record, source: str, raw: RawRow) -> Record:
    if record.source_id is not None:
        return record
    where = f"{source}:{raw.line}" if raw.line is not None else f"{source}[{raw.index}]"
    return dataclasses.replace(record, source_id=where)


def adapt_rows(
    rows: Iterable[RawRow],
    fmt: Format,
    kind: str,
    source: str,
    policy: str,
    report: SkipReport,
    limit: int | None = None,
) -> tuple[list[list[Record]], int]:
    """Records per source row (rows giving none are dropped), and how many rows were read.

    Bad rows raise or are counted in ``report`` by ``policy``; reading stops once ``limit``
    records are collected.
    """
    if fmt.prepare is not None:
        rows = _prepared(rows, fmt.prepare, source, policy, report)
    name = Path(source).name if Path(source).expanduser().exists() else source  # file name, or the Hub id
    groups: list[list[Record]] = []
    count = rows_read = 0
    for raw in rows:
        rows_read += 1
        try:
            if raw.error is not None:
                raise raw.error
            records = fmt.to_records(_as_row(raw, source), kind)
        except RecordError as e:
            _handle(e.located(path=source, line=raw.line, index=raw.index), policy, report)
            continue
        if records:
            groups.append([_with_source_id(r, name, raw) for r in records])
            count += len(records)
        if limit is not None and count >= limit:
            break
    return groups, rows_read


def _prepared(
    rows: Iterable[RawRow],
    prepare: Callable[[list[Mapping[str, Any]]], list[dict[str, Any]]],
    source: str,
    policy: str,
    report: SkipReport,
) -> list[RawRow]:
    """Apply the format's whole-table reshaping (oasst1 flat messages -> trees); trees are located by index."""
    values = []
    for raw in rows:
        if raw.error is not None:
            _handle(raw.error.located(path=source), policy, report)
        else:
            values.append(_as_row(raw, source))
    try:
        prepared = prepare(values)
    except RecordError as e:
        raise e.located(path=source) from None
    return [RawRow(value, index=i) for i, value in enumerate(prepared)]


# ----------------------------------------------------------------------------------- splits


def eval_count(eval_split_size: float, total: int) -> int:
    """Held-out record count: a share of ``total`` when < 1, else a count."""
    if eval_split_size < 0:
        raise ValueError(f"eval_split_size must be >= 0, got {eval_split_size}")
    if eval_split_size == 0 or total == 0:
        return 0
    count = max(1, round(eval_split_size * total)) if eval_split_size < 1 else int(eval_split_size)
    if count >= total:
        raise ValueError(
            f"eval_split_size={eval_split_size} holds out {count} of {total} records, leaving none to train on"
        )
    return count


def split_groups(groups: list[list[Record]], eval_size: int, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, eval): whole source rows, drawn by a seeded shuffle, go to eval until it holds ``eval_size`` records.

    Training records keep their source order (the trainer shuffles them per epoch).
    """
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    taken = 0
    for i in order:
        if taken >= eval_size:
            break
        held.add(i)
        taken += len(groups[i])
    train = [r for i, g in enumerate(groups) if i not in held for r in g]
    held_out = [r for i in sorted(held) for r in groups[i]]
    return train, held_out


# ----------------------------------------------------------------------------------- entry points


def resolve_sources(data_cfg: DataConfig, kind: str) -> list[str]:
    """The sources to read in turn: ``dataset_mixture`` when set, else ``dataset_name`` alone."""
    if data_cfg.dataset_mixture:
        return [_demo_or(source, kind) for source in data_cfg.dataset_mixture]
    return [resolve_source(data_cfg, kind)]


def resolve_source(data_cfg: DataConfig, kind: str) -> str:
    """The file or Hub id to read; ``"demo"`` is the built-in data for ``kind``."""
    if not data_cfg.dataset_name:
        raise ValueError("dataset_name is not set: give a file, a Hub dataset id, or 'demo'")
    return _demo_or(data_cfg.dataset_name, kind)


def _demo_or(source: str, kind: str) -> str:
    """``"demo"`` -> the built-in file for ``kind``; any other source as it is."""
    return str(DEMO_DIR / DEMO_FILES[kind]) if source == "demo" else source


def _selected(rows: Iterable[RawRow], select: dict[str, list[str]], path: str) -> Iterator[RawRow]:
    """The rows whose every ``select`` column holds one of its listed values (``select_rows``); unreadable rows pass
    on, so they are reported as before."""
    wanted = {column: {str(v) for v in values} for column, values in select.items()}
    for raw in rows:
        if raw.error is None and wanted:
            value = raw.value if isinstance(raw.value, Mapping) else {}
            missing = next((column for column in wanted if column not in value), None)
            if missing is not None:
                raise RecordError(
                    f"select_rows names the column {missing!r}, which this row does not have",
                    path=path,
                    line=raw.line,
                    index=raw.index if raw.line is None else None,
                    field=missing,
                    kind="missing_field",
                )
            if not all(str(value[column]) in keep for column, keep in wanted.items()):
                continue
        yield raw


def _load_groups(
    source: str, data_cfg: DataConfig, kind: str, limit: int | None
) -> tuple[list[list[Record]], Format, SkipReport, int]:
    path = split_row_range(source)[0]  # errors name the file and its own line, with or without a row range
    rows = _selected(read_rows(source, data_cfg), data_cfg.select_rows, path)
    head = list(itertools.islice(rows, DETECTION_ROWS))
    fmt = resolve_format(data_cfg.dataset_format, head, path)
    check_kind(fmt, kind)
    report = SkipReport(path=path)
    groups, rows_read = adapt_rows(
        itertools.chain(head, rows), fmt, kind, path, data_cfg.invalid_records, report, limit
    )
    if report.total:
        logger.warning("%s: %s", source, report.summary())
    return groups, fmt, report, rows_read


def _labelled(groups: list[list[Record]], label: str) -> list[list[Record]]:
    """Give ``label`` to the prompts that carry none (``prompt_labels``); a prompt's own label is kept."""
    return [[r if r.label else dataclasses.replace(r, label=label) for r in group] for group in groups]


def load_records(data_cfg: DataConfig, kind: str, *, seed: int = 42) -> RecordSet:
    """Read ``data_cfg.dataset_name`` (or each source of ``dataset_mixture``, joined in order) as ``kind`` records
    ("demonstration", "comparison" or "prompt").

    Held-out records come from ``eval_dataset_name`` or, failing that, ``eval_split_size`` of the
    training source (seeded by ``seed``); ``max_samples`` / ``max_eval_samples`` cut each side.
    Without a split from the same source, reading stops at ``max_samples`` records, so the skip
    report then covers only the rows read.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    if data_cfg.invalid_records not in POLICIES:
        raise ValueError(f"invalid_records must be one of {', '.join(POLICIES)}, got {data_cfg.invalid_records!r}")
    sources = resolve_sources(data_cfg, kind)
    split_here = not data_cfg.eval_dataset_name and data_cfg.eval_split_size > 0
    limit = None if split_here or len(sources) > 1 else data_cfg.max_samples
    source = " + ".join(sources)
    groups, formats, rows_read, report = [], [], 0, SkipReport(path=source)
    for name, one in zip(data_cfg.source_names, sources):
        one_groups, fmt, one_report, one_rows = _load_groups(one, data_cfg, kind, limit)
        if kind == "prompt" and name in data_cfg.prompt_labels:
            one_groups = _labelled(one_groups, data_cfg.prompt_labels[name])
        groups += one_groups
        rows_read += one_rows
        formats.append(fmt.name)
        report.by_reason.update(one_report.by_reason)
        report.examples += one_report.examples[: 5 - len(report.examples)]
        if len(sources) > 1:
            logger.info("%s: %d %s records (format %s)", one, sum(len(g) for g in one_groups), kind, fmt.name)
    format_name = "+".join(dict.fromkeys(formats))
    total = sum(len(g) for g in groups)
    if total == 0:
        why = f" ({report.summary()})" if report.total else ""
        raise RecordError(f"no usable {kind} records{why}", path=source, kind="no_records")
    train, held_out = split_groups(groups, eval_count(data_cfg.eval_split_size, total) if split_here else 0, seed)
    eval_report = None
    if data_cfg.eval_dataset_name:
        eval_cfg = dataclasses.replace(data_cfg, dataset_name=data_cfg.eval_dataset_name)
        eval_groups, _, eval_report, _ = _load_groups(
            data_cfg.eval_dataset_name, eval_cfg, kind, data_cfg.max_eval_samples
        )
        held_out = [r for g in eval_groups for r in g]
    train = train[: data_cfg.max_samples] if data_cfg.max_samples is not None else train
    held_out = held_out[: data_cfg.max_eval_samples] if data_cfg.max_eval_samples is not None else held_out
    logger.info(
        "%s: %d %s records (format %s) from %d rows, %d held out; %s",
        source,
        len(train),
        kind,
        format_name,
        rows_read,
        len(held_out),
        report.summary(),
    )
    return RecordSet(train, held_out, report, format_name, source, kind, rows_read, eval_report)


def load_records_from_path(path: str | Path, kind: str, format: str = "auto", invalid: str = "raise") -> RecordSet:
    """``load_records`` for one file with default settings (tests, evaluation prompt sets)."""
    return load_records(DataConfig(dataset_name=str(path), dataset_format=format, invalid_records=invalid), kind)
