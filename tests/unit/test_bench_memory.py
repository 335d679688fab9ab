"""The benchmark's per-phase memory attribution: the phase that raises resident memory is the one charged."""

from __future__ import annotations

import platform
import time

import pytest
import torch

from bench.common import RssAttribution


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/statm")
def test_the_phase_that_allocates_is_charged_and_a_later_phase_reusing_the_memory_is_not():
    memory = RssAttribution(interval_s=0.002)
    try:
        with memory.phase("outer"):
            with memory.phase("allocates"):
                block = torch.ones(64 * 2**20)  # 256 MiB, touched page by page
                time.sleep(0.1)
            del block
            with memory.phase("reuses"):
                again = torch.ones(64 * 2**20)  # the freed block comes back: no new high-water mark
                time.sleep(0.1)
            del again
    finally:
        memory.stop()
    result = memory.as_dict()
    assert result["raised_mib"].get("allocates", 0.0) > 200, result
    assert result["raised_mib"].get("reuses", 0.0) < 50, result
    assert result["peak_while_mib"]["outer"] >= result["start_mib"] + 200, result
