"""SFT stage: fine-tune a causal LM on demonstrations, with the loss on the assistant tokens only.

Usage: python stages/sft.py --config RECIPE.yaml [--key value ...]   (the same as ``alignment sft``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("sft", sys.argv[1:]))
