"""Small statistics for the evaluation stage: confidence intervals, win rates, Pareto fronts. No scipy needed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import torch


def _regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by the Lentz continued fraction (Press et al., Numerical Recipes 3rd ed., sec. 6.4, ``betacf``)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point; use the symmetry
        return 1.0 - _regularized_incomplete_beta(1.0 - x, b, a)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom: ``1 - I_{df/(df+t^2)}(df/2, 1/2) / 2`` for t >= 0."""
    tail = 0.5 * _regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t, by bisection on :func:`student_t_cdf` (accurate to ~1e-10).

    Args:
        p: probability in (0, 1), e.g. 0.975 for a two-sided 95% interval.
        df: degrees of freedom > 0.
    """
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if student_t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def _as_floats(values: Sequence[float] | torch.Tensor) -> list[float]:
    return (
        values.detach().flatten().double().tolist() if isinstance(values, torch.Tensor) else [float(v) for v in values]
    )


def mean_confidence_interval(
    values: Sequence[float] | torch.Tensor, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean and two-sided t-interval ``mean +- t_{(1+c)/2, n-1} s / sqrt(n)`` (s: sample std, n-1 denominator).

    Args:
        values: n >= 1 numbers (e.g. per-prompt reward scores).
        confidence: coverage, e.g. 0.95.

    Returns:
        ``(mean, low, high)``; with n = 1 the interval is undefined and ``low = high = nan``.
    """
    xs = _as_floats(values)
    n = len(xs)
    if n == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half_width = student_t_quantile((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return mean, mean - half_width, mean + half_width


def proportion_confidence_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float, float]:
    """Proportion and Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over Wald).

    ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. Stays inside [0, 1] and is not degenerate at
    p = 0 or 1. ``successes`` may be fractional (ties counted as half in :func:`win_rate`).

    Returns:
        ``(p, low, high)``.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need n > 0 and 0 <= successes <= n, got successes={successes}, n={n}")
    p = successes / n
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At p = 0 or 1 the bound on that side is p itself; rounding left it 1e-17 off (a negative error bar in a plot).
    return p, min(p, max(0.0, center - half_width)), max(p, min(1.0, center + half_width))


def _cluster_means(values: Sequence[float], clusters: Sequence[int]) -> list[float]:
    sums: dict[int, list[float]] = {}
    for value, cluster in zip(values, clusters, strict=True):
        sums.setdefault(cluster, []).append(float(value))
    return [math.fsum(v) / len(v) for v in sums.values()]


def clustered_mean_interval(
    values: Sequence[float], clusters: Sequence[int], confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean and t-interval over clusters: several answers to one prompt are one observation, not several.

    Each cluster (a prompt) is first reduced to its mean, and the t-interval is taken over those means (n = the
    number of prompts), since answers to the same prompt are correlated. With one value per cluster it is
    :func:`mean_confidence_interval` exactly. Clusters of equal size give the plain mean of ``values``.
    """
    return mean_confidence_interval(_cluster_means(values, clusters), confidence)


def clustered_proportion_interval(
    values: Sequence[float], clusters: Sequence[int], confidence: float = 0.95
) -> tuple[float, float, float]:
    """A rate over several answers per prompt, with a Wilson interval on Kish's effective sample size.

    ``values`` are 0/1 (or 0.5 for a tie). Answers to the same prompt are correlated, so n answers carry less
    information than n independent trials: the design effect (Kish 1965) is the variance of the rate across prompts,
    ``s_m^2 / m`` (s_m: the sample std of the m per-prompt rates), over the binomial ``p(1-p)/n``, and the Wilson
    interval (:func:`proportion_confidence_interval`) is taken on ``n_eff = p(1-p) / (s_m^2 / m)``, kept between m
    (answers to one prompt all alike) and n (all independent). When every prompt's rate is 0, or every one 1, the
    spread between prompts cannot be seen, and the interval counts prompts, not answers (n_eff = m). With one value
    per cluster it is :func:`proportion_confidence_interval` exactly.
    """
    xs = [float(v) for v in values]
    p, n_eff = clustered_proportion(xs, clusters)
    # One answer per prompt: the count itself, not p * n rounded back.
    successes = math.fsum(xs) if len(set(clusters)) == len(xs) else p * n_eff
    return proportion_confidence_interval(successes, n_eff, confidence)


def clustered_proportion(values: Sequence[float], clusters: Sequence[int]) -> tuple[float, float]:
    """The rate of ``values`` and its effective sample size under clustering (Kish 1965), as
    :func:`clustered_proportion_interval` describes: ``(p, n_eff)``, n_eff between the number of clusters and the
    number of values."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("a proportion needs at least one value")
    means = _cluster_means(xs, clusters)
    m = len(means)
    p = math.fsum(xs) / n
    if m == n:
        return p, float(n)
    centre = math.fsum(means) / m
    spread = math.fsum((x - centre) ** 2 for x in means) / (m - 1) / m if m > 1 else 0.0
    if p in (0.0, 1.0):
        return p, float(m)
    if spread == 0.0:
        return p, float(n)
    return p, min(float(n), max(float(m), p * (1 - p) / spread))


def detection_sensitivity(
    hit_rate: float, n_signal: float, false_alarm_rate: float, n_noise: float, confidence: float = 0.95
) -> dict[str, tuple[float, float, float]]:
    """Signal detection theory's sensitivity d' and criterion c of a yes/no judge, with normal intervals.

    For a policy deciding whether to refuse, a *hit* is refusing a harmful prompt and a *false alarm* refusing a safe
    one. The two rates alone confound two things: how well the policy tells the prompts apart, and how ready it is to
    refuse at all. Under the equal-variance Gaussian model (Green & Swets 1966; Macmillan & Creelman 2005, ch. 1-2)
    they separate as

        d' = z(H) - z(F)          (sensitivity: 0 = refuses both kinds alike)
        c  = -(z(H) + z(F)) / 2   (criterion: below 0, refuses readily; above 0, reluctantly)

    with z the standard normal quantile. A change that moves c alone moves along one trade-off curve (more harmful
    refusals cost more over-refusals); only a larger d' moves the curve. Rates are taken with the log-linear
    correction (Hautus 1995), ``(k + 0.5) / (n + 1)``, so 0 and 1 stay finite. Variances by the delta method
    (Gourevitch & Galanter 1967): ``var z(H) = H(1 - H) / (n phi(z(H))^2)``; ``var d' = var z(H) + var z(F)``,
    ``var c = var d' / 4``. ``n_signal`` / ``n_noise`` may be effective sample sizes (:func:`clustered_proportion`).

    Returns:
        ``{"d_prime": (value, low, high), "criterion": (value, low, high)}``.
    """
    if n_signal <= 0 or n_noise <= 0:
        raise ValueError(f"need n_signal > 0 and n_noise > 0, got {n_signal} and {n_noise}")
    if not (0.0 <= hit_rate <= 1.0 and 0.0 <= false_alarm_rate <= 1.0):
        raise ValueError(f"rates must lie in [0, 1], got {hit_rate} and {false_alarm_rate}")
    normal = NormalDist()

    def z_and_variance(rate: float, n: float) -> tuple[float, float]:
        corrected = (rate * n + 0.5) / (n + 1.0)
        z = normal.inv_cdf(corrected)
        return z, corrected * (1.0 - corrected) / (n * normal.pdf(z) ** 2)

    z_hit, var_hit = z_and_variance(hit_rate, n_signal)
    z_false, var_false = z_and_variance(false_alarm_rate, n_noise)
    d_prime, criterion = z_hit - z_false, -(z_hit + z_false) / 2.0
    half = normal.inv_cdf((1.0 + confidence) / 2.0) * math.sqrt(var_hit + var_false)
    return {
        "d_prime": (d_prime, d_prime - half, d_prime + half),
        "criterion": (criterion, criterion - half / 2.0, criterion + half / 2.0),
    }


def win_rate(
    scores_a: Sequence[float] | torch.Tensor,
    scores_b: Sequence[float] | torch.Tensor,
    confidence: float = 0.95,
    clusters: Sequence[int] | None = None,
) -> tuple[float, float, float]:
    """Rate at which A beats B on paired items (same prompt), ties counted as half a win, with a Wilson interval.

    The Wilson interval on the half-counted wins treats each item as a Bernoulli trial; with many ties it is
    conservative (a tie has less variance than a coin flip). Where several items answer one prompt (``clusters``:
    the prompt of each item), the interval is :func:`clustered_proportion_interval`'s.

    Args:
        scores_a: ``(n,)`` scores of system A (RM scores, judge scores, ...).
        scores_b: ``(n,)`` scores of system B on the same items.

    Returns:
        ``(rate, low, high)``.
    """
    a, b = _as_floats(scores_a), _as_floats(scores_b)
    if len(a) != len(b) or not a:
        raise ValueError(f"win_rate needs two non-empty paired score lists, got lengths {len(a)} and {len(b)}")
    wins = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]
    return clustered_proportion_interval(wins, range(len(a)) if clusters is None else clusters, confidence)


def pareto_front(points: Sequence[tuple[float, float]], maximize: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the non-dominated points, sorted by x (then by index).

    A point is dominated when another is at least as good on both axes and strictly better on one, so duplicates of a
    front point are all kept. Points with a NaN coordinate are never on the front.

    Args:
        points: ``(x, y)`` pairs, e.g. (harmlessness, helpfulness win rate) per checkpoint or sweep setting.
        maximize: per axis, whether larger is better.

    Returns:
        indices into ``points``.
    """
    signs = (1.0 if maximize[0] else -1.0, 1.0 if maximize[1] else -1.0)
    oriented = [(signs[0] * x, signs[1] * y) for x, y in points]
    valid = [i for i, (x, y) in enumerate(oriented) if not (math.isnan(x) or math.isnan(y))]

    def dominated(i: int) -> bool:
        xi, yi = oriented[i]
        return any(
            oriented[j][0] >= xi and oriented[j][1] >= yi and (oriented[j][0] > xi or oriented[j][1] > yi)
            for j in valid
        )

    return sorted((i for i in valid if not dominated(i)), key=lambda i: (points[i][0], i))


def pair_accuracy(n_correct: float, n_pairs: float) -> dict[str, float]:
    """Pairwise preference accuracy with its Wilson 95% interval, as the reward and DPO stages report it."""
    n = int(n_pairs)
    accuracy, low, high = proportion_confidence_interval(n_correct, n) if n else (math.nan,) * 3
    return {"eval_accuracy": accuracy, "eval_accuracy_ci_low": low, "eval_accuracy_ci_high": high, "num_pairs": n}
