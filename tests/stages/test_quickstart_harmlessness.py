"""The quickstart, run as the README runs it, teaches harmlessness (slow: about 18 minutes on 2 CPU cores).

Its reward model ranks a refusal above going along with a harmful request in at least 80% of the held-out demo
pairs of that kind, and its PPO policy refuses more held-out harmful prompts than SFT. It should over-refuse no more
safe ones; today it does (the test reports that as an expected failure until it is fixed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from alignment.pipeline import run_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_checker():
    spec = importlib.util.spec_from_file_location("check_quickstart", REPO_ROOT / "scripts" / "check_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_quickstart_rewards_refusing_harmful_requests_and_ppo_refuses_more(tmp_path):
    run_dir = tmp_path / "quickstart"
    run_pipeline(str(REPO_ROOT / "configs" / "quickstart.yaml"), {"output_dir": str(run_dir)})
    result = load_checker().check(run_dir)
    assert result["reward_prefers_refusal"], result["ranking"]
    assert result["ppo_refuses_more"], result["rates"]
    if not result["ppo_over_refuses_no_more"]:
        # Known and reported in the README (2026-12-05: 3 of 16 safe prompts against SFT's 1); still to fix.
        pytest.xfail(f"PPO over-refuses more safe prompts than SFT: {result['rates']}")
