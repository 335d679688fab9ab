"""Evaluation stage: compare policies on helpfulness and harmlessness; writes report.md, results.json, plots.

Usage: python stages/evaluate.py --config RECIPE.yaml [--key value ...]   (the same as ``alignment evaluate``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate", sys.argv[1:]))
