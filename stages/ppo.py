"""PPO stage: optimise the SFT policy against reward models with a KL penalty to the SFT policy.

Usage: python stages/ppo.py --config RECIPE.yaml [--key value ...]   (the same as ``alignment ppo``; ``--help`` lists the options)
"""

import sys

from alignment.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("ppo", sys.argv[1:]))
