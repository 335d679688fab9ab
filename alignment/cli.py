"""``alignment <command> [--config recipe.yaml] [--key value ...]``: the one entry point.

Each command is a library module with ``main(argv) -> result`` (parse the config, run, return what it
produced) and ``summary_text(result) -> str`` (what the user reads when it ends). This module imports the
command's module, runs it, prints the summary and turns user-facing errors into one line with exit code 2.
``python stages/<command>.py ...`` calls :func:`run_command` too, so both ways behave the same.
"""

from __future__ import annotations

import importlib
import os
import sys

from alignment.core.config import ConfigError
from alignment.core.tracking import close_progress_bars
from data_schemas.errors import RecordError

# command -> (library module with main() and summary_text(), one-line description)
COMMANDS = {
    "sft": ("alignment.sft", "supervised fine-tuning on demonstrations"),
    "reward": ("alignment.reward", "train (or --eval_only evaluate) a pairwise reward model"),
    "dpo": ("alignment.dpo", "direct preference optimisation of the SFT policy on comparisons (offline)"),
    "ppo": ("alignment.ppo", "optimise the SFT policy against reward models with a KL penalty (or RLOO, GRPO)"),
    "evaluate": ("alignment.evaluate", "helpfulness / harmlessness report for several policies"),
    "pipeline": ("alignment.pipeline", "run SFT -> reward -> PPO -> evaluate in one command"),
    "sweep": ("alignment.sweep", "PPO over a grid of reward weights or KL coefficients, evaluated together"),
    "data": ("alignment.inspect_data", "inspect a dataset before training (`alignment data inspect SOURCE`)"),
}
STAGES = {name: description for name, (_, description) in COMMANDS.items()}


def usage() -> str:
    lines = ["usage: alignment <command> [--config recipe.yaml] [--key value ...]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in STAGES.items()]
    lines += ["", "`alignment <command> --help` lists every option of a command; --debug shows tracebacks."]
    return "\n".join(lines)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_command(command: str, argv: list[str]) -> int:
    """Run one command; returns the process exit code.

    0: done. 2: bad input (a setting, a record, a path, a model that cannot be found), said in one line.
    1: the run failed (e.g. training diverged), said in one line; ``--debug`` or ``ALIGNMENT_DEBUG=1`` shows the
    traceback instead. 130: interrupted (a checkpoint was saved where the stage could).
    """
    debug = "--debug" in argv or os.environ.get("ALIGNMENT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    module = importlib.import_module(COMMANDS[command][0])
    try:
        result = module.main(argv)
    except KeyboardInterrupt as e:
        close_progress_bars()
        print(f"alignment {command}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except (ConfigError, RecordError, OSError) as e:  # OSError: files and models that cannot be found or read
        if debug:
            raise
        close_progress_bars()
        print(f"alignment {command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        close_progress_bars()
        print(
            f"alignment {command}: error: {type(e).__name__}: {one_line(e)} (ALIGNMENT_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    text = module.summary_text(result)
    if text:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"alignment: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_command(command, rest)


if __name__ == "__main__":
    sys.exit(main())
