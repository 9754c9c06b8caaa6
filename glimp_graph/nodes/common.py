"""What every node shares: the router's parts and helpers that read the state."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from langgraph.config import get_stream_writer

from glimp_graph.config import GlimpConfig
from glimp_graph.endpoints import Call, Completion, ModelClient
from glimp_graph.errors import EndpointUnavailableError
from glimp_graph.scorers import Scorer
from glimp_graph.state import GlimpState, Step

NodeLogic = Generator[Call, Completion, GlimpState]
"""What a node function returns: a generator that yields model calls and returns the state update."""


@dataclass(frozen=True)
class Router:
    """The settings, the two model clients and the step scorer, built once by the factory for every node."""

    config: GlimpConfig
    small: ModelClient
    large: ModelClient
    scorer: Scorer


def steps_of(state: GlimpState) -> list[Step]:
    """The steps written so far."""
    return list(state.get("glimp_steps") or [])


def conversation(state: GlimpState, router: Router) -> list[dict[str, str]]:
    """System, history and the user message for the question, as chat messages."""
    prompt = router.config.prompt
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.extend(state.get("glimp_history") or [])
    messages.append({"role": "user", "content": prompt.user_message(state["glimp_question"])})
    return messages


def trace_prefix(state: GlimpState, router: Router) -> str:
    """The partial assistant message that the next step continues: the reasoning so far, each step delimited."""
    delimiter = router.config.delimiter
    return router.config.prompt.think_prefix + "".join(s.text + delimiter for s in steps_of(state))


def step_budget(state: GlimpState, router: Router) -> int:
    """Token cap of the next step: the per-step cap, or what is left of the thinking budget."""
    spent = thinking_tokens(steps_of(state))
    return min(router.config.max_step_tokens, router.config.max_thinking_tokens - spent)


def thinking_tokens(steps: list[Step]) -> int:
    """Tokens of the reasoning so far."""
    return sum(s.tokens for s in steps)


def trace_metadata(state: GlimpState, index: int, **extra: Any) -> dict[str, Any]:
    """Metadata attached to a model call so that LangSmith shows the routing decision."""
    return {"glimp_step": index, "glimp_tau": state.get("glimp_run_tau"), **extra}


def small_failed(router: Router, exc: Exception) -> str | None:
    """The reason to drop the small model for the rest of the run, or ``None`` if ``exc`` must propagate."""
    if isinstance(exc, EndpointUnavailableError) and router.config.on_small_failure == "fallback":
        return f"small model unavailable, the large model writes the remaining steps: {exc}"
    return None


def emit(event: dict[str, Any]) -> None:
    """Send ``event`` to ``stream_mode="custom"`` consumers (a no-op outside a streaming run)."""
    try:
        writer = get_stream_writer()
    except RuntimeError:  # called outside a graph run
        return
    writer(event)
