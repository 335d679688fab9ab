"""Evaluation stage: helpfulness vs harmlessness of several policies, with confidence intervals and plots.

The stage resolves and checks the settings (:func:`plan_evaluation`) before writing anything, then runs every policy
on the same labelled prompts, scores the responses with each reward model, aggregates and writes ``results.json``,
``report.md`` and the plots (:func:`run_evaluation`). The work is split by job:

- :mod:`alignment.evaluate.config`: the settings and their resolution into named policies and reward models;
- :mod:`alignment.evaluate.prompts`: the prompt sets and the saved generations reused across runs;
- :mod:`alignment.evaluate.generate`: loading, sampling, the KL to the reference and reward scoring;
- :mod:`alignment.evaluate.metrics`: what is measured, from the outputs alone, with no model;
- :mod:`alignment.evaluate.report`: Markdown and PNGs from the aggregated results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignment.core.config import Config, ConfigError
from alignment.core.config_parsing import parse_config
from alignment.core.tracking import write_json_atomic
from alignment.evaluate.best_of_n import best_of_n_outputs, check_best_of_n
from alignment.evaluate.config import (
    CONFIG_TYPES,
    check_settings,
    checkpoint_specs,
    resolve_policies,
    resolve_reward_names,
)
from alignment.evaluate.generate import collect_outputs, score_outputs
from alignment.evaluate.metrics import aggregate, finite, headline_metrics, overoptimization_curve
from alignment.evaluate.prompts import GENERATIONS_DIR, load_prompt_sets, sampling_settings
from alignment.evaluate.records import PolicySpec
from alignment.evaluate.refusal_pairs import refusal_preference, xstest_refusal_pairs
from alignment.modeling.refusal import RefusalDetector, make_detector

__all__ = ["CONFIG_TYPES", "EvaluationPlan", "evaluate", "main", "plan_evaluation", "run_evaluation", "summary_text"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationPlan:
    """What will be evaluated, resolved and checked before anything is loaded."""

    policies: list[PolicySpec]
    reference_index: int
    snapshots: list[PolicySpec]
    reward_names: list[str]
    helpful_reward: str | None
    proxy_reward: str | None
    detector: RefusalDetector
    second_detector: tuple[str, RefusalDetector] | None = None  # a second reading of the refusal rates


def plan_evaluation(cfg: Config) -> EvaluationPlan:
    """Resolve names and defaults; raises ConfigError (naming the key) before any output is written."""
    ev = cfg.evaluate
    check_settings(ev)
    policies, reference_index = resolve_policies(ev, cfg.model.model_name_or_path)
    reward_names = resolve_reward_names(ev)
    snapshots = checkpoint_specs(ev)
    names = [s.name for s in policies + snapshots]
    if len(set(names)) != len(names):
        raise ConfigError(f"policy and checkpoint names must be unique, got {names}")
    helpful = ev.helpful_reward or (reward_names[0] if reward_names else None)
    check_best_of_n(ev, reward_names, [s.name for s in policies] + [s.path for s in policies])
    if ev.best_of_n and f"best-of-{ev.best_of_n}" in names:
        raise ConfigError(f"policy_names: 'best-of-{ev.best_of_n}' is the name of the best-of-n policy")
    detector = make_detector(ev.refusal_detector)
    second = ev.second_refusal_detector
    second_detector = None if second in ("none", ev.refusal_detector) else (second, make_detector(second))
    return EvaluationPlan(
        policies,
        reference_index,
        snapshots,
        reward_names,
        helpful,
        ev.proxy_reward or helpful,
        detector,
        second_detector,
    )


def run_evaluation(cfg: Config, plan: EvaluationPlan, output_dir: Path, device: torch.device) -> dict[str, Any]:
    """Generate, score, aggregate; write results.json, report.md and the plots into ``output_dir``."""
    from alignment.evaluate.plots import write_plots  # imports matplotlib
    from alignment.evaluate.report import write_report

    ev = cfg.evaluate
    prompts = load_prompt_sets(ev.prompt_sets, ev.max_prompts_per_label, cfg.train.seed, cfg.data.invalid_records)
    # k answers per prompt: each prompt k times in consecutive rows (each row its own random stream, so each answer differs).
    prompts = [p for p in prompts for _ in range(ev.answers_per_prompt)]
    outputs = collect_outputs(cfg, plan.policies + plan.snapshots, plan.reference_index, prompts, output_dir, device)
    policies, snapshot_outputs = outputs[: len(plan.policies)], outputs[len(plan.policies) :]
    inference_cost = {}
    if ev.best_of_n:
        base_name = ev.best_of_n_policy or plan.policies[plan.reference_index].name
        base = next(out for out in policies if base_name in (out.name, out.path))
        best, inference_cost[f"best-of-{ev.best_of_n}"] = best_of_n_outputs(
            cfg, base, plan.reward_names, prompts, output_dir / GENERATIONS_DIR, device
        )
        policies.append(best)
    snapshot_names = {out.name for out in snapshot_outputs}
    refusal_pairs = xstest_refusal_pairs(ev.refusal_pairs_data_dir) if ev.refusal_pairs_data_dir else []
    preference: dict[str, Any] = {}  # each reward model on the human-labelled refusal pairs, while it is loaded
    score_outputs(
        cfg,
        policies + snapshot_outputs,
        plan.reward_names,
        device,
        wanted=lambda out, rm: out.name not in snapshot_names or rm in (plan.proxy_reward, ev.gold_reward),
        also=(lambda rm, scorer: preference.update({rm: refusal_preference(scorer, refusal_pairs, rm)}))
        if refusal_pairs
        else None,
    )
    results = aggregate(
        policies, plan.reference_index, plan.detector, plan.helpful_reward, ev.harmless_reward, plan.second_detector
    )
    results.update(
        reward_models=plan.reward_names, refusal_detector=ev.refusal_detector, settings=sampling_settings(cfg)
    )
    results["prompt_sets"] = list(dict.fromkeys(p.source for p in prompts))
    if preference:
        results["refusal_preference"] = preference
    if inference_cost:
        results["inference_cost"] = inference_cost
    if snapshot_outputs:
        results["overoptimization"] = overoptimization_curve(snapshot_outputs, plan.proxy_reward, ev.gold_reward)
    results["plots"] = write_plots(results, output_dir)
    report_path = write_report(results, policies, output_dir / "report.md", plan.detector, ev.samples_per_label)
    write_json_atomic(output_dir / "results.json", finite(results))
    logger.info("evaluation report: %s", report_path)
    return headline_metrics(results, report_path)


def evaluate(cfg: Config) -> dict[str, Any]:
    """The evaluation stage: returns the headline metrics (also in ``metrics.json``); writes ``DONE`` last."""
    from alignment.core.run import mark_done, start_run  # imports accelerate

    plan = plan_evaluation(cfg)
    with start_run(cfg, "evaluate", rewrites_outputs=True) as run:  # start_run removes an earlier DONE
        metrics: dict[str, Any] = {}
        if run.is_main:  # evaluation runs on one process; the others wait
            metrics = run_evaluation(cfg, plan, run.output_dir, run.device)
            run.metrics.write_metrics(metrics)
            mark_done(run.output_dir)
        run.accelerator.wait_for_everyone()
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``alignment evaluate``: the recipe (``--config``) and flags parsed, then :func:`evaluate`."""
    return evaluate(parse_config(CONFIG_TYPES, argv, prog="alignment evaluate"))


def _cell(metrics: dict[str, Any], key: str, percent: bool = False) -> str:
    value = metrics.get(key)
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def summary_text(metrics: dict[str, Any]) -> str:
    """One screen: a line per policy with the headline numbers, then where the report is."""
    if not metrics:  # a process other than the main one evaluates nothing
        return ""
    policies = [key.removesuffix("/kl") for key in metrics if key.endswith("/kl")]
    prefix = f"{policies[0]}/reward/"
    reward_names = [key.removeprefix(prefix) for key in metrics if key.startswith(prefix)]
    lines = ["", "=" * 88]
    answers = f" x {metrics['answers_per_prompt']} answers" if metrics.get("answers_per_prompt") else ""
    lines.append(
        f"evaluation: {metrics.get('num_prompts')} prompts{answers}, reference {metrics.get('reference_policy')}"
    )
    header = f"{'policy':<20}" + "".join(f"{rm[:14] + ' rwd':>18}{'win':>8}" for rm in reward_names)
    separation = "d'"  # how well refusals tell harmful prompts from safe ones (report: Telling harmful from safe)
    lines.append(header + f"{'refuse harm':>12}{'over-refuse':>12}{separation:>8}{'KL':>9}{'no EOS':>8}")
    for name in policies:
        row = f"{name[:19]:<20}"
        for rm in reward_names:
            row += f"{_cell(metrics, f'{name}/reward/{rm}'):>18}{_cell(metrics, f'{name}/win_rate/{rm}', True):>8}"
        row += f"{_cell(metrics, f'{name}/refusal_rate_harmful', True):>12}"
        row += f"{_cell(metrics, f'{name}/over_refusal_rate_safe', True):>12}"
        row += f"{_cell(metrics, f'{name}/refusal_d_prime'):>8}"
        row += f"{_cell(metrics, f'{name}/kl'):>9}{_cell(metrics, f'{name}/no_eos_rate', True):>8}"
        lines.append(row)
    if metrics.get("refusal_detectors_disagree"):
        disagree = ", ".join(metrics["refusal_detectors_disagree"])
        lines.append(f"\nthe two refusal detectors disagree on {disagree}: read the answers (report: second detector)")
    lines.append(f"\nreport: {Path(str(metrics.get('report', '')))}  (CIs, samples; plots and results.json beside it)")
    lines.append("=" * 88)
    return "\n".join(lines)
