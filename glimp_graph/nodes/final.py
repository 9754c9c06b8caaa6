"""The ``final_answer`` node: the large model always writes the answer, from the question and the whole trace."""

from __future__ import annotations

import time

from langchain_core.messages import AIMessage

from glimp_graph.endpoints import Completion, Request
from glimp_graph.nodes.common import (
    NodeLogic,
    Router,
    conversation,
    emit,
    steps_of,
    thinking_tokens,
    trace_metadata,
)
from glimp_graph.state import GlimpState, RunStats, Step, reasoning_text


def _answer_delta(text: str) -> None:
    emit({"type": "answer", "delta": text})


def final_answer(state: GlimpState, router: Router) -> NodeLogic:
    """Write the final answer (with the large model, unless configured otherwise) and compute the statistics.

    The answer is streamed from the server: each piece goes to ``stream_mode="custom"`` consumers as an
    ``{"type": "answer", "delta": ...}`` event as it arrives. When the run has tools, this call carries them and
    the answer may be tool calls instead of (or beside) text.
    """
    steps = steps_of(state)
    config = router.config
    reasoning = reasoning_text((s.text for s in steps), config.delimiter)
    prompt = config.prompt
    writer = router.large if config.final_model == "large" else router.small
    done = yield (
        writer,
        Request(
            messages=conversation(state, router),
            prefix=prompt.think_prefix + reasoning + prompt.answer_prefix,
            max_tokens=config.final_max_tokens,
            run_name="final_answer",
            metadata=trace_metadata(
                state, len(steps), glimp_route=writer.role, glimp_stop_reason=state.get("glimp_stop")
            ),
            tools=config.tools,
            tool_choice=config.tool_choice,
            on_text=_answer_delta,
        ),
    )
    # a lone leading space is the continuation's, not the answer's; a tool call's text may be empty
    answer = done.text.strip()
    stats = run_stats(state, steps, done, router)
    emit(
        {
            "type": "final",
            "answer": answer,
            "stats": stats.model_dump(),
            "tool_calls": done.tool_calls,
            "invalid_tool_calls": done.invalid_tool_calls,
        }
    )
    update: GlimpState = {
        "glimp_answer": answer,
        "glimp_stats": stats,
        "glimp_tool_calls": done.tool_calls,
        "glimp_invalid_tool_calls": done.invalid_tool_calls,
    }
    if state.get("glimp_from_messages"):
        update["messages"] = [
            AIMessage(
                content=answer,
                tool_calls=done.tool_calls,
                invalid_tool_calls=done.invalid_tool_calls,
                additional_kwargs={"reasoning_content": reasoning},
            )
        ]
    return update


def run_stats(state: GlimpState, steps: list[Step], final: Completion, router: Router) -> RunStats:
    """Aggregate the steps and the final answer into :class:`RunStats`."""
    small = [s for s in steps if s.model == "small"]
    large = [s for s in steps if s.model == "large"]
    final_small = final.tokens if router.config.final_model == "small" else 0
    final_role = router.config.final_model
    prompt_tokens = {
        role: int(state.get(f"glimp_{role}_prompt_tokens", 0)) + (final.prompt_tokens if role == final_role else 0)  # type: ignore[misc]
        for role in ("small", "large")
    }
    return RunStats(
        steps=len(steps),
        small_steps=len(small),
        large_steps=len(large),
        large_share=len(large) / len(steps) if steps else 0.0,
        small_tokens=int(state.get("glimp_small_tokens", 0)) + final_small,
        large_tokens=int(state.get("glimp_large_tokens", 0)) + final.tokens - final_small,
        thinking_tokens=thinking_tokens(steps),
        final_tokens=final.tokens,
        probes=int(state.get("glimp_probes", 0)),
        probe_seconds=float(state.get("glimp_probe_seconds", 0.0)),
        final_seconds=final.seconds,
        wall_seconds=time.time() - float(state["glimp_started"]),
        stop_reason=state.get("glimp_stop") or "end_of_sequence",
        tau=float(state["glimp_run_tau"]),
        estimator=router.config.estimator_name,
        scorer=router.scorer.name,
        final_model=router.config.final_model,
        small_failure=state.get("glimp_small_down"),
        small_prompt_tokens=prompt_tokens["small"],
        large_prompt_tokens=prompt_tokens["large"],
        tool_calls=len(final.tool_calls) + len(final.invalid_tool_calls),
    )
