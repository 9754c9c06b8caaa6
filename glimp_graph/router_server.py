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
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from glimp_graph.errors import EndpointError, GlimpError, InputError

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
    expected = f"Bearer {token}".encode() if token else None
    graphs: dict[tuple[tuple[str, Any], ...], Any] = {}

    def graph_for(overrides: dict[str, Any]) -> Any:
        if hasattr(graph_factory_or_graph, "astream"):
            return graph_factory_or_graph
        key = tuple(sorted(overrides.items()))
        if key not in graphs:
            graphs[key] = graph_factory_or_graph(dict(overrides))
        return graphs[key]

    def authorize(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)", kind="auth_error")

    async def read_body(request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            raise RequestError(413, f"request body larger than {max_body_bytes} bytes")
        data = bytearray()
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > max_body_bytes:
                raise RequestError(413, f"request body larger than {max_body_bytes} bytes")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    async def models(request: Request) -> Response:
        try:
            authorize(request)
        except RequestError as exc:
            return exc.response()
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "glimp-graph"}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat_completions(request: Request) -> Response:
        try:
            authorize(request)
            body = await read_body(request)
            messages = parse_messages(body.get("messages"))
            max_tokens = _positive_int(body, "max_completion_tokens", max_tokens_limit)
            max_tokens = max_tokens or _positive_int(body, "max_tokens", max_tokens_limit)
            if body.get("n") not in (None, 1):
                raise RequestError(400, f"'n'={body.get('n')!r}: only one choice is supported", param="n")
            if body.get("tools"):
                raise RequestError(400, "'tools' are not supported by the router", param="tools")
            inputs: dict[str, Any] = {"messages": messages}
            tau = body.get("glimp_tau")
            if tau is not None:
                if isinstance(tau, bool) or not isinstance(tau, int | float):
                    raise RequestError(400, f"'glimp_tau' must be a number, got {tau!r}", param="glimp_tau")
                inputs["glimp_tau"] = float(tau)
            graph = graph_for({"final_max_tokens": max_tokens} if max_tokens else {})
        except RequestError as exc:
            return exc.response()
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _sse(graph, inputs, completion_id, created, model_name, include_usage)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            result = await graph.ainvoke(inputs)
        except GlimpError as exc:
            return _graph_error(exc).response()
        steps, stats = result["glimp_steps"], result["glimp_stats"]
        message = {"role": "assistant", "content": result["glimp_answer"], "reasoning_content": _reasoning(steps)}
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(stats),
                "glimp": _json_safe({"steps": [s.model_dump() for s in steps], "stats": stats.model_dump()}),
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


def _graph_error(exc: GlimpError) -> RequestError:
    if isinstance(exc, InputError):
        return RequestError(400, str(exc))
    if isinstance(exc, EndpointError):
        return RequestError(502, f"a model endpoint failed: {exc}", kind="upstream_error")
    return RequestError(500, str(exc), kind="server_error")


def _reasoning(steps: list[Any]) -> str:
    return "\n\n".join(s.text for s in steps)


def _usage(stats: Any) -> dict[str, int]:
    completion = int(stats.small_tokens + stats.large_tokens)
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


async def _sse(
    graph: Any, inputs: dict[str, Any], completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    steps: list[dict[str, Any]] = []
    try:
        async for event in graph.astream(inputs, stream_mode="custom"):
            if event.get("type") == "step":
                step = {k: v for k, v in event.items() if k != "type"}
                steps.append(step)
                yield chunk({"reasoning_content": ("\n\n" if len(steps) > 1 else "") + event["text"]})
            elif event.get("type") == "final":
                stats = event["stats"]
                yield chunk({"content": event["answer"]})
                glimp = {"steps": _json_safe(steps), "stats": _json_safe(stats)}
                yield chunk({}, "stop", glimp=glimp)
                if include_usage:
                    completion = int(stats["small_tokens"] + stats["large_tokens"])
                    usage = {"prompt_tokens": 0, "completion_tokens": completion, "total_tokens": completion}
                    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
                    yield f"data: {json.dumps({**body, 'model': model, 'choices': [], 'usage': usage})}\n\n"
    except GlimpError as exc:
        err = _graph_error(exc)
        yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind, 'code': err.status}})}\n\n"
    yield "data: [DONE]\n\n"
