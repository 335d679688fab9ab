"""Peak memory of one stage inside a longer process (the pipeline runs its stages in one process).

``ru_maxrss`` only grows over a process's life, so a pipeline's later stages would report the earliest peak. On
Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark of resident memory (``VmHWM``)
to the current resident size (proc(5)); freed heap that glibc keeps for reuse is handed back first (``malloc_trim``),
so one stage's leftovers do not count as the next stage's peak. On a GPU, torch's own peak counter is reset too.
Where neither is available (macOS), the figures are absent rather than wrong.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory() -> bool:
    """Start a new peak from now; False where the kernel offers no resettable high-water mark."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if platform.system() != "Linux" or not _CLEAR_REFS.exists():
        return False
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mib() -> dict[str, float]:
    """``peak_rss_mib`` (host memory since the last reset) and, on a GPU, ``peak_cuda_allocated_mib``."""
    peaks: dict[str, float] = {}
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks["peak_rss_mib"] = round(int(line.split()[1]) / 1024, 1)  # reported in kB
    if torch.cuda.is_available():
        peaks["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks
