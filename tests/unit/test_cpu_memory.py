"""The CPU allocator setting: a step's large tensors reuse the heap instead of faulting in fresh pages."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

# A training step's pattern: many activation-sized tensors (1 MiB each) written, all freed, then the next step.
# Reports the minor page faults of each step.
PROBE = """
import json, resource, sys, torch
from alignment.core.cpu_memory import keep_freed_memory_for_reuse
tuned = keep_freed_memory_for_reuse() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(2):
    before = faults()
    activations = [torch.ones(256 * 1024) for _ in range(200)]
    counts.append(faults() - before)
    del activations
print(json.dumps({"tuned": tuned, "faults": counts}))
"""

STEP_PAGES = 200 * 1024 * 1024 // 4096


def _probe(mode: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_freed_tensor_memory_is_reused_without_page_faults():
    default, tuned = _probe("default"), _probe("tuned")
    assert tuned["tuned"] is True
    # Both sides fault the first step's memory in; default glibc hands it back and faults it in again.
    assert default["faults"][1] > STEP_PAGES // 2
    # Tuned: the second step reuses the first step's pages.
    assert tuned["faults"][1] < STEP_PAGES // 10


def test_user_allocator_choice_is_kept():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    assert _probe("tuned", env)["tuned"] is False
