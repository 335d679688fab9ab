"""Sweeps for the helpfulness-harmlessness trade-off: one PPO run per setting, then one evaluation of them all.

The trade-off between helpfulness and harmlessness shows only across several PPO runs. A sweep recipe
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
and KL. Run it as ``alignment sweep --config configs/sweep_reward_weights.yaml [--key value ...]`` (keys override
every PPO run); ``run_sweep`` is the library entry point.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import sys
from pathlib import Path
from typing import Any

from alignment import evaluate, ppo  # the stage packages' entry points
from alignment.core.config import Config, ConfigError
from alignment.core.config_parsing import bool_keys_of, layered_config, load_yaml, parse_overrides, split_config_arg
from alignment.core.run import is_done
from alignment.core.tracking import metrics_text

logger = logging.getLogger(__name__)

RECIPE_KEYS = ("ppo_config", "evaluate_config", "output_dir", "include_policies", "ppo_overrides", "grid")


def _name_part(value: Any) -> str:
    """A grid value as it appears in a point's directory name (file- and list-safe: no commas)."""
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return text.replace(",", "_")


def grid_points(grid: dict[str, list[Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of the grid as ``(name, {key: value})``; names are file- and list-safe."""
    if not grid or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("grid: give each swept key a non-empty list of values")
    points = []
    for values in itertools.product(*grid.values()):
        name = "-".join(f"{k}={_name_part(v)}" for k, v in zip(grid, values))
        points.append((name, dict(zip(grid, values))))
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


def ppo_configs(
    recipe: dict[str, Any], path: str, extra: dict[str, Any] | None = None
) -> list[tuple[str, Path, Config]]:
    """``(name, output dir, config)`` of every grid point: the PPO recipe, then ``ppo_overrides``, the point's values
    and ``extra`` (command-line keys) over it."""
    root = Path(recipe.get("output_dir") or "runs/sweep")
    shared = [(k, v, f"{path}: ppo_overrides.{k}") for k, v in (recipe.get("ppo_overrides") or {}).items()]
    flags = [(k, v, f"command line (--{k})") for k, v in (extra or {}).items()]
    points = []
    for name, values in grid_points(recipe["grid"]):
        out = root / name
        point = [(k, v, f"{path}: grid point {name}") for k, v in values.items()]
        fixed = [("output_dir", str(out), "the sweep"), ("resume", True, "the sweep")]
        points.append(
            (name, out, layered_config(ppo.CONFIG_TYPES, [recipe["ppo_config"]], shared + point + flags + fixed))
        )
    return points


def evaluation_config(recipe: dict[str, Any], names: list[str], paths: list[str]) -> Config:
    """The evaluation recipe over every policy of the sweep; the first named policy is the reference."""
    root = Path(recipe.get("output_dir") or "runs/sweep")
    overrides = [
        ("policies", paths, "the sweep"),
        ("policy_names", names, "the sweep"),
        ("output_dir", str(root / "evaluate"), "the sweep"),
        ("checkpoint_dirs", [], "the sweep"),
        ("reference_policy", names[0], "the sweep"),
    ]
    return layered_config(evaluate.CONFIG_TYPES, [recipe["evaluate_config"]], overrides)


def run_sweep(path: str, extra_argv: list[str] | None = None) -> dict[str, Any]:
    """Train every grid point (or skip finished ones), then evaluate them together; returns the evaluation metrics.

    ``extra_argv`` (``--key value`` pairs) is applied to every PPO run, e.g. ``--total_episodes 32`` for a quick sweep.
    """
    recipe = load_sweep(path)
    include = recipe.get("include_policies") or {}
    names, paths = [str(k) for k in include], [str(v) for v in include.values()]
    extra = parse_overrides(extra_argv or [], bool_keys_of(ppo.CONFIG_TYPES))
    for name, out, cfg in ppo_configs(recipe, path, extra):
        names.append(name)
        paths.append(str(out))
        if is_done(out):
            logger.info("sweep point %s: already trained in %s", name, out)
            continue
        logger.info("sweep point %s: training PPO in %s", name, out)
        ppo.train(cfg)
    return evaluate.evaluate(evaluation_config(recipe, names, paths))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``alignment sweep --config SWEEP.yaml [--key value ...]``; returns the evaluation's metrics."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(__doc__ + "\n")
        raise SystemExit(0)
    paths, rest = split_config_arg(argv)
    if len(paths) != 1:
        raise ConfigError("alignment sweep needs one --config (e.g. configs/sweep_reward_weights.yaml)")
    return run_sweep(paths[0], rest)


summary_text = metrics_text  # what ``alignment sweep`` prints when it ends
