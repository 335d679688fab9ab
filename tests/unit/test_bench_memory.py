"""The benchmark's per-phase memory attribution: the phase that raises resident memory is the one charged."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# Run in a fresh process: in the test session's own, freed heap left by earlier tests could serve the allocation
# without any rise in resident memory (which the attribution rightly does not charge).
SCRIPT = """
import json, time, torch
from bench.common import RssAttribution

memory = RssAttribution(interval_s=0.002)
with memory.phase("outer"):
    with memory.phase("allocates"):
        block = torch.ones(64 * 2**20)  # 256 MiB, touched page by page
        time.sleep(0.1)
    del block
    with memory.phase("reuses"):
        again = torch.ones(64 * 2**20)  # the same size again: no new high-water mark
        time.sleep(0.1)
    del again
memory.stop()
print(json.dumps(memory.as_dict()))
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/statm")
def test_the_phase_that_allocates_is_charged_and_a_later_phase_reusing_the_memory_is_not():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["raised_mib"].get("allocates", 0.0) > 200, result
    assert result["raised_mib"].get("reuses", 0.0) < 50, result
    assert result["peak_while_mib"]["outer"] >= result["start_mib"] + 200, result
