"""Intervals for success rates and paired gains against hand-computed values."""

import math

import pytest

from prophrl_trainer.success_statistics import paired_gain, per_state_success, wilson_interval


def test_wilson_interval_matches_the_closed_form():
    # 2 of 20, z = 1.96: centre (0.1 + 1.96^2 / 40) / (1 + 1.96^2 / 20), half-width by the Wilson formula
    z = 1.959963984540054
    p, n = 0.1, 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    interval = wilson_interval(2, 20)
    assert interval.estimate == 0.1 and interval.n == 20
    assert interval.low == pytest.approx(centre - half) and interval.high == pytest.approx(centre + half)
    assert (round(100 * interval.low, 1), round(100 * interval.high, 1)) == (2.8, 30.1)
    # at 0 % the interval still has width (the normal approximation would give [0, 0])
    none = wilson_interval(0, 20)
    assert none.low == 0.0 and none.high == pytest.approx(z * z / n / (1 + z * z / n))
    assert wilson_interval(20, 20).high == 1.0 and wilson_interval(20, 20).low < 1.0
    assert wilson_interval(0, 0).n == 0 and (wilson_interval(0, 0).low, wilson_interval(0, 0).high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert wilson_interval(6, 20).percent() == "30.0 % [14.5, 51.9]"


def test_paired_gain_is_the_mean_state_difference_with_its_normal_interval():
    baseline = [0, 0, 1, 0, 1, 0, 0, 0, 1, 0]
    candidate = [0, 1, 1, 0, 1, 0, 1, 0, 1, 1]
    gain = paired_gain(baseline, candidate)
    differences = [c - b for b, c in zip(baseline, candidate)]   # three +1, seven 0
    mean = sum(differences) / 10
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 9)
    assert gain.estimate == pytest.approx(0.3) and gain.n == 10
    assert gain.high - gain.estimate == pytest.approx(1.959963984540054 * sd / math.sqrt(10))
    assert gain.excludes_zero()
    # the same gain on half the states is not resolved
    assert not paired_gain(baseline[:4], candidate[:4]).excludes_zero()
    # a zero gain with no spread says so instead of a zero-width interval
    assert paired_gain(baseline, baseline).percent(signed=True) == "+0.0 pts (the same outcome on every state)"
    assert paired_gain([0, 1], [1, 0]).percent(signed=True).startswith("+0.0 pts [-")
    with pytest.raises(ValueError, match="same states"):
        paired_gain([0, 1], [0, 1, 1])


def test_per_state_success_averages_runs_of_the_same_states():
    assert per_state_success([[True, False, True], [True, True, False]]) == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="same states"):
        per_state_success([[True], [True, False]])
