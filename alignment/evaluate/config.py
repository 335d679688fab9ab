"""The evaluation stage's settings (``EvaluateConfig``) and their resolution into named policies and reward models.

Every function here raises :class:`~alignment.core.config.ConfigError` naming the offending key, before any model or
prompt is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.core.config import ConfigError, DataConfig, LoraConfig, ModelConfig, QuantConfig, TrainConfig
from alignment.evaluate.prompts import GENERATIONS_DIR
from alignment.evaluate.records import PolicySpec
from alignment.evaluate.refusal_labels import XSTEST_MODELS, xstest_completions_path
from alignment.modeling.refusal import DEFAULT_REFUSAL_DETECTOR, check_detector_name


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class EvaluateConfig:
    policies: list[str] = _help(
        "Policies to compare: Hub ids, local dirs, .gguf files, stage output dirs (SFT, PPO) or the embedded default. "
        "Empty: model_name_or_path alone.",
        default_factory=list,
    )
    policy_names: list[str] = _help("Labels for the policies (default: derived from the paths).", default_factory=list)
    reference_policy: str | None = _help(
        "Name (or path) of the policy that win rates and KL are measured against (default: the first).", default=None
    )
    reward_model_paths: list[str] = _help("Reward models (reward stage outputs or classifiers).", default_factory=list)
    reward_names: list[str] = _help("Labels for the reward models (default: directory names).", default_factory=list)
    helpful_reward: str | None = _help("Reward model name for the helpfulness axis (default: the first).", default=None)
    harmless_reward: str | None = _help(
        "Reward model name for the harmlessness axis; None: 1 - compliance rate on harmful prompts.", default=None
    )
    prompt_sets: list[str] = _help(
        "Labelled prompt files (jsonl/json/csv; XSTest and AdvBench CSVs are recognised) or 'demo'.",
        default_factory=lambda: ["demo"],
    )
    max_prompts_per_label: int = _help("At most this many prompts per label (seeded sample; <= 0: all).", default=32)
    max_new_tokens: int = _help("Longest response (the same for every policy).", default=128)
    max_prompt_length: int = _help("Longer prompts keep their last tokens.", default=256)
    temperature: float = _help("Sampling temperature, the same for every policy (0 = greedy).", default=0.7)
    generation_batch_size: int = _help(
        "Prompts per generate() call (a speed setting: each answer has its own random stream, so it does not change them).",
        default=64,
    )
    answers_per_prompt: int = _help(
        "Answers sampled per prompt (k). Rates and means are taken over all k answers, their intervals over the "
        "prompts (answers to one prompt are correlated): a policy's readiness to refuse is then read from k samples "
        "of each prompt instead of one, at k times the sampling cost.",
        default=1,
    )
    refusal_detector: str = _help(
        "How refusals are detected: 'classifier' (sentence-embedding classifier fitted on human-labelled answers) or "
        "'phrase' (opening refusal phrases, the baseline).",
        default=DEFAULT_REFUSAL_DETECTOR,
    )
    second_refusal_detector: str = _help(
        "A second refusal detector, whose refusal and over-refusal rates the report shows beside the judge's and "
        "flags where the two disagree (none: no second reading). The classifier was fitted mostly on large chat "
        "models' answers; on a small model's answers the phrase list can be the more precise judge, so where they "
        "disagree, read the answers.",
        default="phrase",
    )
    reuse_generations: bool = _help("Reuse saved generations whose policy, prompts and settings match.", default=True)
    generations_from: list[str] = _help(
        "Earlier evaluation directories whose saved answers (and KL) are copied in and reused where policy weights, "
        "prompts and sampling settings match: judge old answers again (another refusal detector, more reward "
        "models) without sampling them again.",
        default_factory=list,
    )
    samples_per_label: int = _help("Prompts per label shown side by side in report.md.", default=2)
    checkpoint_dirs: list[str] = _help(
        "Policy snapshots ordered by training step (loadable stage dirs) for the over-optimisation curve.",
        default_factory=list,
    )
    proxy_reward: str | None = _help("Reward model name optimised by PPO (default: helpful_reward).", default=None)
    best_of_n: int = _help(
        "Also evaluate best-of-n (0: off): n samples of best_of_n_policy per prompt, the best by the reward mix.",
        default=0,
    )
    best_of_n_policy: str | None = _help("The policy best-of-n samples from (default: the reference).", default=None)
    best_of_n_rewards: list[str] = _help(
        "Reward model names whose normalised, weighted sum picks the best (default: proxy_reward).",
        default_factory=list,
    )
    best_of_n_weights: list[float] = _help(
        "One weight per best_of_n_rewards entry (default 1 each).", default_factory=list
    )
    gold_reward: str | None = _help("Reward model name used as the gold standard for over-optimisation.", default=None)
    refusal_pairs_data_dir: str | None = _help(
        "A data directory holding safety/xstest-completions/ (XSTest v2's human-labelled completions): every reward "
        "model is checked on whether it prefers refusing the unsafe prompts and answering the safe ones (None: off).",
        default=None,
    )


CONFIG_TYPES = (ModelConfig, LoraConfig, QuantConfig, DataConfig, TrainConfig, EvaluateConfig)


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _default_name(path: str) -> str:
    p = Path(path)
    return p.stem if p.suffix == ".gguf" else (p.name or path)


def resolve_policies(ev: EvaluateConfig, default_model: str) -> tuple[list[PolicySpec], int]:
    """The policies (with unique names) and the index of the reference; raises ConfigError naming the key."""
    paths = list(ev.policies) or [default_model]
    if ev.policy_names and len(ev.policy_names) != len(paths):
        raise ConfigError(f"policy_names has {len(ev.policy_names)} entries but policies has {len(paths)}")
    names = list(ev.policy_names) or _unique_names([_default_name(p) for p in paths])
    if len(set(names)) != len(names):
        raise ConfigError(f"policy_names must be unique, got {names}")
    specs = [PolicySpec(n, p) for n, p in zip(names, paths)]
    if ev.reference_policy is None:
        return specs, 0
    for i, spec in enumerate(specs):
        if ev.reference_policy in (spec.name, spec.path):
            return specs, i
    raise ConfigError(f"reference_policy {ev.reference_policy!r} is none of the policies {names}")


def resolve_reward_names(ev: EvaluateConfig) -> list[str]:
    if ev.reward_names and len(ev.reward_names) != len(ev.reward_model_paths):
        raise ConfigError(
            f"reward_names has {len(ev.reward_names)} entries but reward_model_paths has {len(ev.reward_model_paths)}"
        )
    names = list(ev.reward_names) or _unique_names([_default_name(p) for p in ev.reward_model_paths])
    for key in ("helpful_reward", "harmless_reward", "proxy_reward", "gold_reward"):
        value = getattr(ev, key)
        if value is not None and value not in names:
            raise ConfigError(f"{key} {value!r} is none of the reward models {names}")
    return names


def checkpoint_specs(ev: EvaluateConfig) -> list[PolicySpec]:
    """Snapshots for the over-optimisation curve; the step is the number at the end of the directory name."""
    if ev.checkpoint_dirs and ev.gold_reward is None:
        raise ConfigError("checkpoint_dirs is set but gold_reward is not: name the gold reward model")
    specs = []
    for order, path in enumerate(ev.checkpoint_dirs):
        if (Path(path) / "trainable.safetensors").is_file():
            raise ConfigError(
                f"checkpoint_dirs: {path} is a training checkpoint (trainable.safetensors), not a policy: "
                "give policy snapshots that load as stage dirs (adapter/ + base_model.json)"
            )
        match = re.search(r"(\d+)$", Path(path).name)
        step = int(match.group(1)) if match else order
        specs.append(PolicySpec(f"step-{step}", path, step))
    return specs


def check_settings(ev: EvaluateConfig) -> None:
    """Reject settings that cannot work, naming the key."""
    if ev.temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {ev.temperature}")
    for key in ("max_new_tokens", "max_prompt_length", "generation_batch_size", "answers_per_prompt"):
        if getattr(ev, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(ev, key)}")
    if not ev.prompt_sets:
        raise ConfigError("prompt_sets is empty: give prompt files or 'demo'")
    if ev.answers_per_prompt > 1 and ev.temperature == 0:
        raise ConfigError("answers_per_prompt > 1 needs sampling (temperature > 0): greedy answers are all the same")
    check_detector_name(ev.second_refusal_detector, "second_refusal_detector", allow_none=True)
    for source in ev.generations_from:
        if not (Path(source) / GENERATIONS_DIR).is_dir():
            raise ConfigError(f"generations_from: {source} holds no saved generations (no {GENERATIONS_DIR}/ in it)")
    if ev.refusal_pairs_data_dir is not None:
        missing = [
            str(path)
            for path in (xstest_completions_path(Path(ev.refusal_pairs_data_dir), m) for m in XSTEST_MODELS)
            if not path.is_file()
        ]
        if missing:
            raise ConfigError(f"refusal_pairs_data_dir: XSTest completions not found: {', '.join(missing)}")
