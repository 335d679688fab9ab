"""The whole pipeline in one call: SFT -> reward model -> PPO -> evaluation, wired in one function.

A pipeline recipe has shared top-level keys (``model_name_or_path``, LoRA, quantization,
``seed``, ``output_dir``) and one section per stage (``sft:``, ``reward:``, ``ppo:``,
``evaluate:``). A shared key goes to every stage that has it; a section's keys go to its stage
only; a key given on the command line overrides the shared value everywhere
(``--model_name_or_path Qwen/Qwen2.5-0.5B-Instruct`` swaps the base model of the whole run).

Usage: ``alignment pipeline --config configs/quickstart.yaml [--config configs/models/MODEL.yaml]
[--model_name_or_path ID] [--output_dir DIR] [--key value ...]``. A second ``--config`` (a model-family recipe:
flat model keys) applies to every stage; flags override both.

Each stage writes to ``<output_dir>/<stage>``; ``run_pipeline`` alone decides which output feeds
which input (the SFT adapter is PPO's policy and reference, the reward model is PPO's reward and
critic init, and evaluation compares base, SFT and PPO). A stage whose ``DONE`` marker exists is
skipped on re-run; an unfinished one resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from alignment.core.config import (
    Config,
    ConfigError,
    bool_keys_of,
    build_config,
    load_yaml,
    parse_overrides,
    split_config_arg,
)
from alignment.core.identity import describe_changes, is_run_directory, read_identity, run_identity
from alignment.core.run import is_done, package_versions
from alignment.core.tracking import write_json_atomic

logger = logging.getLogger(__name__)

STAGES = ("sft", "reward", "ppo", "evaluate")


def _stage_module(stage: str):
    return importlib.import_module(f"alignment.{stage}")


def _stage_keys(stage: str) -> set[str]:
    return {f.name for cls in _stage_module(stage).CONFIG_TYPES for f in dataclasses.fields(cls) if f.init}


def pipeline_bool_keys() -> set[str]:
    return set().union(*(bool_keys_of(_stage_module(stage).CONFIG_TYPES) for stage in STAGES))


def split_recipe(
    data: dict[str, Any],
    lines: dict[str, int],
    path: str,
    overrides: dict[str, Any],
    override_sources: dict[str, str] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Per-stage flat values (and where each was written) from a pipeline recipe plus overrides.

    Overrides (model-recipe files, then the command line) apply to every stage that has the key,
    over the recipe's shared keys and its stage sections; ``override_sources`` says where each was written.
    """
    override_sources = override_sources or {}
    keys = {stage: _stage_keys(stage) for stage in STAGES}
    known_anywhere = set().union(*keys.values()) | {"stages"}
    values: dict[str, dict[str, Any]] = {s: {} for s in STAGES}
    where: dict[str, dict[str, str]] = {s: {} for s in STAGES}
    shared = {k: v for k, v in data.items() if k not in STAGES}
    for key, value in [*shared.items(), *overrides.items()]:
        location = (
            f"{path}:{lines.get(key, '?')}"
            if key not in overrides
            else override_sources.get(key, f"command line (--{key})")
        )
        if key not in known_anywhere:
            close = difflib.get_close_matches(key, sorted(known_anywhere), n=1)
            raise ConfigError(f"{location}: unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
        for stage in STAGES:
            if key in keys[stage]:
                values[stage][key], where[stage][key] = value, location
    for stage in STAGES:
        for key, value in (data.get(stage) or {}).items():
            if key in overrides:
                continue
            values[stage][key] = value
            where[stage][key] = f"{path}:{lines.get(f'{stage}.{key}', '?')}"
    return values, where


def wire_stage_inputs(stage: str, values: dict[str, Any], run_dir: Path, base_model: str) -> dict[str, Any]:
    """Point each stage at the outputs of the stages before it (the only place this is decided)."""
    values = dict(values)
    values["output_dir"] = str(run_dir / stage)
    values["resume"] = not values.get("overwrite", False)  # an unfinished stage of the same settings resumes
    if stage == "ppo":
        values.setdefault("sft_model_path", str(run_dir / "sft"))
        values.setdefault("reward_model_paths", [str(run_dir / "reward")])
    if stage == "evaluate":
        values.setdefault("policies", [base_model, str(run_dir / "sft"), str(run_dir / "ppo")])
        values.setdefault("policy_names", ["base", "sft", "ppo"])
        values.setdefault("reward_model_paths", [str(run_dir / "reward")])
        values.setdefault("reference_policy", "sft")  # PPO's own reference: KL and win rates against it
    return values


def load_pipeline(path: str | list[str], overrides: dict[str, Any]) -> tuple[dict[str, Config], Path, list[str]]:
    """``path``: the pipeline recipe, or it followed by model-family recipes (flat keys for every stage)."""
    path, *model_recipes = [path] if isinstance(path, str) else path
    data, lines = load_yaml(path)
    layered, sources = {}, {}
    for recipe in model_recipes:
        recipe_data, recipe_lines = load_yaml(recipe)
        for key, value in recipe_data.items():
            if key in STAGES or key == "stages":
                raise ConfigError(
                    f"{recipe}:{recipe_lines.get(key, '?')}: '{key}' sections belong in the first --config"
                )
            layered[key], sources[key] = value, f"{recipe}:{recipe_lines.get(key, '?')}"
    for key in overrides:
        sources.pop(key, None)
    overrides = {**layered, **overrides}
    values, where = split_recipe(data, lines, path, overrides, sources)
    run_dir = Path(overrides.get("output_dir") or data.get("output_dir") or "runs/pipeline")
    stages = _stage_list(overrides.get("stages") or data.get("stages") or list(STAGES))
    base_model = str(overrides.get("model_name_or_path") or data.get("model_name_or_path") or "smollm2-135m-instruct")
    configs = {}
    for stage in stages:
        wired = wire_stage_inputs(stage, values[stage], run_dir, base_model)
        configs[stage] = build_config(_stage_module(stage).CONFIG_TYPES, wired, where[stage])
    return configs, run_dir, stages


def run_pipeline(path: str | list[str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) every stage of the recipe at ``path``; returns a summary of each stage's metrics.

    A stage whose directory holds a finished run of the same identity (settings and inputs, see
    :mod:`alignment.core.identity`) is skipped; one whose settings or inputs changed is run again from the start,
    and with it every stage downstream (their inputs changed); an unfinished one of the same identity resumes.
    """
    configs, run_dir, stages = load_pipeline(path, overrides or {})
    _check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "versions.json", package_versions())
    summary: dict[str, Any] = {"run_dir": str(run_dir), "stages": {}}
    planned: dict[str, str] = {}  # stage output dir -> the fingerprint its run will have
    for stage in stages:
        cfg = configs[stage]
        output_dir = Path(cfg.train.output_dir)
        identity = run_identity(cfg, planned)
        planned[str(output_dir)] = identity["fingerprint"]
        recorded = read_identity(output_dir)
        same = recorded is not None and recorded["fingerprint"] == identity["fingerprint"]
        if is_done(output_dir) and same:
            logger.info("%s: already complete in %s, skipped", stage, output_dir)
            summary["stages"][stage] = _stage_summary("skipped (already complete)", 0.0, output_dir)
            write_json_atomic(run_dir / "summary.json", summary)
            continue
        status = "ran"
        if output_dir.is_dir() and any(output_dir.iterdir()) and not same and is_run_directory(output_dir):
            changes = describe_changes(recorded, identity) if recorded else "written by an earlier version"
            logger.warning("%s: settings or inputs changed since its last run (%s): running it again", stage, changes)
            cfg.train.overwrite, status = True, "ran (settings changed)"
        logger.info("%s: starting in %s", stage, output_dir)
        start = time.perf_counter()
        module = _stage_module(stage)
        metrics = (module.evaluate if stage == "evaluate" else module.train)(cfg)
        summary["stages"][stage] = _stage_summary(status, time.perf_counter() - start, output_dir, metrics)
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _stage_summary(status: str, seconds: float, output_dir: Path, metrics: dict | None = None) -> dict[str, Any]:
    metrics = _read_metrics(output_dir) if metrics is None else metrics
    return {"status": status, "seconds": round(seconds, 1), "output_dir": str(output_dir), "metrics": metrics}


def _stage_list(value: Any) -> list[str]:
    """``stages`` from a recipe (a list) or the command line (``sft,reward``), checked against the known stages."""
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s) for s in value]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise ConfigError(f"stages: unknown {unknown or names}; choose from {', '.join(STAGES)}")
    return names


def _check_run_dir(run_dir: Path) -> None:
    """A pipeline's output_dir is empty, new, or an earlier pipeline run: never someone else's folder."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if (run_dir / "versions.json").is_file() or any((run_dir / s).is_dir() for s in STAGES):
        return
    raise ConfigError(
        f"output_dir {run_dir} is not empty and is not a pipeline run directory: refusing to write there. "
        "Choose a new or empty --output_dir."
    )


def _read_metrics(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def parse_arguments(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """(the ``--config`` files in order, the command-line overrides); ``--help`` prints the usage and exits."""
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(__doc__ + "\n")
        raise SystemExit(0)
    paths, rest = split_config_arg(argv)
    if not paths:
        raise ConfigError("alignment pipeline needs --config (e.g. configs/quickstart.yaml)")
    return paths, parse_overrides(rest, pipeline_bool_keys())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``alignment pipeline``: run (or resume) every stage of the recipe; returns the summary."""
    paths, overrides = parse_arguments(list(sys.argv[1:] if argv is None else argv))
    return run_pipeline(paths, overrides)


SUMMARY_KEYS = {
    "sft": ("eval_loss_before", "eval_loss", "train_tokens_per_second"),
    "reward": ("eval_accuracy", "eval_accuracy_ci_low", "eval_accuracy_ci_high", "num_pairs"),
    "ppo": ("heldout_reward_before", "heldout_reward_after", "kl_last", "episodes_per_second"),
    "evaluate": ("report",),
}


def summary_text(summary: dict[str, Any]) -> str:
    """A line per stage: ran or skipped, seconds, its headline metrics; then where the report is."""
    lines = ["", "=" * 72, f"pipeline finished: {summary['run_dir']}"]
    for stage, info in summary["stages"].items():
        metrics = info["metrics"]
        shown = ", ".join(
            f"{k}={metrics[k]:.4g}" if isinstance(metrics.get(k), float) else f"{k}={metrics.get(k)}"
            for k in SUMMARY_KEYS.get(stage, ())
            if k in metrics
        )
        lines.append(f"  {stage:<9} {info['status']:<26} {info['seconds']:>7.1f}s  {shown}")
    report = summary["stages"].get("evaluate", {}).get("output_dir")
    if report:
        lines.append(f"\nreport: {report}/report.md  (plots: tradeoff.png, refusals.png)")
    lines.append("=" * 72)
    return "\n".join(lines)
