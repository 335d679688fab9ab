"""Inspect a dataset before training.

Usage: python stages/data.py inspect SOURCE [--model_name_or_path X]   (the same as ``alignment data``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("data", sys.argv[1:]))
