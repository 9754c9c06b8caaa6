"""An OpenAI-compatible face for the router: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client (the ``openai`` package, LangChain's ``ChatOpenAI``, ...) can call the GlimpRouter graph as if
it were one model. The answer is the assistant message; the reasoning steps are in ``reasoning_content`` (the
field reasoning models use) and the routing record in an extra ``glimp`` field (steps and statistics). With
``"stream": true`` the server sends Server-Sent Events: one ``reasoning_content`` delta per step as it is
written, then the answer as ``content``, then ``data: [DONE]``.

Run it with ``glimp serve-router`` (uvicorn, 127.0.0.1 by default), or mount :func:`create_app` in your own ASGI
server. Needs ``starlette`` (and ``uvicorn`` to serve): ``pip install "glimp-graph[server]"``.
"""

from __future__ import annotations

import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from glimp_graph.config import check_tau
from glimp_graph.errors import EndpointError, GlimpError, InputError
from glimp_graph.state import reasoning_text

GraphFactory = Callable[[Mapping[str, Any]], Any]
"""``(overrides) -> compiled graph``; overrides hold ``final_max_tokens`` when the request sets ``max_tokens``."""

_ROLES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage,
    "developer": SystemMessage,
    "user": HumanMessage,
    "assistant": AIMessage,
}


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def response(self) -> JSONResponse:
        """The error as an OpenAI-style JSON response."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise RequestError(400, f"{where}: only text content parts are supported", param="messages")
        return "".join(parts)
    if content is None:
        return ""
    raise RequestError(400, f"{where}.content must be a string or a list of text parts", param="messages")


def parse_messages(raw: Any) -> list[BaseMessage]:
    """The request's ``messages`` as LangChain messages (text only; the last user message is the question)."""
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "'messages' is required: a non-empty list of {role, content} objects", param="messages")
    out: list[BaseMessage] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where} must be an object with 'role' and 'content'", param="messages")
        role = message.get("role")
        if role not in _ROLES:
            raise RequestError(400, f"{where}.role must be one of {sorted(_ROLES)}, got {role!r}", param="messages")
        out.append(_ROLES[role](content=_text(message.get("content"), where)))
    if not any(isinstance(m, HumanMessage) and m.content.strip() for m in out):
        raise RequestError(400, "'messages' has no user message with text: nothing to answer", param="messages")
    return out


def _positive_int(body: dict[str, Any], name: str, limit: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(400, f"'{name}' must be a positive integer, got {value!r}", param=name)
    if value > limit:
        raise RequestError(400, f"'{name}'={value} exceeds this server's limit of {limit}", param=name)
    return value


@dataclass(frozen=True)
class ServerSettings:
    """What one app serves and how it guards it; kept on ``app.state.glimp`` for the handlers.

    Attributes:
        graphs: A compiled GlimpRouter graph, or a factory ``(overrides) -> graph``.
        model_name: The model id that ``GET /v1/models`` lists and responses carry.
        authorization: The ``Authorization`` header every request must carry (``None``: no token).
        max_body_bytes: Larger request bodies are refused with 413.
        max_tokens_limit: A larger ``max_tokens`` / ``max_completion_tokens`` is refused with 400.

    """

    graphs: Any
    model_name: str = "glimp-router"
    authorization: bytes | None = None
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 4096
    built: dict[tuple[tuple[str, Any], ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def graph(self, overrides: Mapping[str, Any]) -> Any:
        """The graph for a request's ``overrides`` (built once per overrides by a factory; a graph is itself)."""
        if hasattr(self.graphs, "astream"):
            return self.graphs
        key = tuple(sorted(overrides.items()))
        if key not in self.built:
            self.built[key] = self.graphs(dict(overrides))
        return self.built[key]

    def authorize(self, request: Request) -> None:
        """Refuse (401) a request without the bearer token, compared in constant time."""
        if self.authorization is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self.authorization):
            raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)", kind="auth_error")


def create_app(
    graph_factory_or_graph: Any,
    *,
    model_name: str = "glimp-router",
    api_token: SecretStr | str | None = None,
    max_body_bytes: int = 1_000_000,
    max_tokens_limit: int = 4096,
) -> Starlette:
    """Build the ASGI app that serves a GlimpRouter graph behind the OpenAI chat completions API.

    Args:
        graph_factory_or_graph: A compiled GlimpRouter graph (the request's ``max_tokens`` is then only checked
            against the limit), or a factory ``(overrides) -> graph`` called with ``{"final_max_tokens": n}``
            when a request sets ``max_tokens`` (``{}`` otherwise); its graphs are cached per overrides.
        model_name: The model id that ``GET /v1/models`` lists and responses carry.
        api_token: When set, every request needs ``Authorization: Bearer <token>`` (checked in constant time).
        max_body_bytes: Larger request bodies are refused with 413.
        max_tokens_limit: A larger ``max_tokens`` / ``max_completion_tokens`` is refused with 400.

    Returns:
        A Starlette app.

    Request fields used: ``messages`` (required; the last user message is the question, earlier ones are
    history), ``stream``, ``max_tokens`` / ``max_completion_tokens`` (caps the final answer), and the extension
    ``glimp_tau`` (this request's entropy threshold). Other sampling fields are accepted and ignored: the
    endpoints' settings apply. ``n`` > 1 and ``tools`` are refused.

    """
    token = api_token.get_secret_value() if isinstance(api_token, SecretStr) else api_token
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    app.state.glimp = ServerSettings(
        graphs=graph_factory_or_graph,
        model_name=model_name,
        authorization=f"Bearer {token}".encode() if token else None,
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens_limit,
    )
    return app


async def models(request: Request) -> Response:
    """``GET /v1/models``: the router, as the one model served."""
    settings: ServerSettings = request.app.state.glimp
    try:
        settings.authorize(request)
    except RequestError as exc:
        return exc.response()
    card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "glimp-graph"}
    return JSONResponse({"object": "list", "data": [card]})


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``: one run of the graph, as one JSON body or as Server-Sent Events."""
    settings: ServerSettings = request.app.state.glimp
    try:
        settings.authorize(request)
        body = await _read_body(request, settings.max_body_bytes)
        inputs, overrides = _graph_inputs(body, settings.max_tokens_limit)
        graph = settings.graph(overrides)
    except RequestError as exc:
        return exc.response()
    completion = _Completion(settings.model_name)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        events = _sse(graph, inputs, completion, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        result = await graph.ainvoke(inputs)
    except GlimpError as exc:
        return _graph_error(exc).response()
    steps, stats = result["glimp_steps"], result["glimp_stats"].model_dump()
    # the graph's own reasoning text (joined with its delimiter), on the answer it appends to the messages
    reasoning = result["messages"][-1].additional_kwargs["reasoning_content"]
    message = {"role": "assistant", "content": result["glimp_answer"], "reasoning_content": reasoning}
    return JSONResponse(
        completion.body(
            "chat.completion",
            choices=[{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            usage=_usage(stats),
            glimp=_json_safe({"steps": [s.model_dump() for s in steps], "stats": stats}),
        )
    )


async def _read_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, refused (413) past ``limit`` bytes whether or not it says its length."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise RequestError(413, f"request body larger than {limit} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise RequestError(413, f"request body larger than {limit} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    return body


def _graph_inputs(body: dict[str, Any], max_tokens_limit: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The graph's input and the settings the request overrides (``final_max_tokens``), or a 400."""
    messages = parse_messages(body.get("messages"))
    max_tokens = _positive_int(body, "max_completion_tokens", max_tokens_limit)
    max_tokens = max_tokens or _positive_int(body, "max_tokens", max_tokens_limit)
    if body.get("n") not in (None, 1):
        raise RequestError(400, f"'n'={body.get('n')!r}: only one choice is supported", param="n")
    if body.get("tools"):
        raise RequestError(400, "'tools' are not supported by the router", param="tools")
    inputs: dict[str, Any] = {"messages": messages}
    if body.get("glimp_tau") is not None:
        try:
            inputs["glimp_tau"] = check_tau(body["glimp_tau"], name="'glimp_tau'")
        except ValueError as exc:
            raise RequestError(400, str(exc), param="glimp_tau") from None
    return inputs, {"final_max_tokens": max_tokens} if max_tokens else {}


@dataclass(frozen=True)
class _Completion:
    """The id, creation time and model that every body of one completion carries."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A response body of this completion: ``chat.completion`` or ``chat.completion.chunk``."""
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, **fields}

    def event(self, kind: str = "chat.completion.chunk", **fields: Any) -> str:
        """A chunk of this completion as one Server-Sent Event."""
        return f"data: {json.dumps(self.body(kind, **fields))}\n\n"

    def delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        """A chunk with one choice's ``delta`` as one Server-Sent Event."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return self.event(choices=[choice], **extra)


def _graph_error(exc: GlimpError) -> RequestError:
    if isinstance(exc, InputError):
        return RequestError(400, str(exc))
    if isinstance(exc, EndpointError):
        return RequestError(502, f"a model endpoint failed: {exc}", kind="upstream_error")
    return RequestError(500, str(exc), kind="server_error")


def _usage(stats: Mapping[str, Any]) -> dict[str, int]:
    """The OpenAI ``usage`` of a run, from its :class:`~glimp_graph.state.RunStats` as a dict."""
    completion = int(stats["small_tokens"] + stats["large_tokens"])
    return {"prompt_tokens": 0, "completion_tokens": completion, "total_tokens": completion}


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (``tau=inf``) as the strings "inf", "-inf", "nan" (JSON has no infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def _sse(graph: Any, inputs: dict[str, Any], completion: _Completion, include_usage: bool) -> AsyncIterator[str]:
    """The run as Server-Sent Events: the role, one reasoning delta per step, the answer, the record, [DONE]."""
    yield completion.delta({"role": "assistant", "content": ""})
    steps: list[dict[str, Any]] = []
    sent = ""
    try:
        async for event in graph.astream(inputs, stream_mode="custom"):
            if event.get("type") == "step":
                steps.append({k: v for k, v in event.items() if k not in ("type", "delimiter")})
                reasoning = reasoning_text((s["text"] for s in steps), event["delimiter"])
                yield completion.delta({"reasoning_content": reasoning[len(sent) :]})
                sent = reasoning
            elif event.get("type") == "final":
                stats = event["stats"]
                yield completion.delta({"content": event["answer"]})
                yield completion.delta({}, "stop", glimp={"steps": _json_safe(steps), "stats": _json_safe(stats)})
                if include_usage:
                    yield completion.event(choices=[], usage=_usage(stats))
    except GlimpError as exc:
        err = _graph_error(exc)
        yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind, 'code': err.status}})}\n\n"
    yield "data: [DONE]\n\n"
