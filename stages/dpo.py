"""DPO stage: direct preference optimisation of the SFT policy on comparisons.

Usage: python stages/dpo.py --config RECIPE.yaml [--key value ...]   (the same as ``alignment dpo``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("dpo", sys.argv[1:]))
