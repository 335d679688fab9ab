"""Run directories: one place that sets up a stage run the same way for every stage.

``start_run`` creates the output directory, writes the resolved ``config.yaml`` and
``versions.json``, seeds every RNG, builds the ``Accelerator`` (CPU, one GPU, or N processes
under ``accelerate launch`` / ``torchrun``), configures logging to ``<output_dir>/run.log``,
keeps freed memory for reuse on the CPU (``cpu_memory``) and opens the step logger. ``mark_done``
writes ``DONE`` last, so a pipeline can skip a finished stage and resume an unfinished one.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from alignment.core.checkpointing import remove_partial_checkpoints
from alignment.core.config import Config
from alignment.core.config_parsing import save_config
from alignment.core.cpu_memory import keep_freed_memory_for_reuse, return_freed_memory
from alignment.core.distributed import check_distributed_support, sharding_backend
from alignment.core.identity import (
    check_inputs_exist,
    check_output_dir,
    clear_run_directory,
    run_identity,
    write_identity,
)
from alignment.core.precision import flat_row_multiple, resolve_bf16, warn_if_slow_on_cpu
from alignment.core.tracking import MetricLogger, write_json_atomic

logger = logging.getLogger(__name__)

DONE_FILE = "DONE"
VERSIONED_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "alignment")


@dataclass
class Run:
    stage: str
    cfg: Config
    output_dir: Path
    accelerator: Accelerator
    metrics: MetricLogger

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def flat_row_multiple(self) -> int:
        """What this run's flat packed rows are rounded up to (``precision.flat_row_multiple``)."""
        return flat_row_multiple(str(self.accelerator.mixed_precision), self.device)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def make_accelerator(cpu: bool = False, bf16: bool = False) -> Accelerator:
    """An Accelerator in bf16 mixed precision with ``bf16``, else in what ``accelerate launch`` asked for (fp32 by
    default).

    accelerate keeps one mixed-precision setting per process (``AcceleratorState``), and the pipeline runs its
    stages in one process: without a reset a bf16 stage's setting carried into the fp32 stages after it, and a bf16
    stage after an fp32 one failed ("AcceleratorState has already been initialized"). The process group is kept.
    """
    from accelerate.state import AcceleratorState

    wanted = "bf16" if bf16 else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != wanted:
        AcceleratorState._reset_state(reset_partial_state=False)
    mixed = "bf16" if bf16 else None  # None: keep what `accelerate launch` / its config file asked for
    return Accelerator(cpu=cpu or not torch.cuda.is_available(), mixed_precision=mixed)


def _configure_logging(output_dir: Path, is_main: bool) -> logging.Handler | None:
    root = logging.getLogger()
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(logging.INFO)
    if not is_main:
        return None
    handler = logging.FileHandler(output_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler


def is_done(output_dir: str | Path) -> bool:
    return (Path(output_dir) / DONE_FILE).is_file()


def mark_done(output_dir: str | Path) -> None:
    (Path(output_dir) / DONE_FILE).write_text("done\n", encoding="utf-8")


@contextlib.contextmanager
def start_run(cfg: Config, stage: str, *, rewrites_outputs: bool = False) -> Iterator[Run]:
    """Set up ``cfg.train.output_dir`` for ``stage``; yields a :class:`Run`; closes loggers on exit.

    The directory is checked against the run about to start before anything is written (see
    :mod:`alignment.core.identity`): a run of other settings, or a folder that is not a run directory, is refused.
    ``rewrites_outputs``: the stage rewrites every output on each run and caches only content-keyed files (the
    evaluation), so its own run directory is reused whatever its settings were.
    """
    train = cfg.train
    output_dir = Path(train.output_dir)
    check_inputs_exist(cfg)
    identity = run_identity(cfg)
    accelerator = make_accelerator(cpu=train.cpu, bf16=resolve_bf16(train.bf16, train.cpu))

    check_distributed_support(cfg, accelerator)  # before anything is written or loaded
    action = check_output_dir(output_dir, identity, train.resume, train.overwrite or rewrites_outputs)
    if rewrites_outputs and action == "overwrite":
        action = "resume"  # nothing of an earlier run is read back, and its cached generations stay valid
    accelerator.wait_for_everyone()  # every rank has checked before the main one changes anything
    if accelerator.is_main_process:
        if action == "overwrite":
            clear_run_directory(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_identity(output_dir, identity)
        (output_dir / DONE_FILE).unlink(missing_ok=True)  # written last, by mark_done
        remove_partial_checkpoints(output_dir)
        save_config(cfg, output_dir / "config.yaml")
        versions: dict[str, Any] = package_versions()
        versions.update(
            {"seed": train.seed, "num_processes": accelerator.num_processes, "device": str(accelerator.device)}
        )
        write_json_atomic(output_dir / "versions.json", versions)
    accelerator.wait_for_everyone()
    handler = _configure_logging(output_dir, accelerator.is_main_process)
    if accelerator.device.type == "cpu":
        # FSDP is chosen for memory, and its per-block gather buffers fragment a heap that keeps freed blocks.
        sharded = sharding_backend(accelerator, cfg) is not None
        return_freed_memory() if sharded else keep_freed_memory_for_reuse()
    warn_if_slow_on_cpu(accelerator.mixed_precision, accelerator.device)
    set_seed(train.seed)
    metrics = MetricLogger(output_dir, train.report_to, enabled=accelerator.is_main_process)
    logger.info(
        "%s: output_dir=%s, %d process(es) on %s", stage, output_dir, accelerator.num_processes, accelerator.device
    )
    try:
        yield Run(stage=stage, cfg=cfg, output_dir=output_dir, accelerator=accelerator, metrics=metrics)
    finally:
        metrics.close()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
