"""The ``probe`` node: the small model decodes ONE token of the next step; its entropy is H_init."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from langchain_core.runnables import RunnableConfig

from glimp_graph.endpoints import Completion, Request
from glimp_graph.nodes._driver import Call
from glimp_graph.nodes.common import Router, conversation, steps_of, trace_metadata, trace_prefix
from glimp_graph.state import Probe


def probe(state: dict[str, Any], config: RunnableConfig, *, router: Router) -> Generator[Call, Completion, dict]:
    """Glimpse the first token of the next step and estimate its entropy."""
    index = len(steps_of(state))
    request = Request(
        messages=conversation(state, router),
        prefix=trace_prefix(state, router),
        max_tokens=1,
        temperature=0.0,
        top_p=1.0,
        top_logprobs=router.config.top_k,
        run_name="probe",
        metadata=trace_metadata(state, index),
    )
    done = yield router.small, request
    top = done.top_logprobs or []
    result = Probe(
        index=index,
        token=done.text,
        eos=done.end != "length",
        h_init=router.config.estimate([lp for _, lp in top]),
        top_logprobs=top[:20],
        tokens=done.tokens,
        seconds=done.seconds,
    )
    return {
        "glimp_probe": result,
        "glimp_probes": state.get("glimp_probes", 0) + 1,
        "glimp_probe_seconds": state.get("glimp_probe_seconds", 0.0) + done.seconds,
    }
