"""alignment.core.stats against table values and hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from alignment.core.stats import (
    clustered_mean_interval,
    clustered_proportion,
    clustered_proportion_interval,
    detection_sensitivity,
    mean_confidence_interval,
    pareto_front,
    proportion_confidence_interval,
    student_t_cdf,
    student_t_quantile,
    win_rate,
)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.975, 9, 2.262157), (0.975, 1, 12.706205), (0.95, 4, 2.131847), (0.995, 29, 2.756386), (0.975, 1000, 1.962339)],
)
def test_t_quantile_table_values(p: float, df: int, expected: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=1e-5)
    assert student_t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-5)
    assert student_t_cdf(expected, df) == pytest.approx(p, abs=1e-6)


def test_mean_confidence_interval_by_hand() -> None:
    # 1..10: mean 5.5, s = sqrt(82.5 / 9) = 3.0276504, s / sqrt(10) = 0.9574271, half width 2.2621572 * 0.9574271 = 2.16585
    mean, low, high = mean_confidence_interval(list(range(1, 11)))
    assert mean == pytest.approx(5.5)
    assert (low, high) == (pytest.approx(3.33415, abs=1e-5), pytest.approx(7.66585, abs=1e-5))
    assert mean_confidence_interval(torch.arange(1.0, 11.0))[1] == pytest.approx(low)
    single = mean_confidence_interval([4.0])
    assert single[0] == 4.0 and math.isnan(single[1]) and math.isnan(single[2])
    with pytest.raises(ValueError):
        mean_confidence_interval([])


def test_wilson_interval_known_values() -> None:
    # 8/10: z = 1.959964, z^2 = 3.841459; centre (0.8 + 0.192073) / 1.384146 = 0.716741,
    # half width 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 0.226578 -> (0.490163, 0.943319)
    p, low, high = proportion_confidence_interval(8, 10)
    assert p == 0.8
    assert (low, high) == (pytest.approx(0.490163, abs=1e-5), pytest.approx(0.943319, abs=1e-5))
    # 0/10: lower bound 0, upper z^2 / (n + z^2) = 3.841459 / 13.841459 = 0.277533
    _, low, high = proportion_confidence_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.277533, abs=1e-5)
    with pytest.raises(ValueError):
        proportion_confidence_interval(11, 10)


def test_win_rate_counts_ties_as_half() -> None:
    # win, tie, loss, win -> 2.5 / 4
    rate, low, high = win_rate([3.0, 2.0, 1.0, 5.0], [1.0, 2.0, 4.0, 0.0])
    assert rate == 0.625
    assert (low, high) == pytest.approx(proportion_confidence_interval(2.5, 4)[1:])
    assert low < 0.625 < high
    assert win_rate(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))[0] == 0.5
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def test_clustered_proportion_counts_prompts_not_answers_where_answers_agree() -> None:
    """Kish's effective sample size, by hand: n_eff = p(1-p) / (s_m^2 / m), kept within [m, n]."""
    pairs = [0, 0, 1, 1, 2, 2, 3, 3]  # 4 prompts, 2 answers each
    # One answer per prompt: the plain Wilson interval.
    assert clustered_proportion_interval([1, 0, 1], [0, 1, 2]) == proportion_confidence_interval(2, 3)
    # Each prompt's answers alike: means 1, 0, 1, 0; p = 0.5, s_m^2 = 1/3, s_m^2 / m = 1/12, n_eff = 3 -> kept at m = 4.
    assert clustered_proportion_interval([1, 1, 0, 0, 1, 1, 0, 0], pairs) == proportion_confidence_interval(2, 4)
    # Means 1, 0.5, 0.5, 0: s_m^2 = 0.5 / 3, s_m^2 / m = 1/24, n_eff = 0.25 * 24 = 6: Wilson on 3 of 6.
    rate, low, high = clustered_proportion_interval([1, 1, 1, 0, 0, 1, 0, 0], pairs)
    assert rate == 0.5 and (low, high) == pytest.approx(proportion_confidence_interval(3, 6)[1:])
    # Every prompt at 0.5: no spread between prompts, the answers count as independent (n_eff = n = 8).
    assert clustered_proportion_interval([1, 0, 1, 0, 0, 1, 0, 1], pairs) == proportion_confidence_interval(4, 8)
    # No refusal at all: the spread cannot be seen, so the interval counts the 4 prompts, not the 8 answers.
    assert clustered_proportion_interval([0] * 8, pairs) == proportion_confidence_interval(0, 4)
    assert proportion_confidence_interval(0, 4)[2] > proportion_confidence_interval(0, 8)[2]


def test_clustered_mean_and_win_rate_take_one_value_per_prompt() -> None:
    # Means 2 and 6: the t-interval of two values, not of four.
    assert clustered_mean_interval([1.0, 3.0, 5.0, 7.0], [0, 0, 1, 1]) == mean_confidence_interval([2.0, 6.0])
    assert clustered_mean_interval([1.0, 3.0], [0, 1]) == mean_confidence_interval([1.0, 3.0])
    # Wins 1, 1 | 0, 0.5: rate 0.625; per prompt 1 and 0.25.
    rate, low, high = win_rate([3.0, 3.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], clusters=[0, 0, 1, 1])
    assert rate == 0.625
    assert (rate, low, high) == clustered_proportion_interval([1.0, 1.0, 0.0, 0.5], [0, 0, 1, 1])


def test_pareto_front_hand_drawn() -> None:
    points = [
        (1.0, 5.0),  # 0 front
        (2.0, 4.0),  # 1 front
        (2.0, 4.0),  # 2 duplicate of 1: also front
        (1.5, 3.0),  # 3 dominated by 1
        (3.0, 1.0),  # 4 front
        (0.5, 5.0),  # 5 dominated by 0 (same y, smaller x)
        (3.0, 0.5),  # 6 dominated by 4 (same x, smaller y)
        (math.nan, 9.0),  # 7 never on the front
    ]
    assert pareto_front(points) == [0, 1, 2, 4]
    # minimise x (e.g. harmful rate), maximise y (helpfulness): 5 dominates everything except the new point 8
    assert pareto_front([*points[:7], (0.2, 2.0)], maximize=(False, True)) == [7, 5]
    assert pareto_front([]) == []


@pytest.mark.parametrize("n", [5, 10, 13, 15, 17, 19, 20, 33, 34, 35, 38, 52])
def test_wilson_bounds_hold_the_estimate_exactly_at_zero_and_one(n):
    """Rounding once gave low = 1e-17 at 0/n and high = 0.9999999999999999 at n/n: negative error bars in plots."""
    assert proportion_confidence_interval(0, n)[:2] == (0.0, 0.0)
    p, _, high = proportion_confidence_interval(n, n)
    assert p == high == 1.0


def test_detection_sensitivity_by_hand() -> None:
    # 30 of 40 harmful prompts refused, 4 of 40 safe ones. Log-linear correction: H = 30.5 / 41, F = 4.5 / 41.
    # z(0.743902) = 0.655424, z(0.109756) = -1.227826 (normal quantiles), phi of them 0.321831 and 0.187736.
    stats = detection_sensitivity(30 / 40, 40, 4 / 40, 40)
    d_prime, low, high = stats["d_prime"]
    assert d_prime == pytest.approx(0.655424 + 1.227826, abs=1e-5)
    var = 0.743902 * 0.256098 / (40 * 0.321831**2) + 0.109756 * 0.890244 / (40 * 0.187736**2)
    assert high - d_prime == pytest.approx(1.959964 * math.sqrt(var), abs=1e-4)
    assert d_prime - low == pytest.approx(high - d_prime)
    c, c_low, c_high = stats["criterion"]
    assert c == pytest.approx(-(0.655424 - 1.227826) / 2, abs=1e-5)  # > 0: refuses reluctantly
    assert c_high - c == pytest.approx((high - d_prime) / 2)


def test_detection_sensitivity_separates_the_curve_from_the_point_on_it() -> None:
    # Refusing more of both kinds along one curve keeps d' and lowers c: 40% / 10% and 70.8% / 31.5% are
    # z = -0.253 / -1.282 and z = 0.547 / -0.482, both shifted by 0.8. Zero counts stay finite.
    base = detection_sensitivity(0.4, 64, 0.1, 64)
    shifted = detection_sensitivity(0.7077, 64, 0.3151, 64)
    assert shifted["criterion"][0] < base["criterion"][0] - 0.7
    assert shifted["d_prime"][0] == pytest.approx(base["d_prime"][0], abs=0.03)
    never = detection_sensitivity(0.0, 16, 0.0, 16)
    assert never["d_prime"][0] == pytest.approx(0.0) and math.isfinite(never["criterion"][0])
    assert detection_sensitivity(1.0, 16, 0.0, 16)["d_prime"][0] > 3.0
    with pytest.raises(ValueError, match="n_signal > 0"):
        detection_sensitivity(0.5, 0, 0.5, 10)


def test_clustered_proportion_gives_the_effective_size_its_interval_uses() -> None:
    values = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0]  # three prompts, four answers each: all, none, half
    clusters = [0] * 4 + [1] * 4 + [2] * 4
    p, n_eff = clustered_proportion(values, clusters)
    assert p == pytest.approx(0.5)
    # per-prompt rates 1, 0, 0.5: s_m^2 = 0.25, spread 0.25 / 3; n_eff = 0.25 / (0.25 / 3) = 3 (the prompts)
    assert n_eff == pytest.approx(3.0)
    assert clustered_proportion_interval(values, clusters) == proportion_confidence_interval(1.5, 3.0)
    assert clustered_proportion([1, 0, 1], [0, 1, 2]) == (pytest.approx(2 / 3), 3.0)
