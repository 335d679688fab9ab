"""The whole pipeline: SFT -> reward -> PPO -> evaluate, each stage's output feeding the next.

Usage: python stages/pipeline.py --config RECIPE.yaml [--key value ...]   (the same as ``alignment pipeline``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("pipeline", sys.argv[1:]))
