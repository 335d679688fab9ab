"""Reward model stage: pairwise ranking on comparisons (--eval_only evaluates any reward model). Usage: alignment reward --config configs/reward.yaml [--key value ...]   (or python stages/reward.py ...)"""

from __future__ import annotations

import json
import sys

from alignment import reward
from alignment.core.config import parse_config

CONFIG_TYPES = reward.CONFIG_TYPES


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(CONFIG_TYPES, argv, prog="alignment reward")
    metrics = reward.train(cfg)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
