"""The strategies an evaluation compares, all as settings of the same graph."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from glimp_graph.scorers import Random


@dataclass(frozen=True)
class Strategy:
    """A named way to run the graph.

    Attributes:
        name: The strategy's name.
        scorer: The scorer's name.
        default_threshold: The threshold used when none is given (``None``: the strategy has none).
        description: One line for reports.
    """

    name: str
    scorer: str
    default_threshold: float | None
    description: str

    def config(self, threshold: float | None, seed: int = 0) -> dict[str, Any]:
        """The :class:`~glimp_graph.GlimpConfig` fields for this strategy at ``threshold``."""
        if self.name == "small-only":
            return {"scorer": "fixed", "tau": math.inf, "final_model": "small"}
        if self.name == "large-only":
            return {"scorer": "fixed", "tau": -math.inf}
        tau = self.default_threshold if threshold is None else threshold
        scorer: Any = Random(seed=seed) if self.scorer == "random" else self.scorer
        return {"scorer": scorer, "tau": tau}


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("glimp", "glimp", 1.0, "GlimpRouter: entropy of the small model's first token of the step"),
        Strategy("small-only", "fixed", None, "the small model alone (it also writes the final answer)"),
        Strategy("large-only", "fixed", None, "the large model alone"),
        Strategy("random", "random", 0.75, "random routing; the threshold is the share of small steps"),
        Strategy("step-entropy", "step-entropy", 0.5, "small drafts the step; mean token entropy decides"),
        Strategy("step-perplexity", "step-perplexity", 1.5, "small drafts the step; its perplexity decides"),
        Strategy("specreason", "specreason", 2.0, "small drafts, the large model judges 0-9 (score 9 - verdict)"),
    )
}
"""The strategies by name."""
