"""Fitting the refusal detector's head and measuring it against human labels, leave one model out.

The labels (:mod:`alignment.evaluate.refusal_labels`) are XSTest v2's (Röttger et al. 2024, arXiv:2308.01263): the
completions of three chat models to the 450 XSTest prompts, each labelled full compliance, full refusal or partial
refusal; a *refusal* is a full or a partial one. The measurement holds out one model at a time: the head is fitted on
the other two models' completions and judged on the held-out model's, so the figures say how the detector does on a
model whose style it has not seen (which is what evaluating a new policy asks of it).

A second source sits beside XSTest's: answers of this project's own small policies, labelled by hand. A 135M model's
confused half-answers are far from a chat model's completions, and a head fitted on XSTest alone called a quarter of
those that refuse nothing a refusal. Each source weighs as much as one XSTest model in the fit, however many answers
it has, and the small policies are measured one policy at a time (:func:`leave_one_group_out`), so their figures too
come from answers the head was not fitted on.

Every proportion carries a 95% Wilson interval (Wilson 1927). Balanced accuracy's interval is the mean of the two
class recalls' Wilson bounds: the two recalls are independent, so this is wider than an interval for their mean
would need to be (sqrt(a^2 + b^2) <= a + b); read it as conservative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignment.core.stats import proportion_confidence_interval
from alignment.evaluate.refusal_labels import LabelledCompletion
from alignment.modeling.refusal_classifier import RefusalHead, SentenceEncoder, response_features


@dataclass(frozen=True)
class HeadSettings:
    """What the head reads and how it is fitted.

    ``features``/``n_sentences``/``max_tokens``: see :func:`~alignment.modeling.refusal_classifier.response_features`.
    ``l2`` penalises the weight on standardised features (the bias is free). ``class_weight`` ``balanced`` gives
    refusals and compliances the same total weight. ``threshold``: ``per_model`` fits on all training models but one,
    finds the threshold with the best balanced accuracy on that one, and averages those thresholds (in log-odds)
    over the training models; ``pooled`` takes the best threshold on all those held-out predictions at once;
    ``fixed`` is 0.5. Only training models are used: the measured model never sets the threshold.
    """

    features: str = "sentences"
    n_sentences: int = 3
    max_tokens: int = 64
    l2: float = 0.03
    class_weight: str = "balanced"  # balanced | none
    threshold: str = "per_model"  # per_model | pooled | fixed


def completion_features(
    completions: dict[str, list[LabelledCompletion]], settings: HeadSettings, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """The head's input for every model's completions (the encoder runs once over all of them)."""
    encoder = SentenceEncoder(max_tokens=settings.max_tokens, batch_size=batch_size)
    return {
        model: response_features(encoder, [c.completion for c in rows], settings.features, settings.n_sentences)
        for model, rows in completions.items()
    }


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, l2: float, sample_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """Weighted, L2-penalised logistic regression by Newton's method (IRLS; Hastie et al., ESL 2nd ed., sec. 4.4.1).

    Minimises ``sum_i w_i * BCE(sigmoid(x_i . weight + bias), y_i) / sum_i w_i + l2 / 2 * |weight|^2``, halving a
    step that does not lower it. The problem is convex and the answer deterministic (no learning rate, no seed).
    ``features`` ``[n, d]``, ``labels`` ``[n]`` in {0, 1}; returns ``(weight [d], bias)``.
    """
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    y = labels.double()
    w = torch.ones_like(y) if sample_weight is None else sample_weight.double()
    w = w / w.sum()
    penalty = torch.full((x.shape[1],), float(l2), dtype=torch.float64)
    penalty[-1] = 1e-10  # the bias is not penalised; the tiny term keeps the Hessian invertible

    def objective(beta: torch.Tensor) -> float:
        logits = x @ beta
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=w, reduction="sum")
        return float(nll + 0.5 * (penalty * beta * beta).sum())

    beta = torch.zeros(x.shape[1], dtype=torch.float64)
    loss = objective(beta)
    for _ in range(100):
        p = torch.sigmoid(x @ beta)
        grad = x.T @ (w * (p - y)) + penalty * beta
        hessian = (x.T * (w * p * (1 - p))) @ x + torch.diag(penalty)
        step = torch.linalg.solve(hessian, grad)
        scale = 1.0
        while objective(beta - scale * step) > loss and scale > 1e-6:
            scale /= 2
        beta = beta - scale * step
        loss = objective(beta)
        if (scale * step).abs().max() < 1e-9:
            break
    return beta[:-1].clone(), float(beta[-1])


def choose_threshold(probabilities: Sequence[float], labels: Sequence[bool]) -> float:
    """The threshold on p(refusal) with the highest balanced accuracy (refusal: p >= threshold).

    Candidates are 0.5 and the midpoints between neighbouring distinct scores; among equally good ones the nearest
    to 0.5 wins. Needs both classes among ``labels``.
    """
    p = torch.tensor([float(x) for x in probabilities], dtype=torch.float64)
    y = torch.tensor([bool(x) for x in labels])
    if len(p) != len(y) or not bool(y.any()) or bool(y.all()):
        raise ValueError("choose_threshold needs as many labels as scores, with both classes present")
    scores = torch.unique(p)  # sorted
    candidates = torch.cat([torch.tensor([0.5], dtype=torch.float64), (scores[1:] + scores[:-1]) / 2])
    pos, neg = torch.sort(p[y]).values, torch.sort(p[~y]).values
    recall = (len(pos) - torch.searchsorted(pos, candidates)) / len(pos)  # share of refusals with p >= t
    specificity = torch.searchsorted(neg, candidates) / len(neg)  # share of compliances with p < t
    balanced = (recall + specificity) / 2
    best = balanced >= balanced.max() - 1e-12
    distance = torch.where(best, (candidates - 0.5).abs(), torch.tensor(float("inf"), dtype=torch.float64))
    return float(candidates[int(torch.argmin(distance))])


def balanced_accuracy(predicted: Sequence[bool], labels: Sequence[bool]) -> float:
    pos = [p for p, y in zip(predicted, labels) if y]
    neg = [not p for p, y in zip(predicted, labels) if not y]
    recalls = [sum(group) / len(group) for group in (pos, neg) if group]
    return sum(recalls) / len(recalls) if recalls else 0.0


def _fit(
    x: torch.Tensor, labels: torch.Tensor, settings: HeadSettings, threshold: float, source_weight: torch.Tensor
) -> RefusalHead:
    """``source_weight`` ``[n]``: each row's weight before the class weights (see :func:`_fit_models`)."""
    mean = x.double().mean(0)
    scale = x.double().std(0).clamp(min=1e-6)
    weight = source_weight.double()
    if settings.class_weight == "balanced":  # refusals and compliances get the same total weight
        total, positive = float(weight.sum()), float(weight[labels.bool()].sum())
        weight = weight * torch.where(labels.bool(), total / (2 * positive), total / (2 * (total - positive)))
    elif settings.class_weight != "none":
        raise ValueError(f"class_weight must be 'balanced' or 'none', got {settings.class_weight!r}")
    coef, bias = fit_logistic_regression((x.double() - mean) / scale, labels, settings.l2, weight)
    return RefusalHead(
        weight=coef.float(),
        bias=bias,
        feature_mean=mean.float(),
        feature_scale=scale.float(),
        threshold=threshold,
        features=settings.features,
        n_sentences=settings.n_sentences,
        max_tokens=settings.max_tokens,
    )


def _fit_models(
    models: Sequence[str],
    features: dict[str, torch.Tensor],
    completions: dict[str, list[LabelledCompletion]],
    settings: HeadSettings,
    threshold: float,
) -> RefusalHead:
    """Every source (model) weighs the same in the fit, its rows ``mean size / its size`` each: XSTest's models are
    450 completions each, the policy sample a third of that."""
    x = torch.cat([features[m] for m in models])
    y = torch.tensor([c.is_refusal for m in models for c in completions[m]], dtype=torch.float64)
    mean_size = sum(len(completions[m]) for m in models) / len(models)
    source_weight = torch.cat(
        [torch.full((len(completions[m]),), mean_size / len(completions[m]), dtype=torch.float64) for m in models]
    )
    return _fit(x, y, settings, threshold, source_weight)


def _threshold(
    features: dict[str, torch.Tensor], completions: dict[str, list[LabelledCompletion]], settings: HeadSettings
) -> float:
    """The decision threshold from the training models alone (see :class:`HeadSettings`)."""
    if settings.threshold not in ("per_model", "pooled", "fixed"):
        raise ValueError(f"threshold must be 'per_model', 'pooled' or 'fixed', got {settings.threshold!r}")
    models = list(features)
    if settings.threshold == "fixed" or len(models) < 2:
        return 0.5
    held_out = []  # (probabilities, labels) of each training model, predicted by a head fitted on the others
    for model in models:
        inner = _fit_models([m for m in models if m != model], features, completions, settings, 0.5)
        held_out.append((inner.probabilities(features[model]).tolist(), [c.is_refusal for c in completions[model]]))
    if settings.threshold == "pooled":
        return choose_threshold([p for ps, _ in held_out for p in ps], [y for _, ys in held_out for y in ys])
    log_odds = [
        torch.logit(torch.tensor(choose_threshold(ps, ys), dtype=torch.float64), eps=1e-6) for ps, ys in held_out
    ]
    return float(torch.sigmoid(torch.stack(log_odds).mean()))


def fit_head(
    features: dict[str, torch.Tensor], completions: dict[str, list[LabelledCompletion]], settings: HeadSettings
) -> RefusalHead:
    """Fit the head on every model in ``features`` (``[n_model, n_features]`` each), with its threshold."""
    return _fit_models(list(features), features, completions, settings, _threshold(features, completions, settings))


def _proportion(successes: int, n: int) -> dict[str, float | None]:
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    value, low, high = proportion_confidence_interval(successes, n)
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def agreement_with_intervals(predicted: Sequence[bool], labels: Sequence[bool]) -> dict[str, dict[str, float | None]]:
    """Accuracy, balanced accuracy, refusal precision and refusal recall, each with a 95% interval and its n."""
    pairs = [(bool(p), bool(y)) for p, y in zip(predicted, labels, strict=True)]
    tp = sum(p and y for p, y in pairs)
    tn = sum(not p and not y for p, y in pairs)
    n_pos = sum(y for _, y in pairs)
    n_predicted = sum(p for p, _ in pairs)
    recall = _proportion(tp, n_pos)
    specificity = _proportion(tn, len(pairs) - n_pos)
    if recall["value"] is None or specificity["value"] is None:
        balanced = {"value": None, "ci_low": None, "ci_high": None, "n": len(pairs)}
    else:
        balanced = {key: (recall[key] + specificity[key]) / 2 for key in ("value", "ci_low", "ci_high")}
        balanced["n"] = len(pairs)
    return {
        "accuracy": _proportion(tp + tn, len(pairs)),
        "balanced_accuracy": balanced,
        "precision": _proportion(tp, n_predicted),
        "recall": recall,
    }


def labelled_figures(predicted: Sequence[bool], completions: Sequence[LabelledCompletion]) -> dict[str, Any]:
    """Agreement on all completions (refusal = full or partial) and on full refusal vs full compliance only."""
    full = [(p, c.is_refusal) for p, c in zip(predicted, completions) if c.label != "partial_refusal"]
    return {
        "refusal_vs_compliance": agreement_with_intervals(predicted, [c.is_refusal for c in completions]),
        "full_refusal_vs_full_compliance": agreement_with_intervals([p for p, _ in full], [y for _, y in full]),
    }


def leave_one_model_out(
    features: dict[str, torch.Tensor],
    completions: dict[str, list[LabelledCompletion]],
    settings: HeadSettings,
    held_out_models: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """For each of ``held_out_models`` (default: every source): fit on the other sources (threshold chosen among them
    only), figures on the held-out one."""
    figures = {}
    for held_out in held_out_models if held_out_models is not None else list(features):
        train = {m: x for m, x in features.items() if m != held_out}
        head = fit_head(train, completions, settings)
        probabilities = head.probabilities(features[held_out])
        figures[held_out] = {
            "threshold": head.threshold,
            **labelled_figures((probabilities >= head.threshold).tolist(), completions[held_out]),
        }
    return figures


def leave_one_group_out(
    features: dict[str, torch.Tensor],
    completions: dict[str, list[LabelledCompletion]],
    settings: HeadSettings,
    source: str,
) -> dict[str, Any]:
    """Figures on ``source``'s answers, each predicted by a head fitted without its group (policy): on the other
    sources and the other groups of ``source``, threshold chosen among them only."""
    rows = completions[source]
    predicted = [False] * len(rows)
    for group in dict.fromkeys(c.group for c in rows):
        keep = torch.tensor([c.group != group for c in rows])
        train_features = {**features, source: features[source][keep]}
        train_completions = {**completions, source: [c for c in rows if c.group != group]}
        head = fit_head(train_features, train_completions, settings)
        verdicts = (head.probabilities(features[source][~keep]) >= head.threshold).tolist()
        for index, verdict in zip(torch.nonzero(~keep).flatten().tolist(), verdicts):
            predicted[index] = verdict
    return labelled_figures(predicted, rows)


def detector_figures(
    is_refusal: Callable[[Sequence[str]], list[bool]], completions: dict[str, list[LabelledCompletion]]
) -> dict[str, dict[str, Any]]:
    """Figures of a fixed (not trained) detector on each model's completions, e.g. the phrase baseline."""
    return {m: labelled_figures(is_refusal([c.completion for c in rows]), rows) for m, rows in completions.items()}


def meets_targets(figures: dict[str, dict[str, Any]], balanced_accuracy: float = 0.85, recall: float = 0.85) -> bool:
    """Balanced accuracy and refusal recall (refusal = full or partial) at least the targets on every model."""
    return all(
        f["refusal_vs_compliance"]["balanced_accuracy"]["value"] >= balanced_accuracy
        and f["refusal_vs_compliance"]["recall"]["value"] >= recall
        for f in figures.values()
    )


def format_figures_table(rows: dict[str, dict[str, dict[str, Any]]], subset: str = "refusal_vs_compliance") -> str:
    """Markdown table: one row per (detector, held-out model), each metric as ``value [low, high]``."""
    metrics = ("accuracy", "balanced_accuracy", "precision", "recall")
    lines = [
        "| detector | model | n | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for detector, by_model in rows.items():
        for model, figures in by_model.items():
            cells = []
            for metric in metrics:
                m = figures[subset][metric]
                cells.append(
                    "n/a" if m["value"] is None else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
                )
            n = figures[subset]["accuracy"]["n"]
            lines.append(f"| {detector} | {model} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
