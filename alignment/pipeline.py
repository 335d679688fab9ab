"""The whole pipeline in one call: SFT -> reward model -> PPO -> evaluation, wired in one function.

A pipeline recipe has shared top-level keys (``model_name_or_path``, LoRA, quantization,
``seed``, ``output_dir``) and one section per stage (``sft:``, ``reward:``, ``ppo:``,
``evaluate:``). A shared key goes to every stage that has it; a section's keys go to its stage
only; a key given on the command line overrides the shared value everywhere
(``--model_name_or_path Qwen/Qwen2.5-0.5B-Instruct`` swaps the base model of the whole run).

Usage: ``alignment pipeline --config configs/quickstart.yaml [--config configs/models/MODEL.yaml]
[--model_name_or_path ID] [--output_dir DIR] [--key value ...]``. A second ``--config`` (a model-family recipe:
flat model keys) applies to every stage; flags override both.

A stage kind can run several times under names: a section called ``<kind>_<name>`` (``reward_harmless``,
``ppo_lagrangian``), or any name with a ``stage: <kind>`` key (``gold_helpful: {stage: reward, ...}``), is one more
stage of that kind. In a recipe with named stages they run in the order of their sections unless ``stages`` lists
them. Each named stage keeps its own directory, settings and resume.

Each stage writes to ``<output_dir>/<stage name>``; ``run_pipeline`` alone decides which output feeds which input.
By default the SFT adapter (the last SFT stage's, where a recipe has several: a second SFT stage, say ``sft_safety``
with ``model_name_or_path: sft``, trains on top of the first) is every PPO run's policy and reference, the first
reward stage is PPO's reward (and critic init), and evaluation compares the base model, every SFT stage and every
PPO stage against the last SFT stage, scored by every reward stage. In a
path-valued key (``sft_model_path``, ``reward_model_paths``, ``cost_model_path``, ``policies``, ...) a value naming a
stage of the recipe means that stage's output directory: ``reward_model_paths: [reward_helpful, reward_harmless]``,
and a path under a stage's name a folder inside it: ``checkpoint_dirs: [ppo_helpful/snapshots/step-4]``.
A stage whose ``DONE`` marker exists is skipped on re-run; an unfinished one resumes from its newest checkpoint.
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

from alignment.core.config import Config, ConfigError, LoraConfig, ModelConfig, QuantConfig
from alignment.core.config_parsing import bool_keys_of, build_config, load_yaml, parse_overrides, split_config_arg
from alignment.core.identity import describe_changes, is_run_directory, read_identity, run_identity, stage_kind
from alignment.core.peak_memory import peak_memory_mib, reset_peak_memory
from alignment.core.run import is_done, package_versions
from alignment.core.tracking import write_json_atomic

logger = logging.getLogger(__name__)

STAGES = ("sft", "reward", "dpo", "ppo", "evaluate")  # the stage kinds, in their natural order
DEFAULT_STAGES = ("sft", "reward", "ppo", "evaluate")  # what a recipe without named sections runs
POLICY_KINDS = ("ppo", "dpo")  # stages whose output is a policy that evaluation compares by default
# Keys whose values are paths: a value equal to a stage name of the recipe becomes that stage's output directory.
STAGE_REFERENCE_KEYS = (
    "model_name_or_path",
    "sft_model_path",
    "reward_model_paths",
    "cost_model_path",
    "policies",
    "checkpoint_dirs",
)


def _stage_module(stage: str):
    return importlib.import_module(f"alignment.{stage}")


def _stage_keys(stage: str) -> set[str]:
    return {f.name for cls in _stage_module(stage).CONFIG_TYPES for f in dataclasses.fields(cls) if f.init}


def pipeline_bool_keys() -> set[str]:
    return set().union(*(bool_keys_of(_stage_module(stage).CONFIG_TYPES) for stage in STAGES))


def stage_sections(data: dict[str, Any], path: str, lines: dict[str, int]) -> dict[str, str]:
    """``{section name: stage kind}`` for every stage section of a recipe, in file order.

    A section is a mapping under a kind's name (``ppo:``), under ``<kind>_<name>`` (``ppo_lagrangian:``), or under
    any name with a ``stage: <kind>`` key (``gold_helpful: {stage: reward}``).
    """
    sections: dict[str, str] = {}
    for name, value in data.items():
        explicit = value.get("stage") if isinstance(value, dict) else None
        prefix = name.split("_", 1)[0]
        if explicit is not None:
            if explicit not in STAGES:
                raise ConfigError(
                    f"{path}:{lines.get(f'{name}.stage', '?')}: stage {explicit!r} is not a stage kind; "
                    f"choose from {', '.join(STAGES)}"
                )
            sections[name] = explicit
        elif name in STAGES or (isinstance(value, dict) and prefix in STAGES and name != prefix):
            sections[name] = name if name in STAGES else prefix
    return sections


def split_recipe(
    data: dict[str, Any],
    lines: dict[str, int],
    path: str,
    overrides: dict[str, Any],
    override_sources: dict[str, str] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Per-stage flat values (and where each was written) from a pipeline recipe plus overrides, keyed by stage name.

    Overrides (model-recipe files, then the command line) apply to every stage that has the key,
    over the recipe's shared keys and its stage sections; ``override_sources`` says where each was written. The one
    exception: a section that names its own ``model_name_or_path`` (a reward model on another base) keeps its model,
    so model-family overrides (the model, LoRA and quantization keys) do not reach it: swapping the policy's base
    leaves such a reward model as it is.
    Every stage kind gets an entry under its own name, so ``stages: [ppo]`` works without a ``ppo:`` section.
    """
    override_sources = override_sources or {}
    sections = {**{kind: kind for kind in STAGES}, **stage_sections(data, path, lines)}
    keys = {kind: _stage_keys(kind) for kind in STAGES}
    known_anywhere = set().union(*keys.values()) | {"stages"}
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}
    where: dict[str, dict[str, str]] = {name: {} for name in sections}
    shared = {k: v for k, v in data.items() if k not in sections}
    for key, value in [*shared.items(), *overrides.items()]:
        location = (
            f"{path}:{lines.get(key, '?')}"
            if key not in overrides
            else override_sources.get(key, f"command line (--{key})")
        )
        if key not in known_anywhere:
            close = difflib.get_close_matches(key, sorted(known_anywhere), n=1)
            raise ConfigError(f"{location}: unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
        for name, kind in sections.items():
            if key in keys[kind] and not (key in overrides and _keeps_own_model(data.get(name), key, sections)):
                values[name][key], where[name][key] = value, location
    for name in sections:
        for key, value in (data.get(name) or {}).items():
            if (key in overrides and not _keeps_own_model(data.get(name), key, sections)) or key == "stage":
                continue
            values[name][key] = value
            where[name][key] = f"{path}:{lines.get(f'{name}.{key}', '?')}"
    return values, where


MODEL_FAMILY_KEYS = frozenset(f.name for cls in (ModelConfig, LoraConfig, QuantConfig) for f in dataclasses.fields(cls))


def _keeps_own_model(section: Any, key: str, stage_names: Any = ()) -> bool:
    """A section with its own ``model_name_or_path`` keeps its model-family settings against overrides. A model that
    is a stage of the recipe (``model_name_or_path: sft``, a reward model initialised from SFT) is of the swapped
    family: such a section keeps only the reference, and takes the other model-family overrides."""
    if not (isinstance(section, dict) and "model_name_or_path" in section and key in MODEL_FAMILY_KEYS):
        return False
    return key == "model_name_or_path" or section["model_name_or_path"] not in stage_names


def wire_stage_inputs(
    name: str, kind: str, values: dict[str, Any], run_dir: Path, base_model: str, kinds: dict[str, str]
) -> dict[str, Any]:
    """Point stage ``name`` (of ``kind``) at the outputs of the others (the only place this is decided).

    ``kinds``: every stage of the recipe, ``{name: kind}`` in order. Stage names in path-valued keys become
    their output directories; unset inputs get the defaults the module docstring lists.
    """
    values = dict(values)
    values["output_dir"] = str(run_dir / name)
    values["resume"] = not values.get("overwrite", False)  # an unfinished stage of the same settings resumes
    rewards = [n for n, k in kinds.items() if k == "reward"] or ["reward"]
    sfts = [n for n, k in kinds.items() if k == "sft"] or ["sft"]  # several: each starts from the one before
    if kind == "ppo":
        values.setdefault("sft_model_path", sfts[-1])
        values.setdefault("reward_model_paths", rewards[:1])
    if kind == "evaluate":
        trained = [n for n, k in kinds.items() if k in POLICY_KINDS] or ["ppo"]
        if "policies" not in values:
            values["policies"] = [base_model, *sfts, *trained]
            values.setdefault("policy_names", ["base", *sfts, *trained])
        values.setdefault("reference_policy", sfts[-1])  # PPO's own reference: KL and win rates against it
        values.setdefault("reward_model_paths", rewards)
    known = set(kinds) | set(STAGES)  # the defaults above may name a kind the recipe has no section for

    def resolve(value: Any) -> Any:
        """``reward_a`` -> its output dir; ``ppo_a/snapshots/step-4`` -> a folder inside it."""
        if isinstance(value, str) and value.split("/", 1)[0] in known:
            return str(run_dir / value)
        return value

    for key in STAGE_REFERENCE_KEYS:  # model_name_or_path: sft, say, for a reward model initialised from SFT
        if key in values:
            value = values[key]
            values[key] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
    return values


def load_pipeline(path: str | list[str], overrides: dict[str, Any]) -> tuple[dict[str, Config], Path, list[str]]:
    """``path``: the pipeline recipe, or it followed by model-family recipes (flat keys for every stage)."""
    path, *model_recipes = [path] if isinstance(path, str) else path
    data, lines = load_yaml(path)
    layered, sources = {}, {}
    for recipe in model_recipes:
        recipe_data, recipe_lines = load_yaml(recipe)
        for key, value in recipe_data.items():
            if key in STAGES or isinstance(value, dict) or key == "stages":
                raise ConfigError(
                    f"{recipe}:{recipe_lines.get(key, '?')}: '{key}' sections belong in the first --config"
                )
            layered[key], sources[key] = value, f"{recipe}:{recipe_lines.get(key, '?')}"
    for key in overrides:
        sources.pop(key, None)
    overrides = {**layered, **overrides}
    values, where = split_recipe(data, lines, path, overrides, sources)
    run_dir = Path(overrides.get("output_dir") or data.get("output_dir") or "runs/pipeline")
    sections = stage_sections(data, path, lines)
    # The recipe's stages, {name: kind} in order: its sections when it names any, else the four kinds.
    recipe = sections if any(name not in DEFAULT_STAGES for name in sections) else {k: k for k in DEFAULT_STAGES}
    known = {**{kind: kind for kind in STAGES}, **sections}
    stages = _stage_list(overrides.get("stages") or data.get("stages") or list(recipe), known)
    # Wiring sees every stage of the recipe, run now or not: `--stages ppo_b,evaluate` still finds reward_a's output.
    kinds = {**recipe, **{name: known[name] for name in stages}}
    base_model = str(overrides.get("model_name_or_path") or data.get("model_name_or_path") or "smollm2-135m-instruct")
    configs = {}
    for stage in stages:
        wired = wire_stage_inputs(stage, kinds[stage], values[stage], run_dir, base_model, kinds)
        configs[stage] = build_config(_stage_module(kinds[stage]).CONFIG_TYPES, wired, where[stage])
    return configs, run_dir, stages


def run_pipeline(path: str | list[str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) every stage of the recipe at ``path``; returns a summary of each stage's metrics.

    A stage whose directory holds a finished run of the same identity (settings and inputs, see
    :mod:`alignment.core.identity`) is skipped; one whose settings or inputs changed is run again from the start,
    and with it every stage downstream (their inputs changed); an unfinished one of the same identity resumes.
    """
    configs, run_dir, stages = load_pipeline(path, overrides or {})
    _check_run_dir(run_dir, stages)
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
            summary["stages"][stage] = _stage_summary(
                "skipped (already complete)", 0.0, output_dir, kind=stage_kind(cfg)
            )
            write_json_atomic(run_dir / "summary.json", summary)
            continue
        status = "ran"
        if output_dir.is_dir() and any(output_dir.iterdir()) and not same and is_run_directory(output_dir):
            changes = describe_changes(recorded, identity) if recorded else "written by an earlier version"
            logger.warning("%s: settings or inputs changed since its last run (%s): running it again", stage, changes)
            cfg.train.overwrite, status = True, "ran (settings changed)"
        logger.info("%s: starting in %s", stage, output_dir)
        start = time.perf_counter()
        kind = stage_kind(cfg)
        module = _stage_module(kind)
        reset_peak_memory()  # each stage's own peak, not the process's (the stages share this process)
        metrics = (module.evaluate if kind == "evaluate" else module.train)(cfg)
        summary["stages"][stage] = _stage_summary(status, time.perf_counter() - start, output_dir, metrics, kind)
        summary["stages"][stage].update(peak_memory_mib())
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _stage_summary(
    status: str, seconds: float, output_dir: Path, metrics: dict | None = None, kind: str | None = None
) -> dict[str, Any]:
    metrics = _read_metrics(output_dir) if metrics is None else metrics
    summary = {"status": status, "seconds": round(seconds, 1), "output_dir": str(output_dir), "metrics": metrics}
    return {**summary, "kind": kind} if kind else summary


def _stage_list(value: Any, known: dict[str, str]) -> list[str]:
    """``stages`` from a recipe (a list) or the command line (``sft,reward``), checked against the recipe's stages."""
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s) for s in value]
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        raise ConfigError(f"stages: unknown {unknown or names}; choose from {', '.join(known)}")
    return names


def _check_run_dir(run_dir: Path, stages: list[str]) -> None:
    """A pipeline's output_dir is empty, new, or an earlier pipeline run: never someone else's folder."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    if (run_dir / "versions.json").is_file() or any((run_dir / s).is_dir() for s in [*STAGES, *stages]):
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
    "dpo": ("eval_accuracy", "eval_loss", "pairs_per_second"),
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
            for k in SUMMARY_KEYS.get(info.get("kind", stage), ())
            if k in metrics
        )
        lines.append(f"  {stage:<16} {info['status']:<26} {info['seconds']:>7.1f}s  {shown}")
    report = next(
        (info["output_dir"] for info in summary["stages"].values() if info.get("kind", "") == "evaluate"), None
    )
    if report:
        lines.append(f"\nreport: {report}/report.md  (plots: tradeoff.png, refusals.png)")
    lines.append("=" * 72)
    return "\n".join(lines)
