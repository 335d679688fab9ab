"""``alignment <stage> [--config recipe.yaml] [--key value ...]``: dispatch to the stage scripts.

No logic lives here (trl's ``cli/commands`` shape): each subcommand calls ``stages.<name>.main``,
the same function ``python stages/<name>.py`` runs, and user-facing errors become one line.
"""

from __future__ import annotations

import importlib
import sys

from alignment.core.config import ConfigError
from data_schemas.errors import RecordError

STAGES = {
    "sft": "supervised fine-tuning on demonstrations",
    "reward": "train (or --eval_only evaluate) a pairwise reward model",
    "ppo": "optimise the SFT policy against reward models with a KL penalty",
    "evaluate": "helpfulness / harmlessness report for several policies",
    "pipeline": "run SFT -> reward -> PPO -> evaluate in one command",
    "sweep": "PPO over a grid of reward weights or KL coefficients, evaluated together",
    "data": "inspect a dataset before training (`alignment data inspect SOURCE`)",
}


def usage() -> str:
    lines = ["usage: alignment <command> [--config recipe.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in STAGES.items()]
    lines += ["", "`alignment <command> --help` lists every option of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in STAGES:
        print(f"alignment: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    stage = importlib.import_module(f"stages.{command}")
    try:
        stage.main(rest)
    except (ConfigError, RecordError, FileNotFoundError) as e:
        print(f"alignment {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"alignment {command}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
