"""Reading a data source into raw rows: JSON Lines (``.gz`` too), JSON arrays, CSV, Parquet and Hub datasets.

A row that cannot be read (not UTF-8, not JSON) becomes a :class:`RawRow` carrying a :class:`RecordError` that
names the file and line, so the caller decides whether to stop or to skip and count it.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alignment.core.config import DataConfig
from alignment.core.identity import looks_local
from data_schemas.errors import RecordError

LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


@dataclass
class RawRow:
    """One source row and where it came from (``line`` 1-based for line files, else ``index`` 0-based)."""

    value: Any
    line: int | None = None
    index: int | None = None
    error: RecordError | None = None


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


_ROW_RANGE = re.compile(r"^(?P<source>.+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def split_row_range(source: str) -> tuple[str, int, int | None]:
    """``"file.jsonl[100:500]"`` -> ``("file.jsonl", 100, 500)``: rows 100..499, counted from 0 as in Python.

    A source without a range is all its rows: ``(source, 0, None)``. Ranges select source rows (lines of a JSONL file,
    items of a JSON list, CSV records) before they are read as records, so two ranges of one file never share a row.
    """
    match = _ROW_RANGE.match(source)
    if match is None:
        return source, 0, None
    start = int(match["start"] or 0)
    stop = int(match["stop"]) if match["stop"] else None
    if stop is not None and stop <= start:
        raise ValueError(f"{source}: the row range [{start}:{stop}] is empty")
    return match["source"], start, stop


def read_rows(source: str, data_cfg: DataConfig | None = None) -> Iterator[RawRow]:
    """Raw rows of a local file (by suffix, ``.gz`` allowed), a directory or a Hub dataset id.

    ``source`` may end in a row range, ``[start:stop]`` (see :func:`split_row_range`); rows keep their index in the
    whole source, so an error still names the file's own line.
    """
    source, start, stop = split_row_range(source)
    rows = _read_all_rows(source, data_cfg)
    return rows if start == 0 and stop is None else itertools.islice(rows, start, stop)


def _read_all_rows(source: str, data_cfg: DataConfig | None) -> Iterator[RawRow]:
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
    if suffix in LOCAL_SUFFIXES or looks_local(source):  # a local path that is missing, never a Hub dataset id
        raise FileNotFoundError(f"dataset file not found: {path}")
    return read_with_datasets(source, data_cfg)
