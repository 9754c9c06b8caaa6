"""The ``route`` node: the whole routing contract, one score against one threshold."""

from __future__ import annotations

from typing import Literal

from langgraph.types import Command

from glimp_graph.nodes.common import emit
from glimp_graph.state import GlimpState, decide


def route(state: GlimpState) -> Command[Literal["small_step", "large_step"]]:
    """Send the step to the small model when ``score <= tau`` (GlimpRouter: ``H_init <= tau``), else the large.

    A probe forced to one model (the small model's server failed and the run falls back) overrides the score.
    """
    probe = state["glimp_probe"]
    decision = decide(probe, state["glimp_run_tau"])
    emit({"type": "route", **decision.model_dump(), "probe_token": probe.token})
    return Command(goto=f"{decision.model}_step", update={"glimp_decision": decision})
