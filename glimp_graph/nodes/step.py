"""The ``small_step`` and ``large_step`` nodes: write one reasoning step, then decide whether reasoning ends."""

from __future__ import annotations

from glimp_graph.endpoints import Request, Role, StepEnd
from glimp_graph.errors import EndpointError
from glimp_graph.nodes.common import (
    NodeLogic,
    Router,
    conversation,
    emit,
    small_failed,
    step_budget,
    steps_of,
    thinking_tokens,
    trace_metadata,
    trace_prefix,
)
from glimp_graph.scorers import Probe
from glimp_graph.state import Decision, GlimpState, Step, StopReason


def _request(state: GlimpState, router: Router, role: Role, prefix: str, max_tokens: int) -> Request:
    probe: Probe = state["glimp_probe"]
    return Request(
        messages=conversation(state, router),
        prefix=prefix,
        max_tokens=max_tokens,
        stop=[router.config.delimiter],
        run_name=f"{role}_step",
        metadata=trace_metadata(
            state, probe.index, glimp_h_init=probe.h_init, glimp_score=probe.score, glimp_route=role
        ),
    )


def small_step(state: GlimpState, router: Router) -> NodeLogic:
    """The small model's step: the accepted draft, or a continuation of the probed token (unless reuse is off).

    If the small model's server fails mid-step and ``on_small_failure="fallback"``, the large model writes the
    step instead and every later step of the run.
    """
    probe: Probe = state["glimp_probe"]
    delimiter = router.config.delimiter
    budget = step_budget(state, router)
    prefix = trace_prefix(state, router)
    new_tokens = 0
    if probe.kind == "step":  # the scorer's draft is the step
        text, tokens, seconds, end = probe.token, probe.tokens, 0.0, probe.end or "stop"
    elif probe.kind == "token" and delimiter in probe.token:  # the glimpse already ends the step
        text, tokens, seconds, end = probe.token.split(delimiter, 1)[0], probe.tokens, 0.0, "delimiter"
    elif probe.kind == "token" and probe.eos:  # the small model ended its turn within the glimpse
        text, tokens, seconds, end = probe.token, probe.tokens if probe.token else 0, 0.0, "eos"
    elif probe.kind == "token" and router.config.reuse_probe_token and budget <= probe.tokens:
        text, tokens, seconds, end = probe.token, probe.tokens, 0.0, "length"
    else:
        reuse = probe.kind == "token" and router.config.reuse_probe_token
        head = probe.token if reuse else ""
        reused = probe.tokens if reuse else 0
        try:
            done = yield router.small, _request(state, router, "small", prefix + head, budget - reused)
        except EndpointError as exc:
            reason = small_failed(router, exc) if exc.role == "small" else None
            if reason is None:
                raise
            update = yield from _large_writes(state, router, note=reason)
            update["glimp_small_down"] = reason
            return update
        text, tokens, seconds, end = head + done.text, reused + done.tokens, done.seconds, done.end
        new_tokens = done.tokens
    update = finish_step(state, router, "small", text, tokens, seconds, end)
    update["glimp_small_tokens"] = state.get("glimp_small_tokens", 0) + new_tokens
    return update


def large_step(state: GlimpState, router: Router) -> NodeLogic:
    """The large model writes the whole step from the trace (a probed token or a draft is not used)."""
    return (yield from _large_writes(state, router, note=state["glimp_decision"].note))


def _large_writes(state: GlimpState, router: Router, *, note: str | None) -> NodeLogic:
    done = yield router.large, _request(state, router, "large", trace_prefix(state, router), step_budget(state, router))
    end = done.end
    if not done.text and end == "stop":
        end = "eos"  # nothing written: the large model ended its turn
    update = finish_step(state, router, "large", done.text, done.tokens, done.seconds, end, note=note)
    update["glimp_large_tokens"] = state.get("glimp_large_tokens", 0) + done.tokens
    return update


def _stop_reason(text: str, end: StepEnd, steps: list[Step], router: Router) -> tuple[str, StopReason | None]:
    prompt = router.config.prompt
    cut = min((text.index(m) for m in prompt.end_markers if m in text), default=None)
    if cut is not None:
        return text[:cut], "think_end"
    if any(m in text for m in prompt.answer_markers):
        return text, "answer_marker"
    if end == "eos":
        return text, "end_of_sequence"
    if router.config.stop_on_repeat and steps and steps[-1].text.strip() == text.strip():
        return text, "repeated_step"
    return text, None


def finish_step(
    state: GlimpState,
    router: Router,
    role: Role,
    text: str,
    tokens: int,
    seconds: float,
    end: StepEnd,
    *,
    note: str | None = None,
) -> GlimpState:
    """Record the step (with the routing decision and the probe that led to it) and whether the reasoning ends.

    ``role`` is who wrote the step: the decided model, or the large one when the small model failed mid-step.
    """
    decision: Decision = state["glimp_decision"]
    probe: Probe = state["glimp_probe"]
    steps = steps_of(state)
    text, stop = _stop_reason(text, end, steps, router)
    step = Step(
        index=decision.index,
        model=role,
        text=text,
        h_init=decision.h_init,
        score=decision.score,
        scorer=decision.scorer,
        tau=decision.tau,
        probe_token=probe.token if probe.kind == "token" else "",
        tokens=tokens,
        seconds=seconds,
        probe_seconds=probe.seconds,
        end=end,
        signals=probe.signals,
        note=note,
    )
    steps.append(step)
    if stop is None and thinking_tokens(steps) >= router.config.max_thinking_tokens:
        stop = "token_budget"
    if stop is None and len(steps) >= router.config.max_steps:
        stop = "step_budget"
    emit({"type": "step", **step.model_dump(), "stop_reason": stop, "delimiter": router.config.delimiter})
    return {"glimp_steps": steps, "glimp_stop": stop}
