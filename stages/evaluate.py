"""Evaluation stage: compare policies on helpfulness and harmlessness; writes report.md, results.json and plots.

Usage: alignment evaluate --config configs/evaluate.yaml [--key value ...]   (or python stages/evaluate.py ...)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import alignment.evaluate.stage as evaluate
from alignment.core.config import parse_config

CONFIG_TYPES = evaluate.CONFIG_TYPES


def _cell(metrics: dict[str, Any], key: str, percent: bool = False) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def print_summary(metrics: dict[str, Any], policies: list[str], reward_names: list[str]) -> None:
    """One screen: a line per policy with the headline numbers, then where the report is."""
    print("\n" + "=" * 88)
    print(f"evaluation: {metrics.get('num_prompts')} prompts, reference {metrics.get('reference_policy')}")
    header = f"{'policy':<20}" + "".join(f"{rm[:14] + ' rwd':>18}{'win':>8}" for rm in reward_names)
    print(header + f"{'refuse harm':>12}{'over-refuse':>12}{'KL':>9}{'no EOS':>8}")
    for name in policies:
        row = f"{name[:19]:<20}"
        for rm in reward_names:
            row += f"{_cell(metrics, f'{name}/reward/{rm}'):>18}{_cell(metrics, f'{name}/win_rate/{rm}', True):>8}"
        row += f"{_cell(metrics, f'{name}/refusal_rate_harmful', True):>12}"
        row += f"{_cell(metrics, f'{name}/over_refusal_rate_safe', True):>12}"
        row += f"{_cell(metrics, f'{name}/kl'):>9}{_cell(metrics, f'{name}/no_eos_rate', True):>8}"
        print(row)
    report = Path(str(metrics.get("report", "")))
    print(f"\nreport: {report}  (CIs, samples; plots and results.json beside it)")
    print("=" * 88)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(CONFIG_TYPES, argv, prog="alignment evaluate")
    metrics = evaluate.evaluate(cfg)
    if metrics:
        plan = evaluate.plan_evaluation(cfg)
        print_summary(metrics, [p.name for p in plan.policies], plan.reward_names)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
