"""``ChatGlimpRouter``: the GlimpRouter graph as a LangChain chat model, wherever a chat model goes.

``ChatGlimpRouter(small=..., large=...)`` is a ``BaseChatModel`` on top of the compiled graph of
:func:`~glimp_graph.graph.create_glimp_graph` (one graph per chat model, or a shared one passed as ``graph=``):
each call runs the graph on the conversation, with the run's settings (``tau``, the budgets, the prompt, the bound
tools) as the graph's runtime context, so nothing of the graph is repeated here. It drops into
``langchain.agents.create_agent(model=...)``, a ``ToolNode`` loop or an LCEL chain.

What a call returns (an ``AIMessage``):

* ``content`` (and ``.text``): the final answer;
* the reasoning, as LangChain 1.x carries it: ``content_blocks`` holds one ``{"type": "reasoning"}`` block per
  step, whose ``extras`` say who wrote it and why (``step``, ``model``, ``h_init``, ``score``, ``scorer``,
  ``tau``, ``tokens``, ...), then the text block and the tool calls (a block translator registered for the model
  provider ``"glimp"``; with ``output_version="v1"`` those blocks are the content itself);
  ``additional_kwargs["reasoning_content"]`` has the steps joined (what OpenAI-style clients read) and
  ``additional_kwargs["glimp_steps"]`` the per-step records;
* ``tool_calls`` / ``invalid_tool_calls`` when tools are bound (:meth:`ChatGlimpRouter.bind_tools`); the invalid
  ones (arguments that are not a JSON object, an unknown tool) also in ``response_metadata`` as
  ``glimp_invalid_tool_calls``, with their errors;
* ``usage_metadata``: the tokens of both models (input: every call's prompt tokens; output: every generated
  token, probes and the steps included, ``output_token_details["reasoning"]`` all but the answer's; per model
  under ``"small"`` / ``"large"`` in the details); ``response_metadata``: ``model_name``, ``model_provider``
  (``"glimp"``), ``finish_reason`` and the run's :class:`~glimp_graph.state.RunStats` as ``glimp_stats``.

``stream`` / ``astream`` yield each step as a reasoning chunk as soon as it is written, then the answer as the
large model writes it, then a last chunk with the tool calls, the usage and the metadata. While tools are bound,
the answer may be a tool call written as text, which the graph turns into ``tool_calls``: where the graph streams
such an answer (vLLM, OpenAI; on llama.cpp it comes in one piece), text from the first ``{``, ``<`` or backtick on
is held back until the end, so the chunks add up to what ``invoke`` returns.
(One difference: LangChain adds chunks up by parsing tool-call arguments leniently, so an invalid call's
arguments are sent as a JSON string, which keeps it invalid; its error is in ``glimp_invalid_tool_calls``.)

The graph's runs are children of the chat model's run (its callbacks go down), so a LangSmith trace shows the
chat model with the graph's nodes and model calls under it, for ``invoke`` and ``stream`` alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages import content as types
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.block_translators import register_translator
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.runnables.config import patch_config, set_config_context, var_child_runnable_config
from langchain_core.runnables.utils import coro_with_context
from langchain_core.tools import BaseTool
from langchain_core.utils.uuid import uuid7
from langgraph.graph.state import CompiledStateGraph
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from glimp_graph.config import RUN_SETTINGS, GlimpConfig, run_settings
from glimp_graph.endpoints import Endpoint
from glimp_graph.errors import InputError
from glimp_graph.graph import create_glimp_graph
from glimp_graph.prompts import PromptTemplate
from glimp_graph.tool_calls import check_tools

__all__ = ["MODEL_PROVIDER", "STEPS_KEY", "ChatGlimpRouter"]

logger = logging.getLogger(__name__)

MODEL_PROVIDER = "glimp"
"""``response_metadata["model_provider"]`` of the messages: selects the block translator of this module."""
STEPS_KEY = "glimp_steps"
"""``additional_kwargs`` key of the per-step records (``step``, ``model``, ``text``, ``h_init``, ``tau``, ...)."""

#: The chat model's fields that are run settings of the graph (the rest of RUN_SETTINGS come from bind_tools).
_FIELD_SETTINGS = ("tau", "top_k", "max_step_tokens", "max_thinking_tokens", "max_steps", "final_max_tokens", "prompt")
#: Step record fields besides the text (Step.model_dump() or a "step" stream event).
_STEP_FIELDS = ("model", "h_init", "score", "scorer", "tau", "tokens", "seconds", "probe_seconds", "end", "note")
#: What LangChain itself passes through bind_tools and takes out before the call (with_structured_output's tracing).
_LANGCHAIN_OPTIONS = frozenset({"ls_structured_output_format", "structured_output_format"})
#: Where answer text may start a tool call written as text (a JSON object, a <tool_call> tag, a code fence).
_CALL_MARKERS = "{<`"

# The chat model's run, for the code paths where LangChain calls ``_stream`` without its run manager (``stream``,
# ``astream``, and ``invoke`` under a streaming callback handler such as LangGraph's "messages" mode): the public
# entry points give the run a known id and put (id, config) here; ``_stream`` / ``_astream`` take it.
_RUN: ContextVar[tuple[UUID, RunnableConfig] | None] = ContextVar("glimp_chat_model_run", default=None)
_END = object()  # the end of the graph's event stream
#: The graph's recursion limit: its budgets (``max_steps``) end a run; a host graph's limit (an agent's
#: ``recursion_limit``) counts the host's steps and must not cut the reasoning of one model call short.
_RECURSION_LIMIT = 100_000


async def _anext(events: AsyncIterator[Any]) -> Any:
    """The next event, or ``_END`` (a coroutine, so that it can run as a task in the graph's context)."""
    return await anext(events, _END)


class ChatGlimpRouter(BaseChatModel):
    """GlimpRouter as a LangChain chat model: small and large model reasoning in steps, the large one answering.

    Give the two endpoints (and optionally the router's settings), or a compiled graph to share. The run-scoped
    settings below are sent to the graph as its runtime context on every call (``None``: the graph's own
    setting); a call may override them too (``model.invoke(messages, tau=0.5)``), and so may ``bind``.

    Attributes:
        small: The small model's endpoint (an :class:`~glimp_graph.endpoints.Endpoint` or a mapping of its fields).
        large: The large model's endpoint.
        config: The router's settings (:class:`~glimp_graph.config.GlimpConfig` or a mapping of its fields).
        graph: A graph built by :func:`~glimp_graph.graph.create_glimp_graph`, instead of ``small`` / ``large`` /
            ``config`` (one compiled graph shared by several chat models with different settings).
        model_name: The name reported in ``response_metadata`` and traces (alias ``model``).
        tau: Entropy threshold of each run, in nats.
        top_k: Log-probabilities asked for the probe token.
        max_step_tokens: Token cap of one step.
        max_thinking_tokens: Token budget of the reasoning.
        max_steps: Step budget of the reasoning.
        final_max_tokens: Token cap of the final answer.
        prompt: A prompt preset name (``"steps"``, ``"plain"``, ``"r1"``), a
            :class:`~glimp_graph.prompts.PromptTemplate` or a mapping of its fields.

    Example:
        >>> from glimp_graph import ChatGlimpRouter
        >>> model = ChatGlimpRouter(
        ...     small={"base_url": "http://127.0.0.1:8001/v1", "model": "qwen2.5-coder-0.5b"},
        ...     large={"base_url": "http://127.0.0.1:8002/v1", "model": "qwen2.5-coder-1.5b"},
        ...     tau=1.0,
        ... )
        >>> reply = model.invoke("What is 17 * 3?")  # doctest: +SKIP
        >>> reply.text  # doctest: +SKIP
        '51'
        >>> [(b["extras"]["model"], b["reasoning"]) for b in reply.content_blocks if b["type"] == "reasoning"]
        ... # doctest: +SKIP

    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    small: Endpoint | None = None
    large: Endpoint | None = None
    config: GlimpConfig | None = None
    graph: CompiledStateGraph | None = Field(default=None, exclude=True)
    model_name: str = Field(default="glimp-router", alias="model")
    tau: float | None = None
    top_k: int | None = None
    max_step_tokens: int | None = None
    max_thinking_tokens: int | None = None
    max_steps: int | None = None
    final_max_tokens: int | None = None
    prompt: str | PromptTemplate | dict[str, Any] | None = None

    _graph: CompiledStateGraph = PrivateAttr()
    _may_call_tools: bool = PrivateAttr(default=True)

    @model_validator(mode="after")
    def _build(self) -> ChatGlimpRouter:
        if self.graph is not None:
            given = [name for name in ("small", "large", "config") if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"pass either graph= (a compiled glimp graph) or small=/large=/config=, not both (got graph and "
                    f"{', '.join(given)}): the graph already has its endpoints and settings"
                )
            self._graph = self.graph
            return self
        missing = [name for name in ("small", "large") if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"missing {' and '.join(missing)}: pass small= and large= (Endpoint or mapping with base_url and "
                "model), or graph= (a graph built by create_glimp_graph)"
            )
        settings = self.config or GlimpConfig()
        settings.for_run(run_settings(self._settings()))  # a bad tau, budget or prompt fails here, naming it
        self._may_call_tools = bool(settings.tools)
        # checkpointer=False: inside an agent with a checkpointer, the agent saves the turns (the messages); the
        # graph's own state (steps, probes) stays out of the agent's checkpoints
        self._graph = create_glimp_graph(self.small, self.large, config=settings, checkpointer=False)
        return self

    # -- what LangChain asks of a chat model ------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "glimp-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"model_name": self.model_name}
        if self.small is not None and self.large is not None:
            params |= {"small_model": self.small.model, "large_model": self.large.model}
        return params | {k: v for k, v in self._settings().items() if v is not None}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider=MODEL_PROVIDER, ls_model_name=self.model_name, ls_model_type="chat")
        if self.final_max_tokens is not None:
            params["ls_max_tokens"] = self.final_max_tokens
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools that the final answer may call (the reasoning steps never see them).

        Args:
            tools: LangChain tools, Pydantic models, typed functions or OpenAI tool dicts.
            tool_choice: ``"auto"`` (the default with tools), ``"required"`` (``"any"`` and ``True`` too),
                ``"none"``, a tool's name, or ``{"type": "function", "function": {"name": ...}}``. Small local
                models on llama.cpp call tools unreliably with ``"auto"``; ``"required"`` or a name forces the
                call (a grammar on llama.cpp, guided decoding on vLLM).
            **kwargs: More call options (run settings such as ``tau``).

        Returns:
            The chat model with ``tools`` and ``tool_choice`` bound.

        Raises:
            ValueError: A tool that cannot be converted or has a bad schema, duplicate tool names, an unknown
                ``tool_choice``, a call required with no tools, or an unknown option (``parallel_tool_calls``,
                ``strict``, ...); the message names it.

        """
        unknown = sorted(set(kwargs) - RUN_SETTINGS - _LANGCHAIN_OPTIONS)
        if unknown:
            raise ValueError(
                f"ChatGlimpRouter.bind_tools got unknown option(s) {', '.join(map(repr, unknown))}: it takes tools, "
                f"tool_choice and run settings {sorted(RUN_SETTINGS - {'tools', 'tool_choice'})}"
            )
        checked, choice = check_tools(tools, tool_choice)
        bound: dict[str, Any] = {"tools": checked}
        if choice is not None:
            bound["tool_choice"] = choice
        return super().bind(**bound, **kwargs)

    # -- the four entry points LangChain calls ------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        graph_input, config, context = self._run_args(messages, stop, run_manager, kwargs)
        with set_config_context(config) as ctx:
            return self._result(ctx.run(self._graph.invoke, graph_input, context=context))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        graph_input, config, context = self._run_args(messages, stop, run_manager, kwargs)
        with set_config_context(config) as ctx:
            return self._result(await coro_with_context(self._graph.ainvoke(graph_input, context=context), ctx))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        graph_input, config, context = self._run_args(messages, stop, run_manager, kwargs)
        chunks = _Chunks(self.model_name, hold_calls=self._tools_active(context))
        with set_config_context(config) as ctx:
            events = ctx.run(self._graph.stream, graph_input, context=context, stream_mode="custom")
            try:
                while (event := ctx.run(next, events, _END)) is not _END:
                    yield from chunks.on(event)
            finally:
                ctx.run(events.close)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        graph_input, config, context = self._run_args(messages, stop, run_manager, kwargs)
        chunks = _Chunks(self.model_name, hold_calls=self._tools_active(context))
        with set_config_context(config) as ctx:
            events = self._graph.astream(graph_input, context=context, stream_mode="custom")
            try:
                while (event := await coro_with_context(_anext(events), ctx)) is not _END:
                    for chunk in chunks.on(event):
                        yield chunk
            finally:
                await coro_with_context(events.aclose(), ctx)

    # -- the run's id for the paths where LangChain keeps its run manager to itself ------------------------------

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """See ``BaseChatModel.invoke``; the run gets a known id, so a streamed call's graph nests under it."""
        with _pending_run(config) as config:
            return super().invoke(input, config, stop=stop, **kwargs)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """See ``BaseChatModel.ainvoke``; the run gets a known id, so a streamed call's graph nests under it."""
        with _pending_run(config) as config:
            return await super().ainvoke(input, config, stop=stop, **kwargs)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """See ``BaseChatModel.stream``; the run gets a known id, so the graph's runs nest under it."""
        with _pending_run(config) as config:
            yield from super().stream(input, config, stop=stop, **kwargs)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """See ``BaseChatModel.astream``; the run gets a known id, so the graph's runs nest under it."""
        with _pending_run(config) as config:
            async for chunk in super().astream(input, config, stop=stop, **kwargs):
                yield chunk

    # -- shared by the four entry points ------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        """The chat model's run settings (``None``: the graph's own)."""
        settings = {name: getattr(self, name) for name in _FIELD_SETTINGS}
        if isinstance(settings["prompt"], PromptTemplate):
            settings["prompt"] = settings["prompt"].model_dump()
        return settings

    def _run_args(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        options: Mapping[str, Any],
    ) -> tuple[dict[str, Any], RunnableConfig, dict[str, Any]]:
        """The graph's input, config and runtime context for one call.

        The config is the one the graph runs under as its parent's (LangChain's ``set_config_context``, as a
        chain runs its children): the caller's, with the chat model run's callbacks, so that the graph's runs
        are children of the chat model's run (passed to ``invoke`` instead, LangGraph would merge it with the
        config of a graph node this call runs in, and the node would stay the graph's parent), and with a
        recursion limit of its own.
        """
        run = _RUN.get()
        _RUN.set(None)  # taken: one run per call
        if stop:
            raise InputError(
                f"ChatGlimpRouter does not take stop sequences (got stop={stop!r}): the steps stop at the router's "
                "delimiter and the answer at the end of the large model's turn; drop `stop`"
            )
        unknown = sorted(set(options) - RUN_SETTINGS)
        if unknown:
            raise InputError(
                f"ChatGlimpRouter got unknown call option(s) {', '.join(map(repr, unknown))}: a call (or bind / "
                f"bind_tools) may set {sorted(RUN_SETTINGS)}"
            )
        # Always a non-empty mapping (None values mean "the graph's setting"): an empty context would make
        # LangGraph hand the graph the context of a host graph this call runs in.
        context = self._settings() | dict(options)
        callbacks = _child_callbacks(run_manager, run)
        config = patch_config(var_child_runnable_config.get(), callbacks=callbacks, recursion_limit=_RECURSION_LIMIT)
        # copies: the graph gives each message an id, and the caller's messages stay as they were
        return {"messages": [m.model_copy() for m in messages]}, config, context

    def _tools_active(self, context: Mapping[str, Any]) -> bool:
        """Whether this run's answer may be a tool call (then answer text that could be one is held back)."""
        if context.get("tool_choice") == "none":
            return False
        return bool(context.get("tools")) or (self.graph is not None or self._may_call_tools)

    def _result(self, output: Mapping[str, Any]) -> ChatResult:
        """The graph's output as a chat result (the same message :class:`_Chunks` adds up to)."""
        steps = [_step_record(step.model_dump()) for step in output.get("glimp_steps") or []]
        stats = output["glimp_stats"].model_dump()
        graph_message = (output.get("messages") or [None])[-1]
        reasoning = graph_message.additional_kwargs.get("reasoning_content", "") if graph_message else ""
        tool_calls = list(output.get("glimp_tool_calls") or [])
        invalid = list(output.get("glimp_invalid_tool_calls") or [])
        message = AIMessage(
            content=output.get("glimp_answer", ""),
            additional_kwargs={"reasoning_content": reasoning, STEPS_KEY: steps},
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=_usage(stats),
            response_metadata=_metadata(self.model_name, stats, tool_calls=bool(tool_calls), invalid=invalid),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


# -- streaming --------------------------------------------------------------------------------------------------------


class _Chunks:
    """Turns the graph's ``stream_mode="custom"`` events into chat chunks that add up to ``invoke``'s message.

    A ``step`` event becomes a reasoning chunk; ``answer`` deltas become text chunks (leading and trailing
    whitespace held back, as the answer is stripped; with ``hold_calls``, everything from the first character
    that may start a tool call written as text); ``final`` sends what is left of the answer and the last chunk.
    """

    def __init__(self, model_name: str, *, hold_calls: bool) -> None:
        self._model_name = model_name
        self._hold_calls = hold_calls
        self._steps = 0
        self._text = ""  # the answer's text so far, leading whitespace dropped
        self._sent = ""  # what of it went out as chunks
        self._held = False  # a possible tool call was seen: nothing more goes out before the end

    def on(self, event: Any) -> Iterator[ChatGenerationChunk]:
        kind = event.get("type") if isinstance(event, Mapping) else None
        if kind == "step":
            yield self._step(event)
        elif kind == "answer":
            yield from self._delta(str(event.get("delta") or ""))
        elif kind == "final":
            yield self._last(event)

    def _step(self, event: Mapping[str, Any]) -> ChatGenerationChunk:
        joint = str(event.get("delimiter") or "") if self._steps else ""
        self._steps += 1
        record = _step_record(event)
        kwargs = {"reasoning_content": joint + record["text"], STEPS_KEY: [record]}
        message = AIMessageChunk(content="", additional_kwargs=kwargs, response_metadata=_provider())
        return ChatGenerationChunk(message=message)

    def _delta(self, delta: str) -> Iterator[ChatGenerationChunk]:
        self._text = (self._text + delta).lstrip()
        if self._held:
            return
        ready = self._text.rstrip()
        if self._hold_calls:
            marks = [i for i in (ready.find(c) for c in _CALL_MARKERS) if i >= 0]
            if marks:
                ready, self._held = ready[: min(marks)].rstrip(), True
        if len(ready) > len(self._sent):
            piece, self._sent = ready[len(self._sent) :], ready
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece, response_metadata=_provider()))

    def _last(self, event: Mapping[str, Any]) -> ChatGenerationChunk:
        answer = str(event.get("answer") or "")
        rest = answer[len(self._sent) :] if answer.startswith(self._sent) else ""
        if not answer.startswith(self._sent):
            logger.warning("the streamed answer %r is not the start of the final answer %r", self._sent, answer)
        calls = list(event.get("tool_calls") or [])
        invalid = list(event.get("invalid_tool_calls") or [])
        call_chunks = [
            {"name": c.get("name"), "args": json.dumps(c.get("args") or {}), "id": c.get("id"), "index": i}
            for i, c in enumerate(calls)
        ]
        # LangChain adds chunks up by parsing each call's arguments leniently (a cut JSON object is "repaired"
        # into a valid call), so an invalid call's arguments go out as a JSON string: never an object, it stays
        # invalid; the calls with their errors are in response_metadata["glimp_invalid_tool_calls"]
        call_chunks += [
            {"name": c.get("name"), "args": json.dumps(c.get("args")), "id": c.get("id"), "index": len(calls) + i}
            for i, c in enumerate(invalid)
        ]
        stats = dict(event.get("stats") or {})
        message = AIMessageChunk(
            content=rest,
            tool_call_chunks=call_chunks,
            usage_metadata=_usage(stats),
            response_metadata=_metadata(self._model_name, stats, tool_calls=bool(calls), invalid=invalid),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)


# -- the message's parts ----------------------------------------------------------------------------------------------


def _step_record(step: Mapping[str, Any]) -> dict[str, Any]:
    """One step as carried in ``additional_kwargs["glimp_steps"]`` and a reasoning block's extras."""
    record = {"step": step.get("index"), "text": str(step.get("text") or "")}
    record.update({name: step[name] for name in _STEP_FIELDS if step.get(name) is not None})
    return record


def _usage(stats: Mapping[str, Any]) -> UsageMetadata:
    """Tokens of both models: every call's prompt tokens in, every generated token out."""
    small_in, large_in = int(stats.get("small_prompt_tokens", 0)), int(stats.get("large_prompt_tokens", 0))
    small_out, large_out = int(stats.get("small_tokens", 0)), int(stats.get("large_tokens", 0))
    generated = small_out + large_out
    return UsageMetadata(
        input_tokens=small_in + large_in,
        output_tokens=generated,
        total_tokens=small_in + large_in + generated,
        input_token_details={"small": small_in, "large": large_in},  # type: ignore[typeddict-unknown-key]
        output_token_details={
            "reasoning": generated - int(stats.get("final_tokens", 0)),
            "small": small_out,  # type: ignore[typeddict-unknown-key]
            "large": large_out,
        },
    )


def _provider() -> dict[str, Any]:
    return {"model_provider": MODEL_PROVIDER}


def _metadata(
    model_name: str, stats: Mapping[str, Any], *, tool_calls: bool, invalid: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    metadata = {
        "model_name": model_name,
        "model_provider": MODEL_PROVIDER,
        "finish_reason": "tool_calls" if tool_calls else "stop",
        "glimp_stats": dict(stats),
    }
    if invalid:
        metadata["glimp_invalid_tool_calls"] = [dict(c) for c in invalid]
    return metadata


@contextlib.contextmanager
def _pending_run(config: RunnableConfig | None) -> Iterator[RunnableConfig]:
    """``config`` with a run id (the caller's, or a new one), that run the pending one for ``_stream`` meanwhile."""
    config = ensure_config(config)
    run_id = config.get("run_id") or uuid7()
    config = {**config, "run_id": run_id}
    token = _RUN.set((run_id, config))
    try:
        yield config
    finally:
        # a stream closed from another context (garbage collection, the event loop's finalizer) cannot reset it
        with contextlib.suppress(ValueError):
            _RUN.reset(token)


def _child_callbacks(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    run: tuple[UUID, RunnableConfig] | None,
) -> CallbackManager | None:
    """The callbacks of a child of the chat model's run (what a chain's ``run_manager.get_child()`` gives).

    Args:
        run_manager: The run's manager, when LangChain hands it over (``invoke``, ``ainvoke``, ``batch``).
        run: Else the run's id and config from the entry point (``stream``, ``astream``, a streaming handler).

    Returns:
        A callback manager whose runs are children of the chat model's run; ``None`` when neither is known.

    """
    if run_manager is not None:
        parent, source = run_manager.run_id, run_manager
    elif run is not None:
        parent, config = run
        source = CallbackManager.configure(
            inheritable_callbacks=config.get("callbacks"),
            inheritable_tags=config.get("tags"),
            inheritable_metadata=config.get("metadata"),
        )
    else:
        return None
    child = CallbackManager(handlers=[], parent_run_id=parent)
    child.set_handlers(source.inheritable_handlers)
    child.add_tags(source.inheritable_tags)
    child.add_metadata(source.inheritable_metadata)
    return child


# -- content blocks ---------------------------------------------------------------------------------------------------


def _content_blocks(message: AIMessage) -> list[types.ContentBlock]:
    """Standard content blocks of a ``ChatGlimpRouter`` message: a reasoning block per step, the text, the calls."""
    if not isinstance(message.content, str):
        raise NotImplementedError  # content blocks already (output_version="v1"): LangChain reads them as they are
    chunk = isinstance(message, AIMessageChunk)
    blocks: list[types.ContentBlock] = []
    steps = message.additional_kwargs.get(STEPS_KEY)
    if isinstance(steps, list) and steps:
        for record in steps:
            extras = {k: v for k, v in record.items() if k != "text"}
            block = types.ReasoningContentBlock(type="reasoning", reasoning=str(record.get("text", "")), extras=extras)
            if chunk:
                block["index"] = f"lc_glimp_step_{record.get('step')}"
            blocks.append(block)
    elif isinstance(reasoning := message.additional_kwargs.get("reasoning_content"), str) and reasoning:
        blocks.append(types.ReasoningContentBlock(type="reasoning", reasoning=reasoning))
    if message.content:
        text = types.TextContentBlock(type="text", text=message.content)
        if chunk:
            text["index"] = "lc_glimp_answer"
        blocks.append(text)
    if isinstance(message, AIMessageChunk) and message.chunk_position != "last":
        blocks.extend(
            types.ToolCallChunk(type="tool_call_chunk", name=c["name"], args=c["args"], id=c["id"], index=c["index"])
            for c in message.tool_call_chunks
        )
        return blocks
    blocks.extend(
        types.ToolCall(type="tool_call", name=c["name"], args=c["args"], id=c.get("id")) for c in message.tool_calls
    )
    blocks.extend(
        types.InvalidToolCall(type="invalid_tool_call", name=c["name"], args=c["args"], id=c["id"], error=c["error"])
        for c in message.invalid_tool_calls
    )
    return blocks


register_translator(MODEL_PROVIDER, _content_blocks, _content_blocks)
