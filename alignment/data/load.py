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

import csv
import dataclasses
import gzip
import io
import itertools
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alignment.core.config import DataConfig
from alignment.data.demo import DEMO_DIR
from data_schemas.errors import RecordError, SkipReport
from data_schemas.formats import FORMATS, KINDS, Format, check_kind, detect_format, get_format
from data_schemas.records import Record

logger = logging.getLogger(__name__)

DEMO_FILES = {"demonstration": "demonstrations.jsonl", "comparison": "comparisons.jsonl", "prompt": "prompts.jsonl"}
LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
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


@dataclass
class RawRow:
    """One source row and where it came from (``line`` 1-based for line files, else ``index`` 0-based)."""

    value: Any
    line: int | None = None
    index: int | None = None
    error: RecordError | None = None


# ----------------------------------------------------------------------------------- readers


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _inner_suffix(path: Path) -> str:
    """``data.jsonl.gz`` -> ``.jsonl``."""
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _decode(raw: bytes, path: Path, line: int) -> str:
    """UTF-8 text of one line, or a RecordError naming the line and the bad byte."""
    try:
        return raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        return _raise_utf8(e, raw, path, line)


def _raise_utf8(e: UnicodeDecodeError, raw: bytes, path: Path, first_line: int) -> Any:
    line = first_line + raw[: e.start].count(b"\n")
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    raise RecordError(
        f"invalid UTF-8 byte 0x{raw[e.start]:02x} at column {column} (save the file as UTF-8)",
        path=str(path),
        line=line,
        kind="invalid_utf8",
    ) from None


def _parse_json_line(text: str, path: Path, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        cut = e.pos >= len(text.rstrip()) - 1
        hint = "; the line ends before the JSON value does (truncated file?)" if cut else ""
        raise RecordError(
            f"invalid JSON: {e.msg} at column {e.colno}{hint}", path=str(path), line=line, kind="invalid_json"
        ) from None


def _read_gzip_lines(handle: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    line = 0
    try:
        for line, raw in enumerate(handle, start=1):
            yield line, raw
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise RecordError(
            f"cannot read the compressed file ({e})", path=str(path), line=line + 1, kind="truncated_file"
        ) from None


def read_jsonl(path: Path) -> Iterator[RawRow]:
    """One RawRow per non-blank line; a line that is not UTF-8 or not JSON becomes a RawRow carrying its error."""
    with _open_binary(path) as handle:
        for line, raw in _read_gzip_lines(handle, path):
            text = None
            try:
                text = _decode(raw, path, line)
                if not text.strip():
                    continue
                yield RawRow(_parse_json_line(text, path, line), line=line)
            except RecordError as e:
                if line == 1 and text is not None and text.lstrip().startswith("["):
                    e = RecordError(
                        f"{e.reason}; the file looks like one JSON array, but JSON Lines need one object per line: "
                        "a file holding one JSON array should be named .json",
                        path=str(path),
                        line=line,
                        kind=e.kind,
                    )
                yield RawRow(None, line=line, error=e)


def _read_text(path: Path) -> str:
    with _open_binary(path) as handle:
        try:
            raw = handle.read()
        except (EOFError, gzip.BadGzipFile, OSError) as e:
            raise RecordError(f"cannot read the compressed file ({e})", path=str(path), kind="truncated_file") from None
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark (Excel's CSVs) is not part of the first column's name
    except UnicodeDecodeError as e:
        return _raise_utf8(e, raw, path, 1)


def read_json(path: Path) -> Iterator[RawRow]:
    """A ``.json`` file holding a list of rows (located by index), or JSON Lines in disguise."""
    if _first_char(path) != "[":
        yield from read_jsonl(path)
        return
    text = _read_text(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(
            f"invalid JSON: {e.msg} at column {e.colno}", path=str(path), line=e.lineno, kind="invalid_json"
        ) from None
    for index, value in enumerate(rows):
        yield RawRow(value, index=index)


def _first_char(path: Path) -> str:
    with _open_binary(path) as handle:
        return handle.read(4096).decode("utf-8", errors="ignore").lstrip()[:1]


def read_csv(path: Path) -> Iterator[RawRow]:
    """One RawRow per CSV record (header first), located by the line the record starts on."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    _ = reader.fieldnames  # reads the header
    end_of_previous = reader.line_num
    for row in reader:
        start = end_of_previous + 1
        end_of_previous = reader.line_num
        yield RawRow(dict(row), line=start)


def read_with_datasets(name: str, data_cfg: DataConfig) -> Iterator[RawRow]:
    """Rows of a Parquet file, a dataset directory or a Hub dataset, through ``datasets`` (located by index)."""
    from datasets import load_dataset

    if name.endswith(".parquet"):
        dataset = load_dataset("parquet", data_files=name, split="train")
    else:
        dataset = load_dataset(
            name, data_cfg.dataset_subset, data_dir=data_cfg.dataset_data_dir, split=data_cfg.dataset_split
        )
    for index, row in enumerate(dataset):
        yield RawRow(row, index=index)


def read_rows(source: str, data_cfg: DataConfig | None = None) -> Iterator[RawRow]:
    """Raw rows of a local file (by suffix, ``.gz`` allowed), a directory or a Hub dataset id."""
    data_cfg = data_cfg or DataConfig(dataset_name=source)
    path = Path(source).expanduser()
    suffix = _inner_suffix(path)
    if path.is_file():
        readers = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv}
        if suffix in readers:
            return readers[suffix](path)
        if suffix == ".parquet" and path.suffix != ".gz":
            return read_with_datasets(str(path), data_cfg)
        raise ValueError(
            f"{path}: unsupported file type {''.join(path.suffixes)!r} (use {', '.join(LOCAL_SUFFIXES)}, optionally .gz)"
        )
    if path.is_dir():
        return read_with_datasets(str(path), data_cfg)
    if suffix in LOCAL_SUFFIXES or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset file not found: {path}")
    return read_with_datasets(source, data_cfg)


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


def resolve_source(data_cfg: DataConfig, kind: str) -> str:
    """The file or Hub id to read; ``"demo"`` is the built-in data for ``kind``."""
    if not data_cfg.dataset_name:
        raise ValueError("dataset_name is not set: give a file, a Hub dataset id, or 'demo'")
    if data_cfg.dataset_name == "demo":
        return str(DEMO_DIR / DEMO_FILES[kind])
    return data_cfg.dataset_name


def _load_groups(
    source: str, data_cfg: DataConfig, kind: str, limit: int | None
) -> tuple[list[list[Record]], Format, SkipReport, int]:
    rows = read_rows(source, data_cfg)
    head = list(itertools.islice(rows, DETECTION_ROWS))
    fmt = resolve_format(data_cfg.dataset_format, head, source)
    check_kind(fmt, kind)
    report = SkipReport(path=source)
    groups, rows_read = adapt_rows(
        itertools.chain(head, rows), fmt, kind, source, data_cfg.invalid_records, report, limit
    )
    if report.total:
        logger.warning("%s: %s", source, report.summary())
    return groups, fmt, report, rows_read


def load_records(data_cfg: DataConfig, kind: str, *, seed: int = 42) -> RecordSet:
    """Read ``data_cfg.dataset_name`` as ``kind`` records ("demonstration", "comparison" or "prompt").

    Held-out records come from ``eval_dataset_name`` or, failing that, ``eval_split_size`` of the
    training source (seeded by ``seed``); ``max_samples`` / ``max_eval_samples`` cut each side.
    Without a split from the same source, reading stops at ``max_samples`` records, so the skip
    report then covers only the rows read.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    if data_cfg.invalid_records not in POLICIES:
        raise ValueError(f"invalid_records must be one of {', '.join(POLICIES)}, got {data_cfg.invalid_records!r}")
    source = resolve_source(data_cfg, kind)
    split_here = not data_cfg.eval_dataset_name and data_cfg.eval_split_size > 0
    limit = None if split_here else data_cfg.max_samples
    groups, fmt, report, rows_read = _load_groups(source, data_cfg, kind, limit)
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
        fmt.name,
        rows_read,
        len(held_out),
        report.summary(),
    )
    return RecordSet(train, held_out, report, fmt.name, source, kind, rows_read, eval_report)


def load_records_from_path(path: str | Path, kind: str, format: str = "auto", invalid: str = "raise") -> RecordSet:
    """``load_records`` for one file with default settings (tests, evaluation prompt sets)."""
    return load_records(DataConfig(dataset_name=str(path), dataset_format=format, invalid_records=invalid), kind)
