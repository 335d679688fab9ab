"""A sweep: PPO runs over a grid (reward weights or KL coefficients), then one evaluation of them all.

Usage: python stages/sweep.py --config RECIPE.yaml [--key value ...]   (the same as ``alignment sweep``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("sweep", sys.argv[1:]))
