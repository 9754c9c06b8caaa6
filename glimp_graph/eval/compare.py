"""Paired comparisons of two jobs on the same problems, and where a routed job sends its steps."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any


@dataclass(frozen=True)
class Paired:
    """Two jobs graded on the same problems.

    Attributes:
        a: The first job's label.
        b: The second job's label.
        n: Problems both jobs finished without an error.
        both: Problems both got right.
        only_a: Problems only ``a`` got right.
        only_b: Problems only ``b`` got right.
        diff: Accuracy of ``a`` minus accuracy of ``b``.
        diff_se: Standard error of ``diff`` from the paired differences (smaller than the unpaired one when
            the jobs tend to fail on the same problems).
        p_value: Two-sided exact sign test (McNemar) on the problems where the jobs disagree.
    """

    a: str
    b: str
    n: int
    both: int
    only_a: int
    only_b: int
    diff: float
    diff_se: float
    p_value: float


def sign_test(k: int, n: int) -> float:
    """Two-sided exact binomial test of ``k`` successes in ``n`` trials against p = 1/2.

    Raises:
        ValueError: ``k`` is not in ``[0, n]``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(records: Iterable[dict[str, Any]], a: str, b: str) -> Paired:
    """Compare jobs ``a`` and ``b`` (labels as in the records' ``job``) on the problems both finished.

    Raises:
        ValueError: The jobs share no finished problem.
    """
    runs: dict[str, dict[str, bool]] = {a: {}, b: {}}
    for r in records:
        if r.get("job") in runs and not r.get("error"):
            runs[r["job"]][r["id"]] = bool(r["correct"])
    common = sorted(set(runs[a]) & set(runs[b]))
    if not common:
        raise ValueError(f"jobs {a!r} and {b!r} share no finished problem")
    diffs = [int(runs[a][i]) - int(runs[b][i]) for i in common]
    n = len(common)
    only_a = diffs.count(1)
    only_b = diffs.count(-1)
    both = sum(runs[a][i] and runs[b][i] for i in common)
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan
    return Paired(a, b, n, both, only_a, only_b, sum(diffs) / n, se, sign_test(only_a, only_a + only_b))


def routing_profile(records: Iterable[dict[str, Any]], job: str) -> dict[str, Any]:
    """Where job ``job`` sent its steps: the large-step share by position, writer switches, accuracy by case.

    Returns:
        ``first``, ``middle``, ``last``: large-step share of the first step, the steps between, the last step;
        ``switches``: mean changes of writer per run; ``accuracy_first_large`` / ``accuracy_first_small``:
        accuracy of the runs whose first step the large / small model wrote (``None`` when there is no such
        run); ``runs``: runs counted.
    """
    first: list[bool] = []
    middle: list[bool] = []
    last: list[bool] = []
    switches: list[int] = []
    by_first: dict[bool, list[bool]] = {True: [], False: []}
    for r in records:
        if r.get("job") != job or r.get("error") or not r.get("step_records"):
            continue
        large = [s["model"] == "large" for s in r["step_records"]]
        first.append(large[0])
        last.append(large[-1])
        middle.extend(large[1:-1])
        switches.append(sum(x != y for x, y in pairwise(large)))
        by_first[large[0]].append(bool(r["correct"]))

    def share(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "runs": len(first),
        "first": share(first),
        "middle": share(middle),
        "last": share(last),
        "switches": statistics.mean(switches) if switches else None,
        "accuracy_first_large": share(by_first[True]),
        "accuracy_first_small": share(by_first[False]),
    }
