"""Describing and talking to OpenAI-compatible servers: the one place for request shaping and response parsing.

An :class:`Endpoint` describes one server (its URL, model, sampling); a :class:`ModelClient` talks to it in a
``role`` (the small or the large model).

Calls go through ``langchain-openai``'s ``ChatOpenAI`` (so LangSmith traces every call) with the chat API and a
partial assistant message that the server continues (``continue_final_message``). Servers differ in what they
return for a continuation: vLLM returns only the new text, llama.cpp's server returns the prefix too. A
:class:`ModelClient` learns the server kind once (``GET /models``) and always hands back only the new text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, message_chunk_to_message
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from glimp_graph.errors import (
    BadResponseError,
    ContextLengthError,
    EndpointError,
    EndpointUnavailableError,
    LogprobsUnavailableError,
)
from glimp_graph.tool_calls import streams_text, tool_calls_from, tool_request

Role = Literal["small", "large"]
"""Which of the two models: the small one (probes, routine steps) or the large one (hard steps, the answer)."""
StepEnd = Literal["delimiter", "length", "eos", "stop"]
"""Why one step ended: the delimiter, its token cap, end of sequence, or "stop" (the server cannot tell which)."""
ServerKind = Literal["auto", "vllm", "llama.cpp", "openai"]
"""How a server continues a partial assistant message (``"auto"``: asked of the server once)."""


class Endpoint(BaseModel):
    """An OpenAI-compatible chat endpoint serving one model (vLLM, llama.cpp's server, ...).

    Attributes:
        base_url: The API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: The served model name.
        api_key: Bearer token; never logged or traced.
        server: How the server continues a partial assistant message. ``"auto"`` asks ``GET /models`` once.
        temperature: Sampling temperature for the steps and the final answer (the probe always uses 0).
        top_p: Nucleus sampling for the steps and the final answer.
        seed: Sampling seed sent with every request, for reproducible runs.
        timeout: Seconds to wait for one response.
        max_retries: Retries (with exponential backoff, by the OpenAI client) for connection errors, 408, 429, 5xx.

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str
    model: str
    api_key: SecretStr = SecretStr("EMPTY")
    server: ServerKind = "auto"
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    seed: int | None = None
    timeout: float = Field(default=300.0, gt=0.0)
    max_retries: int = Field(default=2, ge=0, le=10)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("model")
    @classmethod
    def _model_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must be a non-empty served model name")
        return value


#: Characters per token assumed when checking a prompt against the context window before sending it; real text
#: has fewer characters per token, so the estimate only rejects prompts that cannot fit.
CHARS_PER_TOKEN = 4

_CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


class _ChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` that keeps vLLM's ``stop_reason`` (a matched stop string, or None at end of sequence).

    It never uses the streaming API. ``graph.stream(..., stream_mode="messages")`` (LangGraph Studio's chat view,
    the LangGraph server's "messages-tuple") attaches a streaming callback handler, and that switches a chat model
    to streaming unless ``disable_streaming`` is set. A streamed call would go around :meth:`_create_chat_result`
    (vLLM's ``stop_reason`` lost, so step ends and end of sequence go unseen) and would carry no usage (the
    servers send it only when asked with ``stream_options``), so token budgets and statistics would be wrong.
    Every call here is short (one probe token, one step, the answer), the router streams its steps as
    ``stream_mode="custom"`` events, and the messages mode still receives each call's whole message when it ends.
    """

    disable_streaming: bool | Literal["tool_calling"] = True

    def _create_chat_result(self, response: dict | openai.BaseModel, generation_info: dict | None = None) -> ChatResult:
        raw = response if isinstance(response, dict) else response.model_dump()
        if isinstance(raw, dict) and raw.get("choices") == []:
            raise ValueError("the response has an empty 'choices' list")
        result = super()._create_chat_result(response, generation_info)
        for gen, choice in zip(result.generations, raw.get("choices") or [], strict=False):
            if isinstance(choice, dict) and "stop_reason" in choice:
                gen.message.response_metadata["stop_reason"] = choice["stop_reason"]
        return result


@dataclass(frozen=True)
class Request:
    """One model call: the conversation, the partial assistant text to continue, and the sampling.

    Attributes:
        messages: The conversation as OpenAI chat messages (``{"role", "content"}``, an assistant's
            ``tool_calls``, ``{"role": "tool", "tool_call_id", "content"}``).
        prefix: Partial assistant message to continue ("" starts a fresh assistant turn).
        max_tokens: Token cap.
        stop: Stop strings.
        temperature: Sampling temperature (``None``: the endpoint's).
        top_p: Nucleus sampling (``None``: the endpoint's).
        top_logprobs: Log-probabilities to return for each token (``None``: none).
        run_name: Name of the LLM run in traces.
        tags: Trace tags.
        metadata: Trace metadata.
        tools: Tools the model may call (OpenAI tool dicts), checked by :func:`glimp_graph.tool_calls.check_tools`.
        tool_choice: ``"auto"``, ``"required"``, ``"none"`` or a named function (``None``: the server's default).
        on_text: Called with each new piece of text as the server streams it; set, the call streams
            (``stream_options.include_usage`` keeps the token counts), unless its tools forbid it on this server
            (:func:`glimp_graph.tool_calls.streams_text`): then it gets the text once, the calls taken out.

    """

    messages: list[dict[str, Any]]
    prefix: str
    max_tokens: int
    stop: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    run_name: str = "model"
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    tools: Sequence[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    on_text: Callable[[str], None] | None = None


Call = tuple["ModelClient", "Request"]
"""A model call as node logic yields it: the client to call and the request."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the top alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class Completion:
    """What a model call produced.

    Attributes:
        text: Only the new text (never the prefix).
        end: Why generation ended (``"stop"``: a stop string or end of sequence, the server does not say which).
        tokens: Completion tokens.
        prompt_tokens: Prompt tokens.
        top_logprobs: Top log-probabilities of the first generated token, ``(token, logprob)``, if asked for.
        seconds: Wall time of the call.
        logprobs: Every generated token with its log-probability (when log-probabilities were asked for).
        tool_calls: Tool calls the model made (LangChain ``ToolCall`` dicts), when the request carried tools.
        invalid_tool_calls: Tool calls that cannot be run (LangChain ``InvalidToolCall`` dicts with an error).

    """

    text: str
    end: StepEnd
    tokens: int
    prompt_tokens: int
    top_logprobs: list[tuple[str, float]] | None
    seconds: float
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    invalid_tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ModelClient:
    """One endpoint in one role (``"small"`` or ``"large"``): sync and async calls sharing all logic.

    Args:
        endpoint: The endpoint's settings.
        role: The role this endpoint plays; it names the endpoint in errors and tags its traces.

    """

    def __init__(self, endpoint: Endpoint, role: Role) -> None:
        self.endpoint = endpoint
        self.role = role
        self._server: ServerKind | None = None if endpoint.server == "auto" else endpoint.server
        self._checked = False
        self.vocab_size: int | None = None
        self.context_length: int | None = None
        self._llm = self._chat_model()
        self._stream_llm = self._chat_model(disable_streaming=False, stream_usage=True)
        self._async: tuple[asyncio.AbstractEventLoop, _ChatOpenAI, _ChatOpenAI] | None = None

    def _chat_model(self, **extra: Any) -> _ChatOpenAI:
        endpoint = self.endpoint
        return _ChatOpenAI(
            model=endpoint.model,
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            temperature=endpoint.temperature,
            top_p=endpoint.top_p,
            seed=endpoint.seed,
            timeout=endpoint.timeout,
            max_retries=endpoint.max_retries,
            use_responses_api=False,
            name=f"{self.role}_model",
            **extra,
        )

    def _async_llm(self, *, streaming: bool = False) -> _ChatOpenAI:
        """The chat model for async calls in the running event loop (the streaming one if ``streaming``).

        An async HTTP client is bound to the event loop it first ran in; ``langchain-openai`` shares one per
        base URL across instances, so a second ``asyncio.run`` (a script, a notebook, a test) would reuse a
        client whose loop is closed. Each event loop gets its own client here.
        """
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            http = openai.DefaultAsyncHttpxClient()
            self._async = (
                loop,
                self._chat_model(http_async_client=http),
                self._chat_model(http_async_client=http, disable_streaming=False, stream_usage=True),
            )
        return self._async[2 if streaming else 1]

    def __repr__(self) -> str:
        return f"ModelClient(role={self.role!r}, model={self.endpoint.model!r}, base_url={self.endpoint.base_url!r})"

    # -- server kind -------------------------------------------------------------------------------------------
    @property
    def checked(self) -> bool:
        """Whether :meth:`check` has succeeded (the server answered ``GET /models``, or was accepted without)."""
        return self._checked

    def _learn_server(self, models: Any) -> None:
        data = list(getattr(models, "data", None) or [])
        entry = next((m for m in data if getattr(m, "id", None) == self.endpoint.model), data[0] if data else None)
        owner = str(getattr(entry, "owned_by", "") or "").lower()
        if self.endpoint.server == "auto":
            self._server = "vllm" if owner == "vllm" else "llama.cpp" if owner.startswith("llama") else "openai"
        meta = getattr(entry, "meta", None) or {}
        if isinstance(meta, dict) and isinstance(meta.get("n_vocab"), int):
            self.vocab_size = meta["n_vocab"]
        context = meta.get("n_ctx") if isinstance(meta, dict) else None
        context = context or getattr(entry, "max_model_len", None)
        if isinstance(context, int) and context > 0:
            self.context_length = context

    def check(self) -> None:
        """Contact the server once, with ``GET /models``: its kind (when ``"auto"``), context and vocabulary.

        The answer is kept, so later calls cost nothing; a failure is not kept (the next call asks again).
        With an explicit server kind only an outage fails the check (a server without ``GET /models`` is
        accepted; its context is then unknown).

        Raises:
            EndpointError: The server cannot be reached (:class:`EndpointUnavailableError`) or refused.

        """
        if not self._checked:
            with self._lookup():
                self._learn_server(self._llm.root_client.models.list())

    async def acheck(self) -> None:
        """Async :meth:`check`."""
        if not self._checked:
            with self._lookup():
                self._learn_server(await self._async_llm().root_async_client.models.list())

    @contextlib.contextmanager
    def _lookup(self) -> Iterator[None]:
        try:
            with self._errors():
                yield
        except EndpointUnavailableError:
            raise
        except EndpointError:
            if self.endpoint.server == "auto":
                raise
        self._checked = True

    def server_kind(self) -> ServerKind:
        """The server's kind, asked once with ``GET /models`` (:meth:`check`) when the endpoint says ``"auto"``."""
        if self._server is None:
            self.check()
        assert self._server is not None
        return self._server

    async def aserver_kind(self) -> ServerKind:
        """Async :meth:`server_kind`."""
        if self._server is None:
            await self.acheck()
        assert self._server is not None
        return self._server

    # -- calls -------------------------------------------------------------------------------------------------
    def complete(self, request: Request) -> Completion:
        """Send ``request`` and wait for the completion."""
        server = self.server_kind()
        messages, kwargs, config = self._shape(request, server)
        start = time.perf_counter()
        stream = _streams(request, server)
        with self._errors():
            if stream and request.on_text is not None:
                streamed = _Streamed(request.on_text)
                for chunk in self._stream_llm.stream(messages, config=config, **kwargs):
                    streamed.add(chunk)
                message = streamed.message()
            else:
                message = self._llm.invoke(messages, config=config, **kwargs)
        return self._parse(request, server, message, time.perf_counter() - start, streamed=stream)

    async def acomplete(self, request: Request) -> Completion:
        """Async :meth:`complete`."""
        server = await self.aserver_kind()
        messages, kwargs, config = self._shape(request, server)
        start = time.perf_counter()
        stream = _streams(request, server)
        with self._errors():
            if stream and request.on_text is not None:
                streamed = _Streamed(request.on_text)
                async for chunk in self._async_llm(streaming=True).astream(messages, config=config, **kwargs):
                    streamed.add(chunk)
                message = streamed.message()
            else:
                message = await self._async_llm().ainvoke(messages, config=config, **kwargs)
        return self._parse(request, server, message, time.perf_counter() - start, streamed=stream)

    def _shape(self, request: Request, server: ServerKind) -> tuple[list[dict[str, Any]], dict[str, Any], dict]:
        self._check_fits(request)
        messages = list(request.messages)
        kwargs: dict[str, Any] = {"max_tokens": request.max_tokens}
        if request.tools:
            kwargs.update(tool_request(server, request.tools, request.tool_choice))
        if request.prefix:
            messages.append({"role": "assistant", "content": request.prefix})
            kwargs["extra_body"] = {**kwargs.get("extra_body", {}), **_CONTINUE}
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.top_logprobs is not None:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = request.top_logprobs
        config = {
            "run_name": request.run_name,
            "tags": ["glimp", f"glimp:{self.role}", *request.tags],
            "metadata": {"glimp_role": self.role, "glimp_server": server, **request.metadata},
        }
        return messages, kwargs, config

    def _check_fits(self, request: Request) -> None:
        if self.context_length is None:
            return
        chars = sum(len(str(m.get("content") or "")) for m in request.messages) + len(request.prefix)
        if chars // CHARS_PER_TOKEN > self.context_length:
            raise self._bad(
                ContextLengthError,
                f"the prompt ({chars} characters, at least ~{chars // CHARS_PER_TOKEN} tokens) cannot fit the "
                f"model's context of {self.context_length} tokens: shorten the question or serve the model "
                "with a larger context",
            )

    def _parse(
        self, request: Request, server: ServerKind, message: BaseMessage, seconds: float, *, streamed: bool
    ) -> Completion:
        if not isinstance(message, AIMessage) or not isinstance(message.content, str):
            raise self._bad(BadResponseError, f"expected a text chat completion, got {message!r:.200}")
        text = message.content
        # llama.cpp returns the continued prefix with the new text, except when it streams
        if server == "llama.cpp" and request.prefix and not streamed:
            if not text.startswith(request.prefix):
                raise self._bad(
                    BadResponseError,
                    "llama.cpp's server was expected to return the continued prefix, but the text does not start "
                    "with it; set Endpoint(server=...) to the right server kind",
                )
            text = text[len(request.prefix) :]
        meta = message.response_metadata
        finish = meta.get("finish_reason")
        end = _end_of(finish, meta, server)
        usage = message.usage_metadata or {}
        top = None
        tokens: list[TokenLogprob] = []
        if request.top_logprobs is not None:
            top = self._first_top_logprobs(meta.get("logprobs"), text, end)
            tokens = _token_logprobs(meta.get("logprobs"))
        calls: list[dict[str, Any]] = []
        invalid: list[dict[str, Any]] = []
        if request.tools:
            text, calls, invalid = tool_calls_from(
                server,
                text,
                [dict(c) for c in message.tool_calls],
                [dict(c) for c in message.invalid_tool_calls],
                request.tools,
                request.tool_choice,
            )
        if request.on_text is not None and not streamed and text:
            request.on_text(text)  # the text once the calls are out of it (see tool_calls.streams_text)
        return Completion(
            text=text,
            end=end,
            tokens=int(usage.get("output_tokens", 0)),
            prompt_tokens=int(usage.get("input_tokens", 0)),
            top_logprobs=top,
            seconds=seconds,
            logprobs=tokens,
            tool_calls=calls,
            invalid_tool_calls=invalid,
        )

    def _first_top_logprobs(self, logprobs: Any, text: str, end: StepEnd) -> list[tuple[str, float]]:
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content:
            raise self._bad(
                LogprobsUnavailableError,
                "the response carries no log-probabilities; the probe needs them: serve the small model with "
                "vLLM (--max-logprobs >= top_k) or llama.cpp's server, which return top_logprobs",
            )
        pairs = _pairs(content[0].get("top_logprobs"))
        if not pairs:
            raise self._bad(
                LogprobsUnavailableError,
                "the response has a token but an empty top_logprobs list; the server must honour top_logprobs "
                "(vLLM: start it with --max-logprobs >= top_k)",
            )
        return pairs

    # -- errors ------------------------------------------------------------------------------------------------
    def _bad(self, cls: type[EndpointError], message: str) -> EndpointError:
        return cls(self.role, self.endpoint.base_url, message)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn client exceptions into :class:`EndpointError` s that name the endpoint and say what to fix."""
        try:
            yield
        except EndpointError:
            raise
        except openai.APITimeoutError as exc:
            waited = f"no answer within {self.endpoint.timeout:g} s (after {self.endpoint.max_retries} retries)"
            raise self._bad(EndpointUnavailableError, waited) from exc
        except openai.APIConnectionError as exc:
            raise self._bad(
                EndpointUnavailableError,
                f"cannot connect ({exc.__cause__ or exc}); is the server running at this URL?",
            ) from exc
        except openai.AuthenticationError as exc:
            raise self._bad(EndpointError, "the server refused the API key (HTTP 401); check api_key") from exc
        except openai.NotFoundError as exc:
            raise self._bad(
                EndpointError,
                f"HTTP 404 ({_body(exc)}); check base_url (it usually ends in /v1) and the model name "
                f"{self.endpoint.model!r}",
            ) from exc
        except openai.APIStatusError as exc:
            body = _body(exc)
            if exc.status_code >= 500:
                failed = f"HTTP {exc.status_code} (after {self.endpoint.max_retries} retries): {body}"
                raise self._bad(EndpointUnavailableError, failed) from exc
            if exc.status_code == 400 and "context" in body.lower():
                raise self._bad(
                    ContextLengthError,
                    f"HTTP 400: {body}; the prompt does not fit the model's context: shorten the question, lower "
                    "max_thinking_tokens / final_max_tokens, or serve the model with a larger context",
                ) from exc
            if exc.status_code == 400 and "logprobs" in body.lower():
                raise self._bad(
                    LogprobsUnavailableError,
                    f"HTTP 400: {body}; the server refuses the probe's top_logprobs: start vLLM with "
                    "--max-logprobs >= top_k, or lower top_k",
                ) from exc
            raise self._bad(EndpointError, f"HTTP {exc.status_code}: {body}") from exc
        except (openai.APIResponseValidationError, ValueError, KeyError, TypeError) as exc:
            raise self._bad(BadResponseError, f"the server's answer is not a valid chat completion: {exc}") from exc


def _streams(request: Request, server: ServerKind) -> bool:
    """Whether the call streams: asked for (``on_text``) and safe with its tools on this server."""
    return request.on_text is not None and streams_text(server, request.tools, request.tool_choice)


class _Streamed:
    """A streamed completion: hands each new piece of text on, and adds the chunks up into one message."""

    def __init__(self, on_text: Callable[[str], None]) -> None:
        self._on_text = on_text
        self._total: AIMessageChunk | None = None

    def add(self, chunk: BaseMessage) -> None:
        if not isinstance(chunk, AIMessageChunk):
            raise ValueError(f"expected a chat completion chunk, got {chunk!r:.200}")
        if isinstance(chunk.content, str) and chunk.content:
            self._on_text(chunk.content)
        self._total = chunk if self._total is None else self._total + chunk

    def message(self) -> AIMessage:
        """The whole message; tool-call arguments parsed strictly (a cut JSON object is an invalid call)."""
        if self._total is None:
            raise ValueError("the server streamed no chunk")
        message = message_chunk_to_message(self._total)
        assert isinstance(message, AIMessage)
        if not self._total.tool_call_chunks:
            return message
        calls, invalid = [], []
        for chunk in self._total.tool_call_chunks:
            name, raw, call_id = chunk.get("name"), chunk.get("args") or "", chunk.get("id")
            try:
                args = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                invalid.append(invalid_tool_call(name=name, args=raw, id=call_id, error=f"not valid JSON: {exc}"))
                continue
            if not isinstance(args, dict):
                invalid.append(invalid_tool_call(name=name, args=raw, id=call_id, error="not a JSON object"))
                continue
            calls.append(tool_call(name=name or "", args=args, id=call_id))
        return message.model_copy(update={"tool_calls": calls, "invalid_tool_calls": invalid})


def check_all(clients: Sequence[ModelClient]) -> list[EndpointError | None]:
    """Run :meth:`ModelClient.check` on every client at once (a thread each); each one's error, or ``None``."""
    if all(c.checked for c in clients):
        return [None] * len(clients)
    with ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="glimp-check") as pool:
        return list(pool.map(_failure_of, clients))


async def acheck_all(clients: Sequence[ModelClient]) -> list[EndpointError | None]:
    """Async :func:`check_all`: every client's :meth:`ModelClient.acheck` at once (``asyncio.gather``)."""
    return list(await asyncio.gather(*(_afailure_of(c) for c in clients)))


def _failure_of(client: ModelClient) -> EndpointError | None:
    try:
        client.check()
    except EndpointError as exc:
        return exc
    return None


async def _afailure_of(client: ModelClient) -> EndpointError | None:
    try:
        await client.acheck()
    except EndpointError as exc:
        return exc
    return None


def _pairs(entries: Any) -> list[tuple[str, float]]:
    return [(str(t.get("token", "")), float(t["logprob"])) for t in entries or [] if t.get("logprob") is not None]


def _token_logprobs(logprobs: Any) -> list[TokenLogprob]:
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return [
        TokenLogprob(token=str(c.get("token", "")), logprob=float(c["logprob"]), top=_pairs(c.get("top_logprobs")))
        for c in content or []
        if isinstance(c, dict) and c.get("logprob") is not None
    ]


def _body(exc: openai.APIStatusError) -> str:
    try:
        text = exc.response.text
    except Exception:
        text = str(exc)
    return text[:300]


def _end_of(finish: str | None, meta: dict[str, Any], server: ServerKind) -> StepEnd:
    if finish == "length":
        return "length"
    if finish != "stop":
        return "stop"
    if "stop_reason" in meta:
        return "eos" if meta["stop_reason"] is None else "delimiter"
    return "stop"
