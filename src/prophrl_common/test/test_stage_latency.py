"""StageLatencies: per-stage rolling percentiles, as the policy node logs and publishes them."""

import pytest

from prophrl_common.stage_latency import StageLatencies


def test_percentiles_per_stage_over_a_rolling_window():
    latencies = StageLatencies(("prepare", "inference"), window=4)
    for value in (100.0, 1.0, 2.0, 3.0, 5.0):  # the first falls out of the window
        latencies.add(prepare=value / 10, inference=value)
    assert latencies.count("inference") == 4
    p50, p95 = latencies.percentiles()["inference"]
    assert p50 == pytest.approx(2.5) and p95 == pytest.approx(4.7)
    assert dict(latencies.key_values())["prepare_p50_ms"] == "0.250"
    assert latencies.summary() == "prepare 0.2/0.5, inference 2.5/4.7"


def test_stages_without_values_are_left_out_and_unknown_stages_refused():
    latencies = StageLatencies(("frame_age", "inference"))
    latencies.add(inference=5.0)
    assert set(latencies.percentiles()) == {"inference"}
    with pytest.raises(KeyError, match="unknown stages"):
        latencies.add(infrence=1.0)
    with pytest.raises(ValueError):
        StageLatencies(("a", "a"))
