"""Robust statistics: Wilson intervals, bootstrap intervals, per-problem ratios, stalled steps."""

from __future__ import annotations

import statistics

import pytest

from glimp_graph.eval import bootstrap_intervals, find_stalls, geometric_mean, ratio_summary, wilson_interval
from glimp_graph.eval.stats import two_proportion_p


def test_wilson_interval_known_values_and_edges():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    low, high = wilson_interval(24, 100)
    assert low < 0.24 < high
    assert wilson_interval(24, 100, confidence=0.5)[1] < high  # a lower confidence gives a narrower interval
    with pytest.raises(ValueError, match="successes=11, n=10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence must be in"):
        wilson_interval(1, 10, confidence=1.0)


def test_geometric_mean():
    assert geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="positive"):
        geometric_mean([1.0, 0.0])
    with pytest.raises(ValueError, match="positive"):
        geometric_mean([])


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    values = [float(v) for v in range(1, 30)]
    one = bootstrap_intervals(values, [statistics.median, statistics.mean], resamples=300, seed=1)
    assert one == bootstrap_intervals(values, [statistics.median, statistics.mean], resamples=300, seed=1)
    assert one != bootstrap_intervals(values, [statistics.median, statistics.mean], resamples=300, seed=2)
    (m_low, m_high), (a_low, a_high) = one
    assert m_low <= statistics.median(values) <= m_high and a_low <= statistics.mean(values) <= a_high
    assert bootstrap_intervals([3.0] * 5, [statistics.median], resamples=50) == [(3.0, 3.0)]
    with pytest.raises(ValueError, match="no values"):
        bootstrap_intervals([], [statistics.median])


def test_ratio_summary_median_resists_one_slow_problem_the_mean_does_not():
    base = [10.0] * 20
    faster = [8.0] * 20
    s = ratio_summary(faster, base, resamples=200)
    assert (s.median, s.geomean, s.mean_ratio) == pytest.approx((0.8, 0.8, 0.8))
    assert s.median_ci == pytest.approx((0.8, 0.8)) and s.n == 20
    stalled = [*base[:-1], 130.0]  # the baseline stalls once
    t = ratio_summary(faster, stalled, resamples=200)
    assert t.median == pytest.approx(0.8)
    assert t.mean_ratio < 0.6  # the ratio of means is dragged by the one stall
    with pytest.raises(ValueError, match="as many"):
        ratio_summary([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        ratio_summary([0.0], [1.0])


def test_two_proportion_p():
    assert two_proportion_p(10, 20, 10, 20) == pytest.approx(1.0)
    assert two_proportion_p(0, 20, 0, 20) == 1.0
    assert two_proportion_p(18, 20, 2, 20) < 0.001
    with pytest.raises(ValueError):
        two_proportion_p(3, 2, 1, 2)


def _steps(model: str, per_token: list[float], tokens: int = 20) -> list[dict]:
    return [{"model": model, "tokens": tokens, "seconds": p * tokens} for p in per_token]


def test_find_stalls_flags_a_step_far_slower_than_its_job_and_model():
    records = [
        {"job": "large-only", "id": f"p{i}", "row": i, "error": None, "step_records": _steps("large", [0.028] * 4)}
        for i in range(5)
    ]
    records[3]["step_records"][1]["seconds"] = 20 * 0.028 * 95  # 95x slower per token
    records.append(  # an error record is never counted
        {"job": "large-only", "id": "px", "error": "boom", "step_records": _steps("large", [9.0])}
    )
    stalls = find_stalls(records)
    assert [(s.job, s.id, s.row, s.step, s.model, s.tokens) for s in stalls] == [
        ("large-only", "p3", 3, 2, "large", 20)
    ]
    assert stalls[0].factor == pytest.approx(95)
    assert find_stalls(records, factor=100) == []
    with pytest.raises(ValueError, match="factor"):
        find_stalls(records, factor=1)


def test_find_stalls_takes_the_median_per_model_so_a_routed_jobs_slow_large_steps_are_not_stalls():
    # a routed job: mostly small steps at 17 ms/token, a few large ones at 8x that (catch-up after a switch);
    # a job-wide median would call every large step a stall at a lower factor, the per-model median does not
    steps = _steps("small", [0.017] * 12) + _steps("large", [0.136, 0.14, 0.15])
    records = [{"job": "glimp", "id": "p0", "error": None, "step_records": steps}]
    assert find_stalls(records, factor=5) == []
    steps.append({"model": "small", "tokens": 0, "seconds": 3.0})  # a step that produced nothing for 3 s
    assert [s.step for s in find_stalls(records)] == [16]
