"""Routing per agent turn: :class:`GlimpTurnRouter`, a ``create_agent`` middleware.

GlimpRouter routes the steps of one long reasoning. An agent's model calls are often short turns instead (pick a
tool, read its result, answer in a sentence); for those the unit worth routing is the whole turn. Before each
model call of a ``langchain.agents.create_agent`` agent, :class:`GlimpTurnRouter` glimpses the small model's
reply to the turn (the same request the agent would send it: the system prompt, the messages with their tool
calls and tool results, the tools; capped at one token, temperature 0, with ``top_k`` log-probabilities) and
hands the turn to the small model when the score is ``<= tau`` (GlimpRouter's scorer: the first token's entropy
H_init), else to the large one. The score comes from the graph's scorer plug-ins (:mod:`glimp_graph.scorers`),
run through the same generator contract, so ``"random"`` and ``"fixed"`` give the controls and small-only /
large-only runs.

The decision (:class:`~glimp_graph.state.Decision`: turn index, h_init, score, scorer, tau, model) is in the
trace twice: as metadata (``glimp_model``, ``glimp_h_init``, ``glimp_score``, ``glimp_tau``, ...) and tags
(``glimp``, ``glimp:small`` / ``glimp:large``) on the answering model's run, and in the returned message's
``response_metadata["glimp_decision"]``, so it stays in the agent's state.

Needs the ``agents`` extra (``pip install "glimp-graph[agents]"``) for ``langchain``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, convert_to_openai_messages
from langchain_openai import ChatOpenAI
from pydantic import ValidationError

from glimp_graph.config import GlimpConfig, check_tau
from glimp_graph.endpoints import Call, Completion, Endpoint, ModelClient, Role
from glimp_graph.errors import EndpointUnavailableError, GlimpError
from glimp_graph.nodes import adrive, drive
from glimp_graph.scorers import Probe, Scorer, SpecReason, StepContext
from glimp_graph.state import Decision, decide
from glimp_graph.tool_calls import check_tools

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as exc:  # pragma: no cover - the unit tests hide langchain to see this message
    raise ImportError(
        "glimp_graph.middleware needs LangChain's agents (the `langchain` package, 1.x): "
        'pip install "glimp-graph[agents]"'
    ) from exc

__all__ = ["GlimpTurnRouter", "chat_openai"]

T = TypeVar("T")


def chat_openai(endpoint: Endpoint, **kwargs: Any) -> ChatOpenAI:
    """A ``ChatOpenAI`` for ``endpoint`` (its URL, model, key, sampling, timeout and retries).

    Args:
        endpoint: The server.
        **kwargs: More ``ChatOpenAI`` fields (``max_tokens=256``, ``streaming=True``, ...).

    Returns:
        The chat model (chat completions API, not the Responses API).

    """
    settings: dict[str, Any] = {
        "model": endpoint.model,
        "base_url": endpoint.base_url,
        "api_key": endpoint.api_key,
        "temperature": endpoint.temperature,
        "top_p": endpoint.top_p,
        "seed": endpoint.seed,
        "timeout": endpoint.timeout,
        "max_retries": endpoint.max_retries,
        "use_responses_api": False,
    }
    settings.update(kwargs)
    return ChatOpenAI(**settings)


def _endpoint_of(model: BaseChatModel) -> Endpoint | None:
    """The endpoint a ``ChatOpenAI`` talks to (``None`` for any other chat model)."""
    if not isinstance(model, ChatOpenAI):
        return None
    key = model.openai_api_key
    timeout = model.request_timeout
    return Endpoint(
        base_url=model.openai_api_base or "https://api.openai.com/v1",
        model=model.model_name,
        api_key=key.get_secret_value() if key is not None and hasattr(key, "get_secret_value") else "EMPTY",
        timeout=float(timeout) if isinstance(timeout, int | float) and timeout > 0 else 300.0,
        max_retries=model.max_retries if isinstance(model.max_retries, int) else 2,
    )


def _as_model(value: object, role: Role) -> tuple[BaseChatModel, Endpoint | None]:
    if isinstance(value, Endpoint):
        return chat_openai(value), value
    if isinstance(value, BaseChatModel):
        return value, _endpoint_of(value)
    raise TypeError(
        f"GlimpTurnRouter: {role} must be an Endpoint or a LangChain chat model (e.g. ChatOpenAI), "
        f"got {type(value).__name__}: {value!r:.80}"
    )


def _function_tools(tools: Sequence[Any]) -> list[Any]:
    """The request's tools that the model calls itself (not a provider's built-in tool such as ``web_search``)."""
    return [t for t in tools if not (isinstance(t, dict) and t.get("type", "function") != "function")]


def _turn_index(messages: Sequence[AnyMessage]) -> tuple[int, str]:
    """The model calls since the last human message, and that message's text (``""`` when there is none)."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return sum(isinstance(m, AIMessage) for m in messages[i + 1 :]), messages[i].text
    return sum(isinstance(m, AIMessage) for m in messages), ""


class GlimpTurnRouter(AgentMiddleware):
    """A ``create_agent`` middleware that routes each model call (each agent turn) to the small or the large model.

    Before every model call it glimpses the small model's reply with the configured scorer (GlimpRouter's
    ``"glimp"``: ONE token at temperature 0, its entropy H_init) and lets the small model answer the turn when
    ``score <= tau``, else the large model (``request.override(model=...)``; the tools, tool choice and response
    format ``create_agent`` put on the request go to whichever model answers). ``tau=inf`` answers every turn
    with the small model, ``tau=-inf`` with the large one (the probe is still sent; ``scorer="fixed"`` skips it).

    Example:
        ```python
        from langchain.agents import create_agent
        from glimp_graph import Endpoint
        from glimp_graph.middleware import GlimpTurnRouter

        router = GlimpTurnRouter(
            small=Endpoint(base_url="http://127.0.0.1:8001/v1", model="small"),
            large=Endpoint(base_url="http://127.0.0.1:8002/v1", model="large"),
            tau=1.0,
        )
        agent = create_agent(router.large_model, tools=[calculator], middleware=[router])
        result = agent.invoke({"messages": [{"role": "user", "content": "What is 17 * 3?"}]})
        result["messages"][-1].response_metadata["glimp_decision"]  # {'model': 'small', 'h_init': 0.21, ...}
        ```

    Args:
        small: The small model: an :class:`~glimp_graph.endpoints.Endpoint` (a ``ChatOpenAI`` is built for it)
            or a chat model. A ``ChatOpenAI`` also tells where to send the probe.
        large: The large model, the same way.
        tau: Threshold on the score (nats for ``"glimp"``); ``inf`` and ``-inf`` allowed, never NaN.
        scorer: A name from :data:`glimp_graph.scorers.SCORERS` (``"glimp"``, ``"random"``, ``"fixed"``,
            ``"step-entropy"``, ...) or a :class:`~glimp_graph.scorers.Scorer`. Scorers that draft a step
            draft the reply's first paragraph (up to ``max_step_tokens``) only to score it; the chosen model
            then answers the turn.
        top_k: Log-probabilities asked for with the probe.
        estimator: Entropy estimator (a name from :data:`glimp_graph.entropy.ESTIMATORS` or a callable).
        vocab_size: The small model's vocabulary size (the ``"upper"`` estimator needs it).
        max_step_tokens: Token cap of a drafting scorer's draft.
        probe: The small model's server, for the probe; needed only when ``small`` is a chat model other than
            ``ChatOpenAI`` (else it is ``small`` itself, or read from the ``ChatOpenAI``).
        on_small_failure: ``"fallback"``: when the small model's server cannot be reached for the probe, the
            large model answers the turn (the decision's ``note`` says why); ``"raise"``: the error propagates.

    Attributes:
        small_model: The small model's chat model.
        large_model: The large model's chat model (a natural ``model`` for ``create_agent``: every call is
            routed anyway).
        tau: The threshold.
        scorer: The scorer.

    Raises:
        ValueError: A bad ``tau`` (NaN, a string, a bool), an unknown scorer or estimator, a bad ``top_k`` or
            budget, or no way to reach the small model for the probe; the message names the value.
        TypeError: ``small`` or ``large`` is neither an Endpoint nor a chat model.

    """

    def __init__(
        self,
        small: Endpoint | BaseChatModel,
        large: Endpoint | BaseChatModel,
        *,
        tau: float = 1.0,
        scorer: str | Scorer = "glimp",
        top_k: int = 20,
        estimator: str | Callable[..., float] = "renormalized",
        vocab_size: int | None = None,
        max_step_tokens: int = 128,
        probe: Endpoint | None = None,
        on_small_failure: Literal["fallback", "raise"] = "fallback",
    ) -> None:
        super().__init__()
        try:
            self.tau = check_tau(tau)
            self._config = GlimpConfig(
                tau=self.tau,
                scorer=scorer,
                top_k=top_k,
                estimator=estimator,
                vocab_size=vocab_size,
                max_step_tokens=max_step_tokens,
                on_small_failure=on_small_failure,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']} (got {e.get('input')!r:.80})"
                for e in exc.errors()
            )
            raise ValueError(f"GlimpTurnRouter: {problems}") from None
        except ValueError as exc:
            raise ValueError(f"GlimpTurnRouter: {exc}") from None
        self.scorer = self._config.make_scorer()
        self.small_model, small_endpoint = _as_model(small, "small")
        self.large_model, large_endpoint = _as_model(large, "large")
        if probe is not None and not isinstance(probe, Endpoint):
            raise TypeError(f"GlimpTurnRouter: probe must be an Endpoint, got {type(probe).__name__}")
        probe_endpoint = probe or small_endpoint
        if probe_endpoint is None:
            raise ValueError(
                f"GlimpTurnRouter: cannot tell where the small model ({type(self.small_model).__name__}) is served, "
                "and the probe needs its OpenAI-compatible server: pass small=Endpoint(...), a ChatOpenAI, or "
                "probe=Endpoint(base_url=..., model=...)"
            )
        self._small = ModelClient(probe_endpoint, "small")
        self._large = ModelClient(large_endpoint, "large") if large_endpoint is not None else None
        if isinstance(self.scorer, SpecReason) and self._large is None:
            raise ValueError(
                "GlimpTurnRouter: scorer 'specreason' asks the large model for a verdict through its "
                "OpenAI-compatible server: pass large=Endpoint(...) or a ChatOpenAI"
            )

    def __repr__(self) -> str:
        return (
            f"GlimpTurnRouter(tau={self.tau:g}, scorer={self.scorer!r}, small={self._small.endpoint.model!r}, "
            f"top_k={self._config.top_k})"
        )

    # -- the logic, once -------------------------------------------------------------------------------------
    def _decide(self, request: ModelRequest) -> Generator[Call, Completion, tuple[Decision, Probe]]:
        """Glimpse the small model's reply to this turn and decide who answers it."""
        index, question = _turn_index(request.messages)
        messages = [request.system_message, *request.messages] if request.system_message else request.messages
        config = self._config
        ctx = StepContext(
            index=index,
            question=question,
            messages=convert_to_openai_messages(list(messages)),
            prefix="",
            max_tokens=config.max_step_tokens,
            delimiter=config.delimiter,
            top_k=config.top_k,
            metadata={"glimp_turn": index, "glimp_tau": self.tau, "glimp_scorer": self.scorer.name},
            small=self._small,
            large=self._large or self._small,  # only SpecReason calls the large model; checked at construction
            estimate=config.estimate,
        )
        glimpse = self.scorer.glimpse(ctx)
        tools, tool_choice = check_tools(_function_tools(request.tools), request.tool_choice)
        if tools:
            glimpse = _with_tools(glimpse, self._small, tools, tool_choice)
        try:
            probe = yield from glimpse
        except EndpointUnavailableError as exc:
            if exc.role != "small" or config.on_small_failure != "fallback":
                raise
            note = f"small model unavailable, the large model answers the turn: {exc}"
            probe = Probe.no_call(index, self.scorer.name, math.inf, forced="large", note=note)
        return decide(probe, self.tau), probe

    def _routed(self, request: ModelRequest, decision: Decision) -> ModelRequest:
        """The request sent to the chosen model, whose run carries the decision as metadata and tags."""
        chosen = self.small_model if decision.model == "small" else self.large_model
        metadata = {
            **(chosen.metadata or {}),
            "glimp_role": decision.model,
            "glimp_turn": decision.index,
            "glimp_model": decision.model,
            "glimp_h_init": decision.h_init,
            "glimp_score": decision.score,
            "glimp_tau": decision.tau,
            "glimp_scorer": decision.scorer,
        }
        if decision.note:
            metadata["glimp_note"] = decision.note
        tags = [*(chosen.tags or []), "glimp", f"glimp:{decision.model}"]
        return request.override(model=chosen.model_copy(update={"metadata": metadata, "tags": tags}))

    @staticmethod
    def _stamped(response: ModelResponse, decision: Decision, probe: Probe) -> ModelResponse:
        """``response`` with the decision in its (last) AI message's ``response_metadata["glimp_decision"]``."""
        record = {**decision.model_dump(), "probe_token": probe.token}
        result = list(response.result)
        for i in range(len(result) - 1, -1, -1):
            message = result[i]
            if isinstance(message, AIMessage):
                meta = {**message.response_metadata, "glimp_decision": record}
                result[i] = message.model_copy(update={"response_metadata": meta})
                break
        return ModelResponse(result=result, structured_response=response.structured_response)

    # -- the two bodies: they differ only in how they wait -------------------------------------------------
    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse:
        """Glimpse, decide, and let the chosen model answer the turn."""
        decision, probe = drive(self._decide(request))
        return self._stamped(handler(self._routed(request, decision)), decision, probe)

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        """Async :meth:`wrap_model_call`."""
        decision, probe = await adrive(self._decide(request))
        return self._stamped(await handler(self._routed(request, decision)), decision, probe)


def _with_tools(
    logic: Generator[Call, Completion, T], client: ModelClient, tools: list[dict[str, Any]], tool_choice: Any
) -> Generator[Call, Completion, T]:
    """``logic`` whose calls to ``client`` carry the turn's tools, so the probe sees the prompt the reply will."""
    try:
        call = next(logic)
        while True:
            target, request = call
            if target is client:
                request = replace(request, tools=tools, tool_choice=tool_choice)
            try:
                done = yield target, request
            except GlimpError as exc:
                call = logic.throw(exc)
            else:
                call = logic.send(done)
    except StopIteration as stop:
        return stop.value
