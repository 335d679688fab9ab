"""A sweep: PPO runs over a grid (reward weights or KL coefficients), then one evaluation of them all.

Usage: alignment sweep --config configs/sweep_reward_weights.yaml [--key value ...]   (keys override the PPO runs)
The report's tradeoff.png then traces the helpfulness / harmlessness frontier across the grid.
"""

from __future__ import annotations

import json
import sys

from alignment.core.config import ConfigError, split_config_arg
from alignment.sweep import run_sweep


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        raise SystemExit(0)
    paths, rest = split_config_arg(argv)
    if len(paths) != 1:
        raise ConfigError("alignment sweep needs one --config (e.g. configs/sweep_reward_weights.yaml)")
    summary = run_sweep(paths[0], rest)
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
