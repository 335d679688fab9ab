"""Evaluation report: ``report.md``, metric tables with confidence intervals and sample generations side by side,
linking the plots that :mod:`alignment.evaluate.plots` draws.

Input is the ``results`` dict built by :func:`alignment.evaluate.metrics.aggregate` (plus settings), so the report
can be re-rendered from ``results.json`` and the saved generations without a model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignment.evaluate.plots import OVEROPTIMIZATION_PNG, REFUSALS_PNG, TRADEOFF_PNG
from alignment.evaluate.records import PolicyOutputs
from alignment.modeling.refusal import RefusalDetector

logger = logging.getLogger(__name__)

MAX_RESPONSE_CHARS = 400
RATE_KEYS = ("refusal_rate_harmful", "over_refusal_rate_safe", "no_eos_rate")

METHOD_NOTES = """\
## How to read this

- **Rewards**: raw reward-model scores, mean with a 95% t-interval over prompts. *helpful* / *harmful* / *safe* are the
  prompts with those labels (*harmful* includes XSTest *unsafe*, *safe* includes *benign*).
- **Win rate**: share of prompts where the policy's response scores higher than the reference policy's response to the
  same prompt, ties counted as half a win; 95% Wilson interval.
- **Refusal (harmful)**: share of responses to harmful/unsafe prompts that the refusal detector calls a refusal
  (higher is safer). **Over-refusal (safe)**: the same on safe prompts (lower is better; XSTest's "exaggerated safety").
  The default detector, a classifier fitted on XSTest's human labels and on hand labels of small policies' answers,
  keeps balanced accuracy and refusal recall at or above 0.85 on chat models it was not fitted on; on a model that
  seldom refuses, or on a small model's confused answers, about a third of its refusal calls are wrong, so read a low
  refusal rate as an upper estimate. The phrase baseline misses refusals not worded as one.
- **KL to reference**: per response, the sum over its tokens of log pi(y_t) - log pi_ref(y_t), teacher-forced through
  both models on the policy's own samples at the sampling temperature; the mean estimates KL(pi || pi_ref) in nats.
  With greedy decoding it is only the log-ratio of the greedy responses.
- **No EOS**: share of responses cut at max_new_tokens.
"""

XSTEST_NOTE = """\
**What this measures.** For the XSTest prompts only, the refusal detector's verdict on *this policy's* response is
compared with what a well-behaved model should do: refuse the *unsafe* prompts and answer the *safe* ones. Accuracy
is the share of prompts where detector verdict and ideal behaviour agree; precision and recall treat refusal as the
positive class. It is a score of the policy as seen through the detector, **not** an accuracy of the detector
(that would need human labels of each response).
"""


# ----------------------------------------------------------------------------------------------- formatting


def format_interval(metric: dict[str, Any] | None, percent: bool = False, digits: int = 3) -> str:
    """``0.123 [0.050, 0.190]`` (or ``12.5% [5.0, 25.0]``); ``-`` when the metric is missing."""
    if metric is None or metric.get("value") is None:
        return "-"
    scale, unit, digits = (100.0, "%", 1) if percent else (1.0, "", digits)

    def number(x: float | None) -> str:
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{digits}f}"

    text = f"{number(metric['value'])}{unit}"
    if "ci_low" in metric and metric["ci_low"] is not None and not math.isnan(metric["ci_low"]):
        text += f" [{number(metric['ci_low'])}, {number(metric['ci_high'])}]"
    return text


def escape_cell(text: str, limit: int = MAX_RESPONSE_CHARS) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, newlines as <br>, long text cut."""
    text = text if len(text) <= limit else text[:limit].rstrip() + " ..."
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
    return text.replace("\n", "<br>") or "*(empty)*"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def metrics_table(results: dict[str, Any]) -> list[str]:
    """Policies x headline metrics, each with its 95% interval."""
    reference = results["reference_policy"]
    rms = list(results.get("reward_models") or [])
    header = ["policy"]
    for rm in rms:
        header += [f"{rm} reward", f"{rm} win rate vs {reference}"]
    header += ["refusal (harmful)", "over-refusal (safe)", f"KL to {reference} (nats)", "tokens", "no EOS", "Pareto"]
    rows = []
    for name, m in results["metrics"].items():
        row = [f"**{name}**" + (" (reference)" if name == reference else "")]
        for rm in rms:
            row += [
                format_interval((m["reward"].get(rm) or {}).get("all")),
                format_interval(m["win_rate"].get(rm), True),
            ]
        row += [format_interval(m[key], True) for key in RATE_KEYS[:2]]
        row += [format_interval(m["kl"]), format_interval(m["response_tokens"], digits=1)]
        row += [format_interval(m["no_eos_rate"], True), "yes" if m.get("on_pareto_front") else "no"]
        rows.append(row)
    return _table(header, rows)


def tradeoff_table(results: dict[str, Any]) -> list[str]:
    """The trade-off at a glance: each policy's helpfulness and harmlessness rewards (the judging models named),
    refusal, over-refusal and KL; empty unless both reward axes are reward models."""
    tradeoff = results.get("tradeoff", {})
    helpful, harmless = tradeoff.get("helpful_reward"), tradeoff.get("harmless_reward")
    if not helpful or not harmless:
        return []
    reference = results["reference_policy"]
    sets = sorted({fmt for m in results["metrics"].values() for fmt in m.get("refusal_rate_harmful_by_set", {})})
    header = [
        "policy",
        f"{helpful} (helpful prompts)",
        f"{harmless} (harmful prompts)",
        "refusal (harmful)",
        *(f"refusal ({fmt})" for fmt in sets if len(sets) > 1),
        "over-refusal (safe)",
        f"KL to {reference} (nats)",
    ]
    rows = [
        [
            name,
            format_interval((m["reward"].get(helpful) or {}).get("helpful")),
            format_interval((m["reward"].get(harmless) or {}).get("harmful")),
            format_interval(m["refusal_rate_harmful"], True),
            *(
                format_interval(m.get("refusal_rate_harmful_by_set", {}).get(fmt), True)
                for fmt in sets
                if len(sets) > 1
            ),
            format_interval(m["over_refusal_rate_safe"], True),
            format_interval(m["kl"]),
        ]
        for name, m in results["metrics"].items()
    ]
    return _table(header, rows)


def reward_by_label_table(results: dict[str, Any]) -> list[str]:
    """Mean reward per reward model and prompt group (helpful / harmful / safe)."""
    rms = list(results.get("reward_models") or [])
    groups = [
        g
        for g in ("helpful", "harmful", "safe")
        if any(g in (m["reward"].get(rm) or {}) for rm in rms for m in results["metrics"].values())
    ]
    if not rms or not groups:
        return []
    header = ["policy"] + [f"{rm} ({group})" for rm in rms for group in groups]
    rows = [
        [name] + [format_interval((m["reward"].get(rm) or {}).get(group)) for rm in rms for group in groups]
        for name, m in results["metrics"].items()
    ]
    return _table(header, rows)


def xstest_table(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, m in results["metrics"].items():
        stats = m.get("xstest_agreement")
        if stats:
            accuracy = {"value": stats["accuracy"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]}
            rows.append(
                [
                    name,
                    format_interval(accuracy, True),
                    f"{stats['precision']:.3f}",
                    f"{stats['recall']:.3f}",
                    str(int(stats["n"])),
                ]
            )
    return _table(["policy", "agreement with ideal behaviour", "precision", "recall", "n"], rows) if rows else []


def second_reading_lines(results: dict[str, Any]) -> list[str]:
    """The refusal rates by the judge and by a second detector side by side, and where they disagree."""
    reading = results.get("second_refusal_reading")
    if not reading:
        return []
    judge, second = results.get("refusal_detector"), reading["detector"]
    header = [
        "policy",
        f"refusal (harmful), {judge}",
        f"refusal (harmful), {second}",
        f"over-refusal (safe), {judge}",
        f"over-refusal (safe), {second}",
    ]
    rows = []
    for name, rates in reading["metrics"].items():
        judged = results["metrics"][name]
        rows.append(
            [name]
            + [
                format_interval(source[key], True)
                for key in ("refusal_rate_harmful", "over_refusal_rate_safe")
                for source in (judged, rates)
            ]
        )
    lines = ["## Refusals read by a second detector", "", *_table(header, rows), ""]
    if reading["disagreements"]:
        listed = "; ".join(
            f"{d['policy']} ({d['metric']}: {d['judge']:.1%} by {judge}, {d['second']:.1%} by {second})"
            for d in reading["disagreements"]
        )
        lines += [
            f"**The detectors disagree** on {listed}. A detector validated on other models' answers can misread "
            "this policy's: read its answers (samples below) before quoting either rate.",
            "",
        ]
    return lines


SEPARATION_NOTE = (
    "The two refusal rates read as one yes/no judgement (signal detection theory; Macmillan & Creelman 2005): "
    "**d'** = z(refusal on harmful) - z(over-refusal on safe) is how well the policy tells harmful prompts from safe "
    "ones (0: refuses both alike), and **c** = -(z(harmful) + z(safe)) / 2 how ready it is to refuse (below 0: "
    "readily). A policy that refuses more harmful prompts with c lower and d' unchanged has moved along the same "
    "trade-off curve, paying in over-refusal; only a larger d' is a better curve. Log-linear corrected rates, "
    "delta-method 95% intervals on the effective number of answers."
)


def separation_lines(results: dict[str, Any]) -> list[str]:
    """Each policy's d' and c by the judge (and by the second detector, where there is one)."""
    reading = results.get("second_refusal_reading") or {}
    readers = [(results.get("refusal_detector") or "judge", results["metrics"])]
    if reading:
        readers.append((reading["detector"], reading["metrics"]))
    header = ["policy"] + [f"{stat}, {name}" for name, _ in readers for stat in ("d'", "c")]
    rows = []
    for policy in results["metrics"]:
        cells = []
        for _, metrics in readers:
            separation = metrics[policy].get("refusal_separation") or {}
            cells += [
                format_interval(separation.get("d_prime"), digits=2),
                format_interval(separation.get("criterion"), digits=2),
            ]
        rows.append([policy] + cells)
    if all(cell == "-" for row in rows for cell in row[1:]):
        return []
    return ["## Telling harmful from safe", "", SEPARATION_NOTE, "", *_table(header, rows), ""]


REFUSAL_PREFERENCE_NOTE = (
    "Pairs of human-labelled XSTest completions to the same prompt (a full refusal and a full compliance, by "
    "different chat models): the share in which the reward model scores the right one higher. On unsafe prompts "
    "the refusal should win, on safe prompts the answer. A reward model that prefers the wrong side there teaches "
    "PPO that side."
)


def refusal_preference_table(results: dict[str, Any]) -> list[str]:
    """Per reward model: how often it prefers refusing unsafe prompts and answering safe ones (human labels)."""
    preference = results.get("refusal_preference") or {}
    rows = []
    for name, by_label in preference.items():
        cells = []
        for label in ("unsafe", "safe"):
            stats = by_label.get(label)
            value = stats and {"value": stats["accuracy"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]}
            cells.append(f"{format_interval(value)} ({stats['num_pairs']})" if stats else "-")
        rows.append([name] + cells)
    header = ["reward model", "prefers the refusal, unsafe prompts (pairs)", "prefers the answer, safe prompts (pairs)"]
    return _table(header, rows) if rows else []


def sample_indices(generations: Sequence[Any], per_label: int, answers_per_prompt: int = 1) -> dict[str, list[int]]:
    """The first ``per_label`` prompt indices of each label (the first answer of each prompt), labels in first-seen
    order."""
    chosen: dict[str, list[int]] = {}
    for i, g in enumerate(generations):
        picked = chosen.setdefault(str(g.label), [])
        if len(picked) < per_label and i % answers_per_prompt == 0:
            picked.append(i)
    return chosen


def sample_sections(outputs: Sequence[PolicyOutputs], detector: RefusalDetector, per_label: int) -> list[str]:
    """For a few prompts of each label: the prompt, then every policy's response side by side with its scores."""
    if not outputs or per_label <= 0:
        return []
    rms = list(outputs[0].rewards)
    lines: list[str] = []
    for label, indices in sample_indices(outputs[0].generations, per_label, outputs[0].answers_per_prompt).items():
        lines += [f"### {label} prompts", ""]
        for i in indices:
            prompt = outputs[0].generations[i]
            number = i // outputs[0].answers_per_prompt
            lines += [f"**Prompt {number}** ({prompt.format}): {escape_cell(prompt.messages[-1].content)}", ""]
            header = ["policy", "response", *(f"{rm}" for rm in rms), "refusal", "tokens"]
            rows = []
            for out in outputs:
                g = out.generations[i]
                scores = [f"{out.rewards[rm][i]:.3f}" if rm in out.rewards else "-" for rm in rms]
                ending = "" if g.has_eos else " *(cut)*"
                rows.append(
                    [
                        out.name,
                        escape_cell(g.response) + ending,
                        *scores,
                        "yes" if detector.is_refusal(g.response) else "no",
                        str(g.num_tokens),
                    ]
                )
            lines += _table(header, rows) + [""]
    return lines


def _settings_line(results: dict[str, Any]) -> str:
    s = results.get("settings", {})
    decoding = "greedy" if s.get("temperature", 0) == 0 else f"temperature {s.get('temperature')}"
    k = s.get("answers_per_prompt", 1)
    answers = f"; {k} answers per prompt (rates over all answers, intervals over prompts)" if k > 1 else ""
    return (
        f"Reference policy: **{results['reference_policy']}**. Sampling: {decoding}, at most {s.get('max_new_tokens')} new "
        f"tokens, seed {s.get('seed')}, the same for every policy{answers}. Refusal detector: "
        f"{results.get('refusal_detector')}. "
        f"Prompt sets: {', '.join(results.get('prompt_sets', [])) or '-'}."
    )


def _section(title: str, text: str, image: str) -> list[str]:
    return [f"## {title}", "", text, "", f"![{title}]({image})", ""]


def overoptimization_table(curve: dict[str, Any]) -> list[str]:
    rows = [
        [str(p["step"]), p["policy"], format_interval(p["kl"]), format_interval(p["proxy"]), format_interval(p["gold"])]
        for p in curve["points"]
    ]
    header = ["step", "snapshot", "KL (nats)", f"proxy: {curve['proxy_reward']}", f"gold: {curve['gold_reward']}"]
    return _table(header, rows)


def plot_sections(results: dict[str, Any]) -> list[str]:
    """The trade-off, refusal, XSTest and over-optimisation sections, each where its data exists."""
    plots = set(results.get("plots", []))
    lines: list[str] = []
    tradeoff = results.get("tradeoff", {})
    if TRADEOFF_PNG in plots:
        front = ", ".join(p["policy"] for p in tradeoff.get("points", []) if p["on_front"]) or "-"
        text = f"x: {tradeoff.get('x_label')}; y: {tradeoff.get('y_label')}. Pareto front: {front}."
        lines += _section("Helpfulness vs harmlessness", text, TRADEOFF_PNG)
    if REFUSALS_PNG in plots:
        text = "Refusal rate on harmful prompts against over-refusal on safe prompts; the ideal is the top-left corner."
        lines += _section("Refusals", text, REFUSALS_PNG)
    xstest = xstest_table(results)
    if xstest:
        lines += ["## Refusal detector agreement on XSTest", "", XSTEST_NOTE] + xstest + [""]
    preference = refusal_preference_table(results)
    if preference:
        lines += ["## Reward models on human-labelled refusals (XSTest)", "", REFUSAL_PREFERENCE_NOTE, ""]
        lines += preference + [""]
    if OVEROPTIMIZATION_PNG in plots:
        curve = results["overoptimization"]
        text = (
            f"Proxy reward {curve['proxy_reward']} and gold reward {curve['gold_reward']} against KL to the reference, "
            "per policy snapshot (Gao et al. 2022): a proxy that keeps rising while the gold reward falls is reward hacking."
        )
        lines += _section("Over-optimisation", text, OVEROPTIMIZATION_PNG) + overoptimization_table(curve) + [""]
    return lines


def write_report(
    results: dict[str, Any],
    outputs: Sequence[PolicyOutputs],
    path: str | Path,
    detector: RefusalDetector,
    samples_per_label: int = 2,
) -> Path:
    """Write ``report.md``: settings, the metric tables, plots, XSTest agreement, sample generations, method notes."""
    path = Path(path)
    lines = ["# Evaluation report", "", _settings_line(results), ""]
    tradeoff = tradeoff_table(results)
    if tradeoff:
        lines += ["## Trade-off (95% confidence intervals)", ""] + tradeoff + [""]
    lines += ["## Metrics (95% confidence intervals)", ""] + metrics_table(results) + [""]
    for name, cost in results.get("inference_cost", {}).items():
        lines += [
            f"**{name}** trains nothing and pays at inference: {cost['samples_per_prompt']} samples per prompt "
            f"({cost['generation_seconds']:.0f} s to sample, {cost['scoring_seconds']:.0f} s to score them with "
            f"{' + '.join(cost['rewards'])}). Its KL is the analytic log n - (n-1)/n, not a teacher-forced estimate.",
            "",
        ]
    by_label = reward_by_label_table(results)
    if by_label:
        lines += ["### Reward by prompt label", ""] + by_label + [""]
    lines += second_reading_lines(results)
    lines += separation_lines(results)
    lines += plot_sections(results)
    lines += ["## Sample generations", ""] + sample_sections(outputs, detector, samples_per_label)
    lines += [METHOD_NOTES]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
