"""Threshold calibration: pick tau for a target share of large-model steps (RouteLLM's idea, per step)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from glimp_graph.endpoints import Endpoint
from glimp_graph.eval.data import Problem
from glimp_graph.eval.stats import quantile
from glimp_graph.graph import create_glimp_graph
from glimp_graph.scorers import Scorer


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold.

    Attributes:
        scorer: The scorer calibrated (its name, or its repr when it was given as an instance).
        target_large_share: The share of large-model steps asked for.
        tau: The threshold: steps scoring above it go to the large model.
        scores: The step scores observed on the calibration problems.
        problems: Number of calibration problems.
    """

    scorer: str
    target_large_share: float
    tau: float
    scores: list[float] = field(repr=False)
    problems: int

    def share_above(self, tau: float | None = None) -> float:
        """Share of the calibration scores above ``tau`` (default: the calibrated one)."""
        tau = self.tau if tau is None else tau
        return sum(s > tau for s in self.scores) / len(self.scores) if self.scores else 0.0


async def collect_scores(
    small: Endpoint,
    large: Endpoint,
    problems: Sequence[Problem],
    *,
    scorer: str | Scorer,
    base_config: dict[str, Any] | None = None,
    concurrency: int = 1,
) -> list[float]:
    """Score every step of the small model's own reasoning (``tau=inf``) on ``problems``."""
    graph = create_glimp_graph(small, large, config={**(base_config or {}), "scorer": scorer, "tau": math.inf})
    gate = asyncio.Semaphore(concurrency)

    async def one(problem: Problem) -> list[float]:
        async with gate:
            out = await graph.ainvoke({"question": problem.question})
        return [s.score for s in out["glimp_steps"]]

    per_problem = await asyncio.gather(*(one(p) for p in problems))
    return [s for scores in per_problem for s in scores]


async def calibrate(
    small: Endpoint,
    large: Endpoint,
    problems: Sequence[Problem],
    *,
    scorer: str | Scorer = "glimp",
    target_large_share: float = 0.25,
    base_config: dict[str, Any] | None = None,
    concurrency: int = 1,
) -> Calibration:
    """Choose tau so that about ``target_large_share`` of the steps score above it.

    Args:
        small: The small model's endpoint.
        large: The large model's endpoint.
        problems: Calibration problems (keep them apart from the evaluation problems).
        scorer: The scorer to calibrate: a name or an instance (e.g. ``TokenEntropy(tokens=4)``).
        target_large_share: Wanted share of large-model steps, in (0, 1).
        base_config: Other settings (budgets, prompt).
        concurrency: Runs in flight at once.

    Returns:
        The calibration, with the observed scores.
    """
    if not 0.0 < target_large_share < 1.0:
        raise ValueError(f"target_large_share must be in (0, 1), got {target_large_share}")
    label = scorer if isinstance(scorer, str) else repr(scorer)
    if getattr(scorer, "name", scorer) == "random":  # its score is uniform: the share is the threshold
        return Calibration(label, target_large_share, 1.0 - target_large_share, [], len(problems))
    scores = await collect_scores(
        small, large, problems, scorer=scorer, base_config=base_config, concurrency=concurrency
    )
    tau = quantile(scores, 1.0 - target_large_share)
    return Calibration(label, target_large_share, tau, scores, len(problems))
