"""The ``prepare`` node: validate the input, reset the router's keys for a new run, and check both endpoints."""

from __future__ import annotations

import time

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableLambda

from glimp_graph.config import check_tau
from glimp_graph.endpoints import acheck_all, check_all
from glimp_graph.errors import EndpointError, InputError
from glimp_graph.nodes.common import Router, small_failed
from glimp_graph.state import GlimpState

_ROLES = {HumanMessage: "user", AIMessage: "assistant", SystemMessage: "system"}


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


def resolve(state: GlimpState) -> tuple[str, list[dict[str, str]], bool]:
    """The question, the earlier conversation, and whether the question came from ``messages``."""
    question = state.get("question")
    if question is not None:
        if not isinstance(question, str):
            raise InputError(f"question must be a string, got {type(question).__name__}: {question!r:.80}")
        return _check_text(question, "question"), [], False
    messages = list(state.get("messages") or [])
    last_human = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], HumanMessage)), None)
    if last_human is None:
        raise InputError("no question: pass 'question', or 'messages' that contain a human message")
    history = [
        {"role": _ROLES[type(m)], "content": _text(m)}
        for m in messages[:last_human]
        if type(m) in _ROLES and _text(m).strip()
    ]
    return _check_text(_text(messages[last_human]), "the last human message"), history, True


def prepare(state: GlimpState, *, default_tau: float) -> GlimpState:
    """Read the question and per-run overrides, and start a fresh reasoning trace."""
    question, history, from_messages = resolve(state)
    tau = state.get("glimp_tau")
    try:
        run_tau = check_tau(default_tau if tau is None else tau, name="glimp_tau")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return {
        # the per-run inputs are consumed: a checkpointed thread must not replay them in its next run
        "question": None,
        "glimp_tau": None,
        "glimp_question": question,
        "glimp_history": history,
        "glimp_from_messages": from_messages,
        "glimp_run_tau": run_tau,
        "glimp_steps": [],
        "glimp_probe": None,
        "glimp_decision": None,
        "glimp_stop": None,
        "glimp_probes": 0,
        "glimp_probe_seconds": 0.0,
        "glimp_small_tokens": 0,
        "glimp_large_tokens": 0,
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


def prepare_node(router: Router, *, default_tau: float) -> RunnableLambda:
    """The ``prepare`` node: :func:`prepare`, then both endpoints checked at once, before any completion.

    Each endpoint is contacted once per graph (``GET /models``, kept by its client), so a dead large server is
    named before the small model writes a step; a dead small one hands the run to the large model (or raises,
    per ``on_small_failure``). The sync body checks in threads, the async one with ``asyncio.gather``.

    Args:
        router: The settings and the two clients.
        default_tau: The threshold of a run that does not set ``glimp_tau``.

    Returns:
        A ``RunnableLambda`` named ``prepare``, with a sync and an async body.

    """
    clients = [router.small, router.large]

    def run(state: GlimpState) -> GlimpState:
        update = prepare(state, default_tau=default_tau)
        return checked(update, router, check_all(clients))

    async def arun(state: GlimpState) -> GlimpState:
        update = prepare(state, default_tau=default_tau)
        return checked(update, router, await acheck_all(clients))

    run.__name__ = arun.__name__ = "prepare"
    return RunnableLambda(run, afunc=arun, name="prepare")
