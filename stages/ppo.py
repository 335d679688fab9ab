"""PPO stage: optimise the SFT policy against reward models with a KL penalty. Usage: alignment ppo --config configs/ppo.yaml [--key value ...]   (or python stages/ppo.py ...)"""

from __future__ import annotations

import json
import sys

import alignment.ppo.stage as ppo
from alignment.core.config import parse_config

CONFIG_TYPES = ppo.CONFIG_TYPES


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(CONFIG_TYPES, argv, prog="alignment ppo")
    metrics = ppo.train(cfg)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
