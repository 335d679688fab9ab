"""A stage's peak memory inside the pipeline's one process: the high-water mark restarts at each stage."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from alignment.core.peak_memory import peak_memory_mib, reset_peak_memory


@pytest.mark.skipif(platform.system() != "Linux" or not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_the_peak_falls_back_after_a_reset_and_rises_with_a_large_allocation():
    reset_peak_memory()
    quiet = peak_memory_mib()["peak_rss_mib"]
    block = bytearray(400 * 2**20)  # 400 MiB, touched page by page
    block[::4096] = b"x" * len(block[::4096])
    busy = peak_memory_mib()["peak_rss_mib"]
    assert busy >= quiet + 350, (quiet, busy)
    del block
    assert reset_peak_memory()
    after = peak_memory_mib()["peak_rss_mib"]
    assert after <= busy - 350, "the reset must forget the earlier stage's peak"
