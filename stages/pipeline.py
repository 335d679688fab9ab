"""The whole pipeline: SFT -> reward -> PPO -> evaluate, each stage's output feeding the next.

Usage: alignment pipeline --config configs/quickstart.yaml [--config configs/models/MODEL.yaml]
                          [--model_name_or_path ID] [--output_dir DIR] [--key value ...]
A second --config (a model-family recipe: flat model keys) applies to every stage; flags override both.
Re-running the same command skips finished stages and resumes an interrupted one.
"""

from __future__ import annotations

import sys
from typing import Any

from alignment.core.config import ConfigError, parse_overrides, split_config_arg
from alignment.pipeline import pipeline_bool_keys, run_pipeline


def parse_arguments(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        raise SystemExit(0)
    paths, rest = split_config_arg(argv)
    if not paths:
        raise ConfigError("alignment pipeline needs --config (e.g. configs/quickstart.yaml)")
    return paths, parse_overrides(rest, pipeline_bool_keys())


def print_summary(summary: dict) -> None:
    print("\n" + "=" * 72)
    print(f"pipeline finished: {summary['run_dir']}")
    for stage, info in summary["stages"].items():
        metrics = info["metrics"]
        keys = {
            "sft": ("eval_loss_before", "eval_loss", "train_tokens_per_second"),
            "reward": ("eval_accuracy", "eval_accuracy_ci_low", "eval_accuracy_ci_high", "num_pairs"),
            "ppo": ("heldout_reward_before", "heldout_reward_after", "kl_last", "episodes_per_second"),
            "evaluate": ("report",),
        }.get(stage, ())
        shown = ", ".join(
            f"{k}={metrics[k]:.4g}" if isinstance(metrics.get(k), float) else f"{k}={metrics.get(k)}"
            for k in keys
            if k in metrics
        )
        print(f"  {stage:<9} {info['status']:<26} {info['seconds']:>7.1f}s  {shown}")
    report = summary["stages"].get("evaluate", {}).get("output_dir")
    if report:
        print(f"\nreport: {report}/report.md  (plots: tradeoff.png, refusals.png)")
    print("=" * 72)


def main(argv: list[str] | None = None) -> dict:
    path, overrides = parse_arguments(list(sys.argv[1:] if argv is None else argv))
    summary = run_pipeline(path, overrides)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
