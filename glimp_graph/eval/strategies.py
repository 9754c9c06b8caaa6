"""The strategies an evaluation compares, all as settings of the same graph."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from glimp_graph.scorers import Random, TokenEntropy


@dataclass(frozen=True)
class Strategy:
    """A named way to run the graph.

    Attributes:
        name: The strategy's name.
        scorer: The scorer's name.
        default_threshold: The threshold used when none is given (``None``: the strategy has none).
        description: One line for reports.
        glimpse: Tokens the ``glimp`` scorer glimpses (1: the paper's method).
    """

    name: str
    scorer: str
    default_threshold: float | None
    description: str
    glimpse: int = 1

    def config(self, threshold: float | None, seed: int = 0) -> dict[str, Any]:
        """The :class:`~glimp_graph.GlimpConfig` fields for this strategy at ``threshold``."""
        if self.name == "small-only":
            return {"scorer": "fixed", "tau": math.inf, "final_model": "small"}
        if self.name == "large-only":
            return {"scorer": "fixed", "tau": -math.inf}
        tau = self.default_threshold if threshold is None else threshold
        scorer: Any = self.scorer
        if self.scorer == "random":
            scorer = Random(seed=seed)
        elif self.scorer == "glimp" and self.glimpse > 1:
            scorer = TokenEntropy(tokens=self.glimpse)
        return {"scorer": scorer, "tau": tau}


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("glimp", "glimp", 1.0, "GlimpRouter: entropy of the small model's first token of the step"),
        Strategy(
            "glimp-4",
            "glimp",
            1.0,
            "GlimpRouter with a 4-token glimpse: the highest entropy among the step's first tokens (an extension)",
            glimpse=4,
        ),
        Strategy("small-only", "fixed", None, "the small model alone (it also writes the final answer)"),
        Strategy("large-only", "fixed", None, "the large model alone"),
        Strategy("random", "random", 0.75, "random routing; the threshold is the share of small steps"),
        Strategy("step-entropy", "step-entropy", 0.5, "small drafts the step; mean token entropy decides"),
        Strategy("step-perplexity", "step-perplexity", 1.5, "small drafts the step; its perplexity decides"),
        Strategy("specreason", "specreason", 2.0, "small drafts, the large model judges 0-9 (score 9 - verdict)"),
    )
}
"""The strategies by name."""


def resolve_scorer(name: str) -> Any:
    """The ``scorer`` setting for ``name``: a routed strategy's scorer (``"glimp-4"``), else ``name`` itself."""
    strategy = STRATEGIES.get(name)
    if strategy is not None and strategy.scorer != "fixed":
        return strategy.config(None)["scorer"]
    return name
