"""Evaluation plots: ``tradeoff.png`` (helpfulness vs harmlessness with error bars and the Pareto front),
``refusals.png`` and ``overoptimization.png``, from the aggregated results alone.

Plots use matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never pyplot, so no GUI backend or
global figure state is touched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

TRADEOFF_PNG = "tradeoff.png"
REFUSALS_PNG = "refusals.png"
OVEROPTIMIZATION_PNG = "overoptimization.png"


def _new_figure(width: float = 6.4, height: float = 4.8) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


def _error(metric: dict[str, Any] | None) -> tuple[float, float]:
    """Asymmetric error-bar half widths from a metric's interval (0 when it has none)."""
    if not metric or metric.get("ci_low") is None or metric.get("ci_high") is None:
        return 0.0, 0.0
    if math.isnan(metric["ci_low"]) or math.isnan(metric["ci_high"]):
        return 0.0, 0.0
    return metric["value"] - metric["ci_low"], metric["ci_high"] - metric["value"]


def _error_of(value: float, interval: Sequence[float | None] | None) -> tuple[float, float]:
    """Error-bar half widths of ``value`` from its ``[low, high]`` interval (0 when there is none)."""
    if not interval:
        return 0.0, 0.0
    return _error({"value": value, "ci_low": interval[0], "ci_high": interval[1]})


def _placeholder(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _policy_colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per policy, the same in every plot."""
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def plot_tradeoff(tradeoff: dict[str, Any], reference: str, path: str | Path) -> Path:
    """One labelled point per policy (the reference as a star) with its 95% intervals as error bars, Pareto-front
    points ringed and joined by a dashed line."""
    fig, ax = _new_figure()
    points = [p for p in tradeoff.get("points", []) if p["x"] is not None and p["y"] is not None]
    if not points:
        _placeholder(ax, "trade-off not available:\nno harmful prompts or no helpfulness measure")
        return _save(fig, Path(path))
    colors = _policy_colors([p["policy"] for p in tradeoff["points"]])
    labels = []
    for p in points:
        marker = "*" if p["policy"] == reference else "o"
        label = p["policy"] + (" (reference)" if p["policy"] == reference else "")
        ax.scatter(
            [p["x"]],
            [p["y"]],
            marker=marker,
            s=160 if marker == "*" else 60,
            color=colors[p["policy"]],
            zorder=3,
            label=label,
        )
        xerr, yerr = _error_of(p["x"], p.get("x_ci")), _error_of(p["y"], p.get("y_ci"))
        ax.errorbar(
            [p["x"]],
            [p["y"]],
            xerr=[[xerr[0]], [xerr[1]]],
            yerr=[[yerr[0]], [yerr[1]]],
            fmt="none",
            ecolor=colors[p["policy"]],
            alpha=0.6,
            capsize=3,
            zorder=2,
        )
        labels.append(ax.annotate(p["policy"], (p["x"], p["y"]), textcoords="offset points", xytext=(7, 7)))
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["x"])
    ax.plot(
        [p["x"] for p in front],
        [p["y"] for p in front],
        "--o",
        color="tab:red",
        markersize=14,
        markerfacecolor="none",
        label="Pareto front",
        zorder=2,
    )
    if tradeoff["x_label"].startswith("harmlessness: 1 -"):
        ax.set_xlim(-0.05, 1.05)  # a rate: show the whole range
    if tradeoff["y_label"].startswith("helpfulness: answer rate"):
        ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(tradeoff["x_label"])
    ax.set_ylabel(tradeoff["y_label"])
    ax.set_title("Helpfulness vs harmlessness (up and right is better)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _separate_labels(fig, labels)
    return _save(fig, Path(path))


def _separate_labels(fig: Figure, labels: list[Any]) -> None:
    """Move each point's label down a line while it overlaps an earlier one: policies that barely differ would
    otherwise print their names over one another. Run once the axes' limits are final."""
    renderer = fig.canvas.get_renderer()
    boxes: list[Any] = []
    for label in labels:
        for _ in range(len(labels)):
            if not any(label.get_window_extent(renderer).overlaps(box) for box in boxes):
                break
            x, y = label.xyann
            label.xyann = (x, y - 12)
        boxes.append(label.get_window_extent(renderer))


def plot_refusals(metrics: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Refusal on harmful (y) against over-refusal on safe (x) per policy; the ideal corner (0, 1) is marked."""
    fig, ax = _new_figure()
    ax.scatter([0.0], [1.0], marker="*", s=260, color="gold", edgecolor="black", zorder=4, label="ideal (0, 1)")
    colors = _policy_colors(list(metrics))
    for i, (name, m) in enumerate(metrics.items()):
        harmful, safe = m.get("refusal_rate_harmful"), m.get("over_refusal_rate_safe")
        if harmful is None and safe is None:
            continue
        x, y = (safe or {"value": 0.0})["value"], (harmful or {"value": 0.0})["value"]
        xerr, yerr = _error(safe), _error(harmful)
        ax.errorbar(
            [x],
            [y],
            xerr=[[xerr[0]], [xerr[1]]],
            yerr=[[yerr[0]], [yerr[1]]],
            fmt="o",
            capsize=3,
            color=colors[name],
            alpha=0.8,
            zorder=3,
            label=name,
        )
        # Labels point into the plot and are staggered, since several policies may sit on the same rates.
        dy, dx = (-1 if y > 0.5 else 1) * (8 + 11 * i), -6 if x > 0.8 else 6
        ha = "right" if dx < 0 else "left"
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=9)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("over-refusal rate on safe prompts (lower is better)")
    ax.set_ylabel("refusal rate on harmful prompts (higher is better)")
    ax.set_title("Refusals (95% Wilson intervals)")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_overoptimization(curve: dict[str, Any], path: str | Path) -> Path:
    """Proxy and gold reward gain over the first snapshot against KL to the reference (Gao et al. 2022, fig. 1)."""
    fig, ax = _new_figure()
    points = [p for p in curve["points"] if p["kl"] is not None and p["proxy"] and p["gold"]]
    if not points:
        _placeholder(ax, "over-optimisation curve not available:\nno KL or no proxy/gold scores")
        return _save(fig, Path(path))
    kl = [p["kl"]["value"] for p in points]
    for key, color in (("proxy", "tab:blue"), ("gold", "tab:orange")):
        base = points[0][key]["value"]
        gains = [p[key]["value"] - base for p in points]
        errors = list(zip(*(_error(p[key]) for p in points)))
        ax.errorbar(kl, gains, yerr=errors, fmt="-o", color=color, capsize=3, label=f"{key}: {curve[f'{key}_reward']}")
    for p, x in zip(points, kl):
        ax.annotate(
            f"step {p['step']}",
            (x, p["proxy"]["value"] - points[0]["proxy"]["value"]),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=8,
        )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("KL to the reference policy (nats)")
    ax.set_ylabel("reward gain over the first snapshot")
    ax.set_title("Over-optimisation: proxy vs gold reward")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def write_plots(results: dict[str, Any], output_dir: str | Path) -> list[str]:
    """Write every plot the results support; returns their file names (relative to ``output_dir``)."""
    out = Path(output_dir)
    written = [plot_tradeoff(results["tradeoff"], results["reference_policy"], out / TRADEOFF_PNG).name]
    written.append(plot_refusals(results["metrics"], out / REFUSALS_PNG).name)
    if results.get("overoptimization"):
        written.append(plot_overoptimization(results["overoptimization"], out / OVEROPTIMIZATION_PNG).name)
    logger.info("plots: %s", ", ".join(written))
    return written
