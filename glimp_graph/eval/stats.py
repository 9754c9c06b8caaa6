"""Robust statistics of an evaluation: intervals for accuracy and latency ratios, and stalled steps.

Pure Python (no NumPy or SciPy), seeded where it resamples, so that a report renders the same numbers twice.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
"""The confidence of every interval this module computes by default."""
RESAMPLES = 2000
"""Bootstrap resamples by default."""
STALL_FACTOR = 10.0
"""A step is stalled when its time per token is over this many times the median of its job and model."""


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of ``values`` at ``q`` in [0, 1].

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no values to take a quantile of")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (stays inside [0, 1] and is not empty at 0 or n successes).

    Args:
        successes: Successes observed.
        n: Trials.
        confidence: Coverage of the interval.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: ``n`` is not positive or ``successes`` is not in ``[0, n]``.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}")
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def geometric_mean(values: Iterable[float]) -> float:
    """Geometric mean of positive values.

    Raises:
        ValueError: ``values`` is empty or holds a value that is not positive.
    """
    values = list(values)
    if not values or min(values) <= 0:
        raise ValueError(f"the geometric mean needs positive values, got {values[:5]}")
    return math.exp(math.fsum(map(math.log, values)) / len(values))


def bootstrap_intervals(
    values: Sequence[float],
    estimators: Sequence[Callable[[list[float]], float]],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """Percentile bootstrap intervals of several estimators over the same resamples of ``values``.

    Args:
        values: The sample (e.g. one latency ratio per problem).
        estimators: Functions of a resample, e.g. :func:`statistics.median`.
        resamples: Number of resamples (with replacement, of the sample's size).
        confidence: Coverage of each interval.
        seed: Seed of the resampling: the same seed gives the same intervals.

    Returns:
        One ``(low, high)`` per estimator.

    Raises:
        ValueError: ``values`` is empty or ``resamples`` is below 1.
    """
    if not values:
        raise ValueError("no values to bootstrap")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _z(confidence)  # checks it
    rng = random.Random(seed)
    values = list(values)
    draws: list[list[float]] = [[] for _ in estimators]
    for _ in range(resamples):
        sample = rng.choices(values, k=len(values))
        for out, estimator in zip(draws, estimators, strict=True):
            out.append(estimator(sample))
    tail = (1.0 - confidence) / 2
    return [(quantile(d, tail), quantile(d, 1.0 - tail)) for d in draws]


@dataclass(frozen=True)
class RatioSummary:
    """Per-problem ratios ``a_i / b_i`` of two jobs' latencies on the same problems.

    Attributes:
        n: Problems.
        median: Median of the ratios.
        median_ci: Bootstrap interval of the median.
        geomean: Geometric mean of the ratios.
        geomean_ci: Bootstrap interval of the geometric mean.
        mean_ratio: Ratio of the means (``sum(a) / sum(b)``): one slow problem moves it.
    """

    n: int
    median: float
    median_ci: tuple[float, float]
    geomean: float
    geomean_ci: tuple[float, float]
    mean_ratio: float


def ratio_summary(
    numerators: Sequence[float],
    denominators: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> RatioSummary:
    """Median and geometric mean of the per-problem ratios, with bootstrap intervals, and the ratio of means.

    Args:
        numerators: One job's latencies.
        denominators: The other job's latencies on the same problems, in the same order.
        resamples: Bootstrap resamples.
        confidence: Coverage of the intervals.
        seed: Seed of the bootstrap.

    Raises:
        ValueError: The sequences are empty, differ in length, or hold a latency that is not positive.
    """
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"need as many numerators as denominators (> 0), got {len(numerators)}, {len(denominators)}")
    if min(numerators) <= 0 or min(denominators) <= 0:
        raise ValueError("latencies must be positive to take their ratios")
    logs = [math.log(a / b) for a, b in zip(numerators, denominators, strict=True)]

    def median(sample: list[float]) -> float:
        return math.exp(statistics.median(sample))

    def geomean(sample: list[float]) -> float:
        return math.exp(math.fsum(sample) / len(sample))

    median_ci, geomean_ci = bootstrap_intervals(
        logs, [median, geomean], resamples=resamples, confidence=confidence, seed=seed
    )
    return RatioSummary(
        n=len(logs),
        median=median(logs),
        median_ci=median_ci,
        geomean=geomean(logs),
        geomean_ci=geomean_ci,
        mean_ratio=math.fsum(numerators) / math.fsum(denominators),
    )


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test of ``k1/n1`` against ``k2/n2``.

    Raises:
        ValueError: A count is out of range.
    """
    if n1 <= 0 or n2 <= 0 or not 0 <= k1 <= n1 or not 0 <= k2 <= n2:
        raise ValueError(f"need 0 <= k <= n and n > 0, got {k1}/{n1} and {k2}/{n2}")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = abs(k1 / n1 - k2 / n2) / se
    return 2 * (1 - statistics.NormalDist().cdf(z))


@dataclass(frozen=True)
class Stall:
    """A step that ran far slower per token than its job's other steps on the same model.

    Attributes:
        job: The job's label.
        id: The problem's id.
        row: The problem's row in its file (``None`` when the record does not say).
        step: The step's position in the run, from 1.
        model: Which model wrote it.
        seconds: The step's time.
        tokens: Tokens it generated.
        per_token_s: ``seconds / max(tokens, 1)``.
        median_per_token_s: The median of that over the job's steps on the same model.
    """

    job: str
    id: str
    row: int | None
    step: int
    model: str
    seconds: float
    tokens: int
    per_token_s: float
    median_per_token_s: float

    @property
    def factor(self) -> float:
        """How many times the median time per token the step took."""
        return self.per_token_s / self.median_per_token_s


def find_stalls(records: Iterable[dict[str, Any]], *, factor: float = STALL_FACTOR) -> list[Stall]:
    """The steps whose time per token is over ``factor`` times their job's median for the same model.

    The median is taken per job *and model*: the two servers differ in speed by design, and a step that
    follows a switch pays for reading the other model's text, so a median over both would flag ordinary
    large-model steps of a routed job; a stall (a server that froze, a machine that was busy) stands out
    against its own model's steps.

    Args:
        records: Evaluation records (records with an error are left out).
        factor: The threshold, in medians.

    Returns:
        The stalled steps, in record order.
    """
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    by_model: dict[tuple[str, str], list[tuple[int, int, dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for index, r in enumerate(records):
        if r.get("error"):
            continue
        for number, step in enumerate(r.get("step_records") or [], start=1):
            if step.get("seconds", 0) > 0:
                by_model[(r["job"], step["model"])].append((index, number, r, step))
    found: list[tuple[int, int, Stall]] = []
    for (job, model), group in by_model.items():
        per_token = [step["seconds"] / max(step.get("tokens", 0), 1) for *_, step in group]
        median = statistics.median(per_token)
        for (index, number, r, step), value in zip(group, per_token, strict=True):
            if value > factor * median:
                tokens = step.get("tokens", 0)
                stall = Stall(job, str(r["id"]), r.get("row"), number, model, step["seconds"], tokens, value, median)
                found.append((index, number, stall))
    return [stall for *_, stall in sorted(found, key=lambda x: (x[0], x[1]))]
