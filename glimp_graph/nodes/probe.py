"""The ``probe`` node: glimpse at the next step with the configured scorer (GlimpRouter: ONE small-model token)."""

from __future__ import annotations

import math

from glimp_graph.errors import EndpointError
from glimp_graph.nodes.common import (
    NodeLogic,
    Router,
    conversation,
    small_failed,
    step_budget,
    steps_of,
    trace_metadata,
    trace_prefix,
)
from glimp_graph.scorers import Probe, StepContext
from glimp_graph.state import GlimpState


def probe(state: GlimpState, router: Router) -> NodeLogic:
    """Score the next step before routing it; GlimpRouter's scorer estimates the entropy of its first token.

    While the small model is down (or when its server fails now and the run falls back), no model is called and
    the step is forced to the large model.
    """
    index = len(steps_of(state))
    down = state.get("glimp_small_down")
    update: GlimpState = {}
    result: Probe | None = None
    if not down:
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
            down = small_failed(router, exc) if exc.role == "small" else None
            if down is None:
                raise
            update["glimp_small_down"] = down
    if result is None:
        result = Probe.no_call(index, router.scorer.name, math.inf, forced="large", note=down)
    called = result.kind != "none"
    return {
        **update,
        "glimp_probe": result,
        "glimp_probes": state.get("glimp_probes", 0) + int(called),
        "glimp_probe_seconds": state.get("glimp_probe_seconds", 0.0) + result.seconds,
        "glimp_small_tokens": state.get("glimp_small_tokens", 0) + result.tokens,
        "glimp_large_tokens": state.get("glimp_large_tokens", 0) + result.large_tokens,
    }
