"""The ``route`` node: the whole routing contract, one score against one threshold."""

from __future__ import annotations

from typing import Literal

from langgraph.types import Command

from glimp_graph.nodes.common import emit
from glimp_graph.state import Decision, GlimpState


def route(state: GlimpState) -> Command[Literal["small_step", "large_step"]]:
    """Send the step to the small model when ``score <= tau`` (GlimpRouter: ``H_init <= tau``), else the large.

    A probe forced to one model (the small model's server failed and the run falls back) overrides the score.
    """
    probe = state["glimp_probe"]
    tau = state["glimp_run_tau"]
    model = probe.forced or ("small" if probe.score <= tau else "large")
    decision = Decision(
        index=probe.index,
        h_init=probe.h_init,
        score=probe.score,
        scorer=probe.scorer,
        tau=tau,
        model=model,
        note=probe.note,
    )
    emit({"type": "route", **decision.model_dump(), "probe_token": probe.token})
    return Command(goto=f"{model}_step", update={"glimp_decision": decision})
