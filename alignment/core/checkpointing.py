"""Checkpoints that survive a crash, resume exactly, and are written on Ctrl-C.

Layout of ``<output_dir>/checkpoints/checkpoint-<step>/``:

- ``trainable.safetensors``: every parameter with ``requires_grad`` (LoRA adapters, value
  heads, or all weights in full fine-tuning), keyed by its name in the model;
- ``optimizer.pt`` / ``scheduler.pt``: ``torch.save``'d state dicts, read back with
  ``weights_only=True`` so a checkpoint can never execute code (an FSDP run's optimizer state is keyed by
  parameter name, with whole tensors: see :mod:`alignment.core.sharding`);
- ``rng.pt``: Python, NumPy and torch RNG states (NumPy's stored as plain lists);
- ``state.json``: the step, the data position and stage extras (KL coefficient, Lagrange
  multiplier, ...).

A checkpoint is written to a hidden temp directory and renamed into place, so a crash leaves
either the previous checkpoint or the new one, never half of one. None of trl, accelerate or
torchtune saves on SIGINT; ``GracefulInterrupt`` turns the first Ctrl-C into "finish this step,
save, exit" and a second one into an immediate stop.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignment.core.sharding import (
    full_trainable_state_dict,
    is_sharded,
    is_sharded_tensor,
    load_full_optimizer_state,
    load_full_trainable_state_dict,
)

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"


FAULT_ENV = "ALIGNMENT_FAULT"


def fault_point(where: str, step: int) -> None:
    """Fault injection for the crash tests: ``ALIGNMENT_FAULT=<where>:<step>`` kills this process right here.

    SIGKILL, as a power cut or the kernel's OOM killer would: no handler, no cleanup. Off unless the variable is set.
    """
    if os.environ.get(FAULT_ENV) == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def load_trainable_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise ValueError(
            f"checkpoint does not match the model: {len(missing)} trainable parameters missing "
            f"(e.g. {missing[:2]}), {len(unknown)} unknown (e.g. {unknown[:2]})"
        )
    load_full_trainable_state_dict(model, tensors)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    found = [p for p in list_checkpoints(output_dir) if (p / STATE_FILE).is_file()]
    return found[-1] if found else None


def remove_partial_checkpoints(output_dir: str | Path) -> None:
    """Delete the temporary folders of checkpoint writes that a crash (kill -9, power loss) cut short."""
    root = checkpoint_root(output_dir)
    if root.is_dir():
        for partial in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
            logger.info("removing %s, left by an interrupted checkpoint write", partial)
            shutil.rmtree(partial, ignore_errors=True)


def check_finite(model: torch.nn.Module | dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`FloatingPointError` naming the first trainable parameter that holds NaN or inf.

    ``model``: a model (its trainable parameters are checked) or the trainable tensors already gathered.
    """
    if isinstance(model, dict):
        named = model.items()
    else:
        named = ((n, p) for n, p in model.named_parameters() if p.requires_grad)
    for name, param in named:
        local = param.to_local() if is_sharded_tensor(param) else param  # a shard: each process checks its own
        if not bool(torch.isfinite(local.detach()).all()):
            raise FloatingPointError(f"{what}: parameter {name} is not finite (NaN or inf); lower the learning rate")


def resume_from_newest(
    output_dir: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
) -> dict[str, Any] | None:
    """Load the newest readable checkpoint; one that cannot be read (cut short, corrupted) is skipped, loudly.

    Returns its ``state.json`` dict, or None when there is no checkpoint to resume from.
    """
    candidates = [p for p in list_checkpoints(output_dir) if (p / STATE_FILE).is_file()]
    for path in reversed(candidates):
        try:
            return load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
        except Exception as e:  # any unreadable file means: try the one before
            logger.warning("checkpoint %s cannot be read (%s: %s); trying the one before it", path, type(e).__name__, e)
    if candidates:
        raise RuntimeError(f"no checkpoint in {checkpoint_root(output_dir)} can be read; start over with --overwrite")
    return None


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    save_total_limit: int = 2,
    tensors: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically and prune older ones beyond ``save_total_limit``.

    Weights that are not finite are never saved (:class:`FloatingPointError`), so every checkpoint kept is one
    a run can go back to. ``tensors`` / ``optimizer_state``: the trainable parameters and the optimizer state
    already gathered whole from a sharded model (every process takes part in the gathering; one writes).
    """
    tensors = full_trainable_state_dict(model) if tensors is None else tensors
    check_finite(tensors, f"checkpoint at step {step}")
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / TRAINABLE_FILE))
    if optimizer_state is not None or optimizer is not None:
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / OPTIMIZER_FILE)
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
    fault_point("checkpoint_write", step)
    torch.save(_rng_state(), tmp / RNG_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(extra or {})}, indent=2), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[: -max(save_total_limit, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what ``save_checkpoint`` wrote; returns the ``state.json`` dict (step + extras)."""
    path = Path(path)
    load_trainable_state_dict(model, load_file(str(path / TRAINABLE_FILE)))
    if optimizer is not None and (path / OPTIMIZER_FILE).is_file():
        optimizer_state = torch.load(path / OPTIMIZER_FILE, weights_only=True)
        if is_sharded(model) or any(isinstance(key, str) for key in optimizer_state["state"]):
            load_full_optimizer_state(model, optimizer, optimizer_state)  # keyed by name, or to be sharded
        else:
            optimizer.load_state_dict(optimizer_state)
    if scheduler is not None and (path / SCHEDULER_FILE).is_file():
        scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=True))
    if restore_rng and (path / RNG_FILE).is_file():
        _set_rng_state(torch.load(path / RNG_FILE, weights_only=True))
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    logger.info("resumed from %s (step %d)", path, state["step"])
    return state


class GracefulInterrupt:
    """First SIGINT/SIGTERM sets ``requested``; the loop saves and exits. A second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt received: saving a checkpoint after this step (press Ctrl-C again to abort)")

    def __enter__(self) -> GracefulInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after the checkpoint is written, so callers exit with status 130."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved to {checkpoint}; re-run with --resume to continue")
        self.checkpoint = checkpoint
