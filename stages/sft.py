"""SFT stage: fine-tune a causal LM on demonstrations (loss on assistant tokens only).

Usage: alignment sft --config configs/sft.yaml [--key value ...]   (or python stages/sft.py ...)
"""

from __future__ import annotations

import json
import sys

from alignment import sft
from alignment.core.config import parse_config

CONFIG_TYPES = sft.CONFIG_TYPES


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(CONFIG_TYPES, argv, prog="alignment sft")
    metrics = sft.train(cfg)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
