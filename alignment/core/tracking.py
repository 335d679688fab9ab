"""Metric logging shared by every stage: a JSONL step log always, TensorBoard / wandb / trackio on request.

The JSONL file is the source of truth: users read it, the tests read it back to assert that a
loss falls or a reward rises (torchtune's ``DiskLogger`` pattern), and the pipeline summary is
built from it. Only the main process writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
T = TypeVar("T")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temp file and rename it over ``path`` so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def metrics_text(metrics: dict[str, Any]) -> str:
    """A stage's final metrics as the command line shows them: indented JSON."""
    return json.dumps(metrics, indent=2, default=_jsonable)


def _row_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf  # a row cut short by a crash: drop it


class MetricLogger:
    """Append one JSON object per logged step to ``<output_dir>/log.jsonl`` and fan out to trackers."""

    def __init__(self, output_dir: str | Path, report_to: list[str] | None = None, enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self._trackers: list[Any] = []
        self._file = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.output_dir / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        for name in report_to or []:
            self._trackers.append(_make_tracker(name, self.output_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled or self._file is None:
            return
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row, default=str) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        for tracker in self._trackers:
            tracker.log(step, numeric)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        """Sample tables (prompts and responses) go to ``<name>.jsonl`` beside the step log."""
        if not self.enabled:
            return
        with open(self.output_dir / f"{name}.jsonl", "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}, default=str) + "\n")

    def drop_steps_after(self, step: int) -> None:
        """Forget logged rows past ``step`` (a resumed run repeats them), in the step log and the sample tables."""
        if not self.enabled:
            return
        if self._file is not None:
            self._file.close()
        for path in [self.output_dir / LOG_FILE, *sorted(self.output_dir.glob("*.jsonl"))]:
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if _row_step(line) <= step]
            if len(kept) != len(lines):
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                tmp.write_text("".join(kept), encoding="utf-8")
                os.replace(tmp, path)
        self._file = open(self.output_dir / LOG_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            write_json_atomic(self.output_dir / METRICS_FILE, {k: _jsonable(v) for k, v in metrics.items()})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []


class _TensorBoard:
    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _ModuleTracker:
    """wandb and trackio share the ``init / log / finish`` shape."""

    def __init__(self, module_name: str, output_dir: Path) -> None:
        import importlib

        self.module = importlib.import_module(module_name)
        self.run = self.module.init(project=os.environ.get("ALIGNMENT_PROJECT", "alignment"), name=output_dir.name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.module.log(metrics, step=step)

    def close(self) -> None:
        self.module.finish()


def _make_tracker(name: str, output_dir: Path) -> Any:
    if name == "tensorboard":
        try:
            return _TensorBoard(output_dir)
        except ImportError as e:
            raise ImportError("report_to=tensorboard needs `pip install tensorboard`") from e
    if name in ("wandb", "trackio"):
        try:
            return _ModuleTracker(name, output_dir)
        except ImportError as e:
            raise ImportError(f"report_to={name} needs `pip install {name}`") from e
    raise ValueError(f"unknown report_to entry {name!r}; known: tensorboard, wandb, trackio")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Read a step log back (a directory or the log file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    initial: int = 0,
) -> Iterator[T] | tqdm:
    """A tqdm progress bar with ETA on the main process only (quiet under ALIGNMENT_NO_PROGRESS=1)."""
    disable = not enabled or os.environ.get("ALIGNMENT_NO_PROGRESS") == "1"
    return tqdm(iterable, total=total, desc=desc, disable=disable, initial=initial, dynamic_ncols=True, leave=False)


def close_progress_bars() -> None:
    """Close every open bar (a run that stops with an error leaves its bar open, and the message would follow it on
    the same line)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
