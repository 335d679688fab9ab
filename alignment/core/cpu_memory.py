"""CPU training: keep freed memory in the process heap for reuse instead of handing it back to the kernel.

glibc's malloc serves a request larger than its mmap threshold (dynamic, at most 32 MiB on 64-bit
Linux) with a fresh ``mmap`` and unmaps it on ``free``, and hands the heap's free top back to the
kernel once it exceeds twice that threshold. A training step on the CPU allocates and frees the same
large tensors every step (activations kept for the backward, their gradients, the logits), so every
step faults its working set back in page by page, and the kernel zeroes each page first. Raising the
mmap and heap-trim thresholds keeps those blocks in the heap, where the next step reuses them.
Measured on the 2-core benchmark machine (bench/RESULTS.md): PPO policy forward 41-44 s -> 26-28 s
over 8 updates, 0.25-0.28 -> 0.32 episodes/s; SFT 178-193 -> 251 tokens/s; peak RSS within 1 % of glibc's
dynamic threshold. The price is memory against a *fixed* threshold, which returns every large block: PPO peaks at
7.3-7.4 GB kept vs 4.0 GB returned, at 0.71x the speed (``MALLOC_MMAP_THRESHOLD_=131072``, the user's choice, is
respected; FSDP runs, chosen for memory, take it themselves: :func:`return_freed_memory`).

Intel's CPU tuning guides reach the same with jemalloc or tcmalloc through ``LD_PRELOAD``; ``mallopt``
needs no extra package. A user who chose an allocator or glibc tunables keeps them: nothing is changed then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt(3) parameter numbers (malloc.h); both values are C ints.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 30  # blocks below 1 GiB come from the reusable heap
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # keep up to 2 GiB of free heap top instead of trimming it

_USER_CHOICES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
RETURN_THRESHOLD_BYTES = 128 * 1024  # glibc's initial mmap threshold, made fixed
_chosen: str | None = None  # which of the two settings this process has


def keep_freed_memory_for_reuse() -> bool:
    """Set glibc's mmap and trim thresholds high (per process); returns whether they are set.

    No-op (False) off glibc Linux, or when the user set glibc malloc tunables or preloaded an allocator.
    """
    message = "CPU run: freed tensor memory stays in the heap for reuse (glibc mmap/trim thresholds raised)"
    return _set_thresholds("reuse", MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES, message)


def return_freed_memory() -> bool:
    """The opposite choice, for runs chosen for memory (FSDP): blocks above 128 KiB are mapped on their own and handed
    back to the kernel when freed (glibc's initial threshold, fixed instead of rising with every large free).

    FSDP all-gathers and frees each block's weights at every pass; with glibc's dynamic threshold those blocks soon
    come from the heap, which fragments: PPO on 2 processes (bench/bench_fsdp.py) peaked at 2.9-3.1 GiB per process
    that way and at 1.3 GiB with the fixed threshold, at about three quarters of the speed. Same conditions as
    :func:`keep_freed_memory_for_reuse`.
    """
    message = "CPU run under FSDP: freed blocks go back to the kernel (glibc mmap threshold fixed at 128 KiB)"
    return _set_thresholds("return", RETURN_THRESHOLD_BYTES, RETURN_THRESHOLD_BYTES * 2, message)


def _set_thresholds(choice: str, mmap_bytes: int, trim_bytes: int, message: str) -> bool:
    global _chosen
    if _chosen == choice:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in _USER_CHOICES) or "malloc" in os.environ.get("LD_PRELOAD", ""):
        logger.info("keeping the user's malloc settings (glibc tunables or a preloaded allocator)")
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not (libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes) and libc.mallopt(M_TRIM_THRESHOLD, trim_bytes)):
        logger.warning("glibc refused the malloc thresholds (%s)", choice)
        return False
    _chosen = choice
    logger.info(message)
    return True
