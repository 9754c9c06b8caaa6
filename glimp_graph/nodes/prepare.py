"""The ``prepare`` node: validate the input and reset the router's keys for a new run."""

from __future__ import annotations

import math
import time
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from glimp_graph.errors import InputError

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


def resolve(state: dict[str, Any]) -> tuple[str, list[dict[str, str]], bool]:
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


def prepare(state: dict[str, Any], *, default_tau: float) -> dict[str, Any]:
    """Read the question and per-run overrides, and start a fresh reasoning trace."""
    question, history, from_messages = resolve(state)
    tau = state.get("glimp_tau")
    tau = default_tau if tau is None else tau
    if isinstance(tau, bool) or not isinstance(tau, int | float) or math.isnan(tau):
        raise InputError(f"glimp_tau must be a number of nats or +/-inf, got {tau!r}")
    return {
        # the per-run inputs are consumed: a checkpointed thread must not replay them in its next run
        "question": None,
        "glimp_tau": None,
        "glimp_question": question,
        "glimp_history": history,
        "glimp_from_messages": from_messages,
        "glimp_run_tau": float(tau),
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
