"""The ``prepare`` node: validate the input, reset the router's keys for a new run, and check both endpoints."""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.runnables import RunnableLambda
from langgraph.runtime import get_runtime

from glimp_graph.config import check_tau, run_settings
from glimp_graph.endpoints import acheck_all, check_all
from glimp_graph.errors import EndpointError, InputError
from glimp_graph.nodes.common import Router, small_failed
from glimp_graph.state import GlimpState

_KINDS = (HumanMessage, AIMessage, SystemMessage, ToolMessage)


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(
        part if isinstance(part, str) else str(part.get("text", ""))
        for part in content
        if isinstance(part, str) or part.get("type") == "text"
    )


def _check_text(value: str, what: str) -> str:
    if not value.strip():
        raise InputError(f"{what} is empty or whitespace: {value!r:.80}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid UTF-8 text (bad character at index {exc.start})") from exc
    return value


def _chat(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """Messages as OpenAI chat messages: text, an assistant's tool calls and tool results; empty turns dropped."""
    kept = [
        m
        for m in messages
        if isinstance(m, _KINDS)
        and (_text(m).strip() or isinstance(m, ToolMessage) or (isinstance(m, AIMessage) and m.tool_calls))
    ]
    out = []
    for message in convert_to_openai_messages(kept):
        if isinstance(message.get("content"), list):  # text parts only: the servers read a string
            message["content"] = "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")
        out.append(message)
    return out


def resolve(state: GlimpState) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], bool]:
    """The question, the conversation before it, what followed it, and whether it came from ``messages``.

    What followed the last human message is an agent turn's tool calls and their results: every step and the
    final answer read them after the question.
    """
    question = state.get("question")
    if question is not None:
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}: {question!r:.80}")
        return _check_text(question, "question"), [], [], False
    messages = list(state.get("messages") or [])
    last_human = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], HumanMessage)), None)
    if last_human is None:
        kinds = ", ".join(type(m).__name__ for m in messages) or "none"
        raise InputError(
            f"no question: the messages ({kinds}) contain no human message; pass 'question', or 'messages' with "
            "a HumanMessage (the last one is the question)"
        )
    question = _check_text(_text(messages[last_human]), "the last human message")
    return question, _chat(messages[:last_human]), _chat(messages[last_human + 1 :]), True


def prepare(state: GlimpState, router: Router, context: object = None) -> GlimpState:
    """Read the question and the run's settings, and start a fresh reasoning trace.

    Args:
        state: The graph's state at the start of a run.
        router: The graph's router (its settings are the defaults).
        context: The run's runtime context (:class:`~glimp_graph.config.GlimpContext`, or a host graph's,
            ignored: see :func:`~glimp_graph.config.run_settings`), or ``None``.

    Raises:
        InputError: No question, an empty one, or a bad run setting (``glimp_tau`` or a context key).

    """
    question, history, followups, from_messages = resolve(state)
    tau = state.get("glimp_tau")
    if tau is not None:
        try:
            check_tau(tau, name="glimp_tau")
        except ValueError as exc:
            raise InputError(str(exc)) from None
    try:
        settings = run_settings(context, tau)
        run = router.for_run(settings)
    except ValueError as exc:
        raise InputError(f"{exc} (from the run's context / glimp_tau)") from None
    return {
        # the per-run inputs are consumed: a checkpointed thread must not replay them in its next run
        "question": None,
        "glimp_tau": None,
        "glimp_question": question,
        "glimp_history": history,
        "glimp_followups": followups,
        "glimp_from_messages": from_messages,
        "glimp_settings": settings,
        "glimp_run_tau": run.config.tau,
        "glimp_steps": [],
        "glimp_probe": None,
        "glimp_decision": None,
        "glimp_stop": None,
        "glimp_probes": 0,
        "glimp_probe_seconds": 0.0,
        "glimp_small_tokens": 0,
        "glimp_large_tokens": 0,
        "glimp_small_prompt_tokens": 0,
        "glimp_large_prompt_tokens": 0,
        "glimp_tool_calls": [],
        "glimp_invalid_tool_calls": [],
        "glimp_small_down": None,
        "glimp_started": time.time(),
    }


def checked(update: GlimpState, router: Router, failures: list[EndpointError | None]) -> GlimpState:
    """Apply the endpoint check to the fresh run's ``update``: raise, or drop the small model for the run.

    Args:
        update: What :func:`prepare` returned.
        router: The router (its settings say whether a dead small model falls back).
        failures: The small and the large endpoint's check errors (``None``: it answered).

    Raises:
        EndpointError: The large endpoint failed its check, or the small one did and may not fall back.

    """
    small, large = failures
    reason = small_failed(router, small) if small is not None else None
    if small is not None and reason is None:
        raise small
    if large is not None:
        raise large
    if reason is not None:
        update["glimp_small_down"] = reason
    return update


def _context() -> Any:
    try:
        return get_runtime().context
    except (RuntimeError, KeyError, AttributeError):  # called outside a graph run
        return None


def prepare_node(router: Router) -> RunnableLambda:
    """The ``prepare`` node: :func:`prepare`, then both endpoints checked at once, before any completion.

    Each endpoint is contacted once per graph (``GET /models``, kept by its client), so a dead large server is
    named before the small model writes a step; a dead small one hands the run to the large model (or raises,
    per ``on_small_failure``). The sync body checks in threads, the async one with ``asyncio.gather``.

    Args:
        router: The settings and the two clients.

    Returns:
        A ``RunnableLambda`` named ``prepare``, with a sync and an async body.

    """
    clients = [router.small, router.large]

    def run(state: GlimpState) -> GlimpState:
        update = prepare(state, router, _context())
        return checked(update, router, check_all(clients))

    async def arun(state: GlimpState) -> GlimpState:
        update = prepare(state, router, _context())
        return checked(update, router, await acheck_all(clients))

    run.__name__ = arun.__name__ = "prepare"
    return RunnableLambda(run, afunc=arun, name="prepare")
