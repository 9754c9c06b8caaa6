"""What every node shares: the router's parts and helpers that read the state."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from langgraph.config import get_stream_writer

from glimp_graph.config import GlimpConfig, settings_key
from glimp_graph.endpoints import Call, Completion, ModelClient
from glimp_graph.errors import EndpointUnavailableError
from glimp_graph.scorers import Scorer
from glimp_graph.state import GlimpState, Step

NodeLogic = Generator[Call, Completion, GlimpState]
"""What a node function returns: a generator that yields model calls and returns the state update."""


#: Distinct run settings whose :class:`Router` is kept (a server whose requests vary ``max_tokens`` builds each
#: one once; the least recently used is dropped past this number).
RUN_CACHE_SIZE = 64


@dataclass(frozen=True)
class Router:
    """The settings, the two model clients and the step scorer, built once by the factory for every node.

    A run that overrides settings (the graph's runtime context) gets its own ``Router`` from :meth:`for_run`,
    sharing the clients and the scorer.
    """

    config: GlimpConfig
    small: ModelClient
    large: ModelClient
    scorer: Scorer
    _runs: OrderedDict[str, Router] = field(default_factory=OrderedDict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def for_run(self, settings: Mapping[str, Any] | None) -> Router:
        """The router for a run with these overrides (``glimp_settings``): the same clients, the run's config.

        Raises:
            ValueError: A setting is unknown or invalid (the ``prepare`` node checks them before any call).

        """
        if not settings:
            return self
        key = settings_key(settings)
        with self._lock:
            found = self._runs.get(key)
            if found is not None:
                self._runs.move_to_end(key)
                return found
        run = replace(self, config=self.config.for_run(settings), _runs=OrderedDict(), _lock=threading.Lock())
        with self._lock:
            self._runs[key] = run
            while len(self._runs) > RUN_CACHE_SIZE:
                self._runs.popitem(last=False)
        return run


def steps_of(state: GlimpState) -> list[Step]:
    """The steps written so far."""
    return list(state.get("glimp_steps") or [])


def conversation(state: GlimpState, router: Router) -> list[dict[str, Any]]:
    """System, history, the user message for the question and what followed it (tool calls, tool results)."""
    prompt = router.config.prompt
    messages: list[dict[str, Any]] = [{"role": "system", "content": prompt.system}] if prompt.system else []
    messages.extend(state.get("glimp_history") or [])
    messages.append({"role": "user", "content": prompt.user_message(state["glimp_question"])})
    messages.extend(state.get("glimp_followups") or [])
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
