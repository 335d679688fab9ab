"""Reward model stage: pairwise ranking on comparisons (``--eval_only true`` evaluates any reward model).

Usage: python stages/reward.py --config RECIPE.yaml [--key value ...]   (the same as ``alignment reward``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("reward", sys.argv[1:]))
