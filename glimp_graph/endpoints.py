"""Talking to OpenAI-compatible servers: the one place for request shaping and response parsing.

Calls go through ``langchain-openai``'s ``ChatOpenAI`` (so LangSmith traces every call) with the chat API and a
partial assistant message that the server continues (``continue_final_message``). Servers differ in what they
return for a continuation: vLLM returns only the new text, llama.cpp's server returns the prefix too. A
:class:`ModelClient` learns the server kind once (``GET /models``) and always hands back only the new text.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import openai
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_openai import ChatOpenAI

from glimp_graph.errors import (
    BadResponseError,
    ContextLengthError,
    EndpointError,
    EndpointUnavailableError,
    LogprobsUnavailableError,
)
from glimp_graph.state import Role, StepEnd

if TYPE_CHECKING:
    from glimp_graph.config import Endpoint, ServerKind

#: Characters per token assumed when checking a prompt against the context window before sending it; real text
#: has fewer characters per token, so the estimate only rejects prompts that cannot fit.
CHARS_PER_TOKEN = 4

_CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


class _ChatOpenAI(ChatOpenAI):
    """``ChatOpenAI`` that keeps vLLM's ``stop_reason`` (a matched stop string, or None at end of sequence)."""

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
        messages: System / user / history messages as ``{"role", "content"}`` dicts.
        prefix: Partial assistant message to continue ("" starts a fresh assistant turn).
        max_tokens: Token cap.
        stop: Stop strings.
        temperature: Sampling temperature (``None``: the endpoint's).
        top_p: Nucleus sampling (``None``: the endpoint's).
        top_logprobs: Log-probabilities to return for each token (``None``: none).
        run_name: Name of the LLM run in traces.
        tags: Trace tags.
        metadata: Trace metadata.

    """

    messages: list[dict[str, str]]
    prefix: str
    max_tokens: int
    stop: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    run_name: str = "model"
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


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

    """

    text: str
    end: StepEnd
    tokens: int
    prompt_tokens: int
    top_logprobs: list[tuple[str, float]] | None
    seconds: float
    logprobs: list[TokenLogprob] = field(default_factory=list)


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
        self.vocab_size: int | None = None
        self.context_length: int | None = None
        self._llm = self._chat_model()
        self._async: tuple[asyncio.AbstractEventLoop, _ChatOpenAI] | None = None

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

    def _async_llm(self) -> _ChatOpenAI:
        """The chat model for async calls in the running event loop.

        An async HTTP client is bound to the event loop it first ran in; ``langchain-openai`` shares one per
        base URL across instances, so a second ``asyncio.run`` (a script, a notebook, a test) would reuse a
        client whose loop is closed. Each event loop gets its own client here.
        """
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, self._chat_model(http_async_client=openai.DefaultAsyncHttpxClient()))
        return self._async[1]

    def __repr__(self) -> str:
        return f"ModelClient(role={self.role!r}, model={self.endpoint.model!r}, base_url={self.endpoint.base_url!r})"

    # -- server kind -------------------------------------------------------------------------------------------
    def _learn_server(self, models: Any) -> None:
        data = list(getattr(models, "data", None) or [])
        entry = next((m for m in data if getattr(m, "id", None) == self.endpoint.model), data[0] if data else None)
        owner = str(getattr(entry, "owned_by", "") or "").lower()
        self._server = "vllm" if owner == "vllm" else "llama.cpp" if owner.startswith("llama") else "openai"
        meta = getattr(entry, "meta", None) or {}
        if isinstance(meta, dict) and isinstance(meta.get("n_vocab"), int):
            self.vocab_size = meta["n_vocab"]
        context = meta.get("n_ctx") if isinstance(meta, dict) else None
        context = context or getattr(entry, "max_model_len", None)
        if isinstance(context, int) and context > 0:
            self.context_length = context

    def server_kind(self) -> ServerKind:
        """The server's kind, asked once with ``GET /models`` when the endpoint says ``"auto"``."""
        if self._server is None:
            with self._errors():
                self._learn_server(self._llm.root_client.models.list())
        assert self._server is not None
        return self._server

    async def aserver_kind(self) -> ServerKind:
        """Async :meth:`server_kind`."""
        if self._server is None:
            with self._errors():
                self._learn_server(await self._async_llm().root_async_client.models.list())
        assert self._server is not None
        return self._server

    # -- calls -------------------------------------------------------------------------------------------------
    def complete(self, request: Request) -> Completion:
        """Send ``request`` and wait for the completion."""
        server = self.server_kind()
        messages, kwargs, config = self._shape(request, server)
        start = time.perf_counter()
        with self._errors():
            message = self._llm.invoke(messages, config=config, **kwargs)
        return self._parse(request, server, message, time.perf_counter() - start)

    async def acomplete(self, request: Request) -> Completion:
        """Async :meth:`complete`."""
        server = await self.aserver_kind()
        messages, kwargs, config = self._shape(request, server)
        start = time.perf_counter()
        with self._errors():
            message = await self._async_llm().ainvoke(messages, config=config, **kwargs)
        return self._parse(request, server, message, time.perf_counter() - start)

    def _shape(self, request: Request, server: ServerKind) -> tuple[list[dict[str, str]], dict[str, Any], dict]:
        self._check_fits(request)
        messages = list(request.messages)
        kwargs: dict[str, Any] = {"max_tokens": request.max_tokens}
        if request.prefix:
            messages.append({"role": "assistant", "content": request.prefix})
            kwargs["extra_body"] = dict(_CONTINUE)
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
        chars = sum(len(m.get("content") or "") for m in request.messages) + len(request.prefix)
        if chars // CHARS_PER_TOKEN > self.context_length:
            raise self._bad(
                ContextLengthError,
                f"the prompt ({chars} characters, at least ~{chars // CHARS_PER_TOKEN} tokens) cannot fit the "
                f"model's context of {self.context_length} tokens: shorten the question or serve the model "
                "with a larger context",
            )

    def _parse(self, request: Request, server: ServerKind, message: BaseMessage, seconds: float) -> Completion:
        if not isinstance(message, AIMessage) or not isinstance(message.content, str):
            raise self._bad(BadResponseError, f"expected a text chat completion, got {message!r:.200}")
        text = message.content
        if server == "llama.cpp" and request.prefix:
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
        return Completion(
            text=text,
            end=end,
            tokens=int(usage.get("output_tokens", 0)),
            prompt_tokens=int(usage.get("input_tokens", 0)),
            top_logprobs=top,
            seconds=seconds,
            logprobs=tokens,
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
