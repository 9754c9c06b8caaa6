"""The ``probe`` node: glimpse at the next step with the configured scorer (GlimpRouter: ONE small-model token)."""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

from langchain_core.runnables import RunnableConfig

from glimp_graph.endpoints import Call, Completion
from glimp_graph.errors import EndpointError
from glimp_graph.nodes.common import (
    Router,
    conversation,
    small_failed,
    step_budget,
    steps_of,
    trace_metadata,
    trace_prefix,
)
from glimp_graph.scorers import StepContext
from glimp_graph.state import Probe


def _forced_large(index: int, scorer: str, note: str) -> Probe:
    return Probe(
        index=index,
        kind="none",
        token="",
        eos=False,
        h_init=None,
        score=math.inf,
        scorer=scorer,
        tokens=0,
        seconds=0.0,
        forced="large",
        note=note,
    )


def probe(state: dict[str, Any], config: RunnableConfig, *, router: Router) -> Generator[Call, Completion, dict]:
    """Score the next step before routing it; GlimpRouter's scorer estimates the entropy of its first token."""
    index = len(steps_of(state))
    down = state.get("glimp_small_down")
    update: dict[str, Any] = {}
    if down:
        result = _forced_large(index, router.scorer.name, down)
    else:
        ctx = StepContext(
            index=index,
            question=state["glimp_question"],
            messages=conversation(state, router),
            prefix=trace_prefix(state, router),
            max_tokens=step_budget(state, router),
            delimiter=router.config.delimiter,
            top_k=router.config.top_k,
            metadata=trace_metadata(state, index, glimp_scorer=router.scorer.name),
            small=router.small,
            large=router.large,
            estimate=router.config.estimate,
        )
        try:
            result = yield from router.scorer.glimpse(ctx)
        except EndpointError as exc:
            reason = small_failed(router, exc) if exc.role == "small" else None
            if reason is None:
                raise
            result = _forced_large(index, router.scorer.name, reason)
            update["glimp_small_down"] = reason
    called = result.kind != "none"
    return {
        **update,
        "glimp_probe": result,
        "glimp_probes": state.get("glimp_probes", 0) + int(called),
        "glimp_probe_seconds": state.get("glimp_probe_seconds", 0.0) + result.seconds,
        "glimp_small_tokens": state.get("glimp_small_tokens", 0) + result.tokens,
        "glimp_large_tokens": state.get("glimp_large_tokens", 0) + result.large_tokens,
    }
