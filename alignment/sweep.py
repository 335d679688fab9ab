"""Sweeps for the helpfulness-harmlessness trade-off: one PPO run per setting, then one evaluation of them all.

DESIGN.md section 4 item 5: nobody ships a Pareto plot across reward-mix / beta / lambda sweeps. A sweep recipe
names a PPO recipe, an evaluation recipe and a grid of PPO keys; every grid point trains into
``<output_dir>/<point>`` (skipped when its ``DONE`` exists, resumed otherwise), then the evaluation stage compares
the extra policies (e.g. the SFT start) and every point on the same prompts, so ``tradeoff.png`` shows one point per
setting with the Pareto front. Recipe shape (see ``configs/sweep_reward_weights.yaml``)::

    ppo_config: configs/ppo.yaml
    evaluate_config: configs/evaluate.yaml
    output_dir: runs/sweep
    include_policies: {sft: runs/sft}      # evaluated alongside; the first is the reference
    ppo_overrides: {reward_model_paths: [runs/rm_helpful, runs/rm_harmless]}   # every PPO run
    grid: {reward_weights: [[1.0, 0.0], [0.5, 0.5]], kl_coef: [0.05]}

The first policy evaluated (an ``include_policies`` entry, else the first grid point) is the reference of win rates
and KL. ``run_sweep`` is the library entry point; a stage script and a CLI command for it are still to be added.
"""

from __future__ import annotations

import difflib
import itertools
import logging
from pathlib import Path
from typing import Any

from alignment.core.config import ConfigError, load_yaml, parse_config
from alignment.core.run import is_done

logger = logging.getLogger(__name__)

RECIPE_KEYS = ("ppo_config", "evaluate_config", "output_dir", "include_policies", "ppo_overrides", "grid")


def _cli_value(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def grid_points(grid: dict[str, list[Any]]) -> list[tuple[str, list[str]]]:
    """Every combination of the grid as ``(name, ["--key", "value", ...])``; names are file- and list-safe."""
    if not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("grid: give each swept key a non-empty list of values")
    points = []
    for values in itertools.product(*grid.values()):
        name = "-".join(f"{k}={_cli_value(v).replace(',', '_')}" for k, v in zip(grid, values))
        argv = [token for k, v in zip(grid, values) for token in (f"--{k}", _cli_value(v))]
        points.append((name, argv))
    return points


def load_sweep(path: str) -> dict[str, Any]:
    data, lines = load_yaml(path)
    for key in data:
        if key not in RECIPE_KEYS:
            close = difflib.get_close_matches(key, RECIPE_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(RECIPE_KEYS)})"
            raise ConfigError(f"{path}:{lines.get(key, '?')}: unknown key '{key}'{hint}")
    for key in ("ppo_config", "evaluate_config", "grid"):
        if key not in data:
            raise ConfigError(f"{path}: '{key}' is missing")
    return data


def run_sweep(path: str, extra_argv: list[str] | None = None) -> dict[str, Any]:
    """Train every grid point (or skip finished ones), then evaluate them together; returns the evaluation metrics.

    ``extra_argv`` (``--key value`` pairs) is applied to every PPO run, e.g. ``--total_episodes 32`` for a quick sweep.
    """
    from alignment import evaluate, ppo  # the stage packages' entry points

    recipe = load_sweep(path)
    root = Path(recipe.get("output_dir") or "runs/sweep")
    include = recipe.get("include_policies") or {}
    names, paths = [str(k) for k in include], [str(v) for v in include.values()]
    shared = [token for k, v in (recipe.get("ppo_overrides") or {}).items() for token in (f"--{k}", _cli_value(v))]
    for name, argv in grid_points(recipe["grid"]):
        out = root / name
        names.append(name)
        paths.append(str(out))
        if is_done(out):
            logger.info("sweep point %s: already trained in %s", name, out)
            continue
        logger.info("sweep point %s: training PPO in %s", name, out)
        argv = ["--config", recipe["ppo_config"], *shared, *argv, *(extra_argv or [])]
        ppo.train(parse_config(ppo.CONFIG_TYPES, [*argv, "--output_dir", str(out), "--resume", "true"]))
    eval_argv = [
        "--config",
        recipe["evaluate_config"],
        "--policies",
        ",".join(paths),
        "--policy_names",
        ",".join(names),
    ]
    eval_argv += ["--output_dir", str(root / "evaluate"), "--checkpoint_dirs", "", "--reference_policy", names[0]]
    return evaluate.evaluate(parse_config(evaluate.CONFIG_TYPES, eval_argv))
