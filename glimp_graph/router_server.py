"""An OpenAI-compatible face for the router: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Any OpenAI client (the ``openai`` package, LangChain's ``ChatOpenAI``, an agent framework) can call the GlimpRouter
graph as if it were one model. The answer is the assistant message; the reasoning steps are in
``reasoning_content`` (the field reasoning models use) and the routing record in an extra ``glimp`` field (steps
and statistics). With ``"stream": true`` the server sends Server-Sent Events: one ``reasoning_content`` delta per
step as it is written, then the answer token by token as ``content``, then ``data: [DONE]``; a comment line
(``: keep-alive``) goes out while a long step runs, so proxies keep the connection open.

One compiled graph serves every request: what a request sets (``max_tokens``, the threshold, ``tools``,
``tool_choice``) goes to the graph as its runtime ``context`` (:class:`~glimp_graph.config.GlimpContext`). The
threshold can be chosen by the model name: ``"<served name>@<tau>"`` (``glimp-router@0.8``), as RouteLLM's
``router-mf-0.116``.

Operations: ``GET /metrics`` serves Prometheus metrics (:mod:`glimp_graph.metrics`: requests, errors by kind,
steps by model, H_init, probe time, latency); it needs the metrics token (else the API token) when one is set, and
without any token it answers only on a loopback address. Each chat completion writes one line to the logger
``glimp_graph.access`` (request id, thread id from the ``X-Glimp-Thread-Id`` header, model, tau, steps, tokens,
latency, status, error kind; never a token or an API key). Every chat completion response carries its id in
``X-Request-Id``.

Run it with ``glimp serve-router`` (uvicorn, 127.0.0.1 by default; ``--workers N`` for several processes), or
mount :func:`create_app` in your own ASGI server. Needs ``starlette`` and ``prometheus-client`` (and ``uvicorn`` to
serve): ``pip install "glimp-graph[server]"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from glimp_graph.config import check_tau
from glimp_graph.endpoints import Endpoint
from glimp_graph.errors import EndpointError, GlimpError, InputError
from glimp_graph.metrics import GlimpMetrics, RunObserver, redact
from glimp_graph.serving.process import is_loopback
from glimp_graph.state import reasoning_text
from glimp_graph.tool_calls import check_tools

logger = logging.getLogger("glimp_graph.router_server")

KEEPALIVE = ": keep-alive\n\n"
"""The SSE comment sent while no event came for ``keepalive_seconds`` (clients ignore comment lines)."""

THREAD_HEADER = "X-Glimp-Thread-Id"
"""The request header that names the conversation a chat completion belongs to (logged as ``thread_id``)."""

_THREAD_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_TAU_SUFFIX = re.compile(r"[+-]?(?:inf|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")


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


# --------------------------------------------------------------------------- request parsing


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


def _bad_message(message: str) -> RequestError:
    return RequestError(400, message, param="messages")


def _assistant(message: dict[str, Any], where: str) -> AIMessage:
    """An assistant message, with its ``tool_calls`` (OpenAI format) as LangChain tool calls.

    Arguments that are not a JSON object are kept as an invalid tool call (as ``ChatOpenAI`` reads them), so an
    agent can send back a turn whose call the model wrote badly; a call without an id or a name is refused.
    """
    raw = message.get("tool_calls")
    content = _text(message.get("content"), where)
    if raw is None:
        return AIMessage(content=content)
    if not isinstance(raw, list):
        raise _bad_message(f"{where}.tool_calls must be a list of tool calls, got {type(raw).__name__}")
    calls, invalid = [], []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise _bad_message(f"{at} must be an object with 'id', 'type' and 'function'")
        if call.get("type", "function") != "function":
            raise _bad_message(f"{at}.type must be 'function', got {call.get('type')!r}")
        call_id, function = call.get("id"), call.get("function")
        if not isinstance(call_id, str) or not call_id:
            raise _bad_message(f"{at}.id must be a non-empty string (the id its tool message answers)")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise _bad_message(f"{at}.function must be an object with a non-empty 'name'")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise _bad_message(f"{at}.function.arguments must be a string (JSON), got {type(arguments).__name__}")
        try:
            args = json.loads(arguments or "{}")
        except ValueError as exc:
            invalid.append(invalid_tool_call(name=function["name"], args=arguments, id=call_id, error=str(exc)))
            continue
        if not isinstance(args, dict):
            error = f"arguments are not a JSON object: {arguments[:80]}"
            invalid.append(invalid_tool_call(name=function["name"], args=arguments, id=call_id, error=error))
            continue
        calls.append(tool_call(name=function["name"], args=args, id=call_id))
    return AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid)


def parse_messages(raw: Any) -> list[BaseMessage]:
    """The request's ``messages`` as LangChain messages (the last user message is the question).

    Roles: ``system`` / ``developer``, ``user``, ``assistant`` (with ``tool_calls`` in OpenAI's format) and
    ``tool`` (its ``tool_call_id`` must answer a call of an earlier assistant message). Content is text or a list
    of text parts.

    Raises:
        RequestError: 400 naming the message and the field at fault.

    """
    if not isinstance(raw, list) or not raw:
        raise _bad_message("'messages' is required: a non-empty list of {role, content} objects")
    out: list[BaseMessage] = []
    call_ids: set[str] = set()
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad_message(f"{where} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role in ("system", "developer"):
            out.append(SystemMessage(content=_text(message.get("content"), where)))
        elif role == "user":
            out.append(HumanMessage(content=_text(message.get("content"), where)))
        elif role == "assistant":
            answer = _assistant(message, where)
            call_ids.update(str(c["id"]) for c in [*answer.tool_calls, *answer.invalid_tool_calls])
            out.append(answer)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad_message(f"{where}.tool_call_id is required: the id of the tool call this message answers")
            if call_id not in call_ids:
                raise _bad_message(
                    f"{where}.tool_call_id {call_id!r} answers no tool call of an earlier assistant message"
                )
            out.append(ToolMessage(content=_text(message.get("content"), where), tool_call_id=call_id))
        elif role == "function":
            raise _bad_message(f"{where}.role 'function' is the deprecated form: send role 'tool' with tool_call_id")
        else:
            roles = ["assistant", "developer", "system", "tool", "user"]
            raise _bad_message(f"{where}.role must be one of {roles}, got {role!r}")
    if not any(isinstance(m, HumanMessage) and str(m.content).strip() for m in out):
        raise _bad_message("'messages' has no user message with text: nothing to answer")
    return out


def parse_tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    """The request's ``tools`` and ``tool_choice``, checked by the graph's own rule (``check_tools``).

    An empty ``tools`` list counts as no tools; ``tool_choice`` ``"required"`` or a named function needs tools
    (and the named function among them); ``"auto"`` and ``"none"`` are accepted without.

    Returns:
        The tools as OpenAI tool dicts and the tool choice (``None``, ``None`` when the run has no tools).

    Raises:
        RequestError: 400 naming ``tools`` or ``tool_choice`` and the tool at fault.

    """
    for legacy, replacement in (("functions", "tools"), ("function_call", "tool_choice")):
        if body.get(legacy) is not None:
            raise RequestError(400, f"'{legacy}' is deprecated by OpenAI: send '{replacement}'", param=legacy)
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None and not isinstance(tools, list):
        raise RequestError(400, f"'tools' must be a list of tools, got {type(tools).__name__}", param="tools")
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict):
            raise RequestError(400, f"'tools'[{i}] must be an object, got {tool!r:.80}", param="tools")
        if tool.get("type", "function") != "function":
            message = f"'tools'[{i}].type is {tool.get('type')!r}: only 'function' tools are supported"
            raise RequestError(400, message, param="tools")
    try:
        checked, _ = check_tools(tools)
    except ValueError as exc:
        raise RequestError(400, f"'tools': {exc}", param="tools") from None
    try:
        checked, choice = check_tools(checked, choice)
    except ValueError as exc:
        raise RequestError(400, f"'tool_choice': {exc}", param="tool_choice") from None
    return (checked, choice) if checked else (None, None)


def parse_model(model: Any, served: str) -> float | None:
    """The threshold a request's ``model`` selects: ``"<served>@<tau>"`` -> tau; the served name -> ``None``.

    A name without ``@`` that is not the served one is accepted and selects nothing (the router is the only model
    here, and clients often send a default name).

    Raises:
        RequestError: 400 naming ``model`` when it has a suffix that is not a threshold, or another base name.

    """
    if not isinstance(model, str) or model == served or "@" not in model:
        return None
    base, _, suffix = model.rpartition("@")
    if base != served:
        message = f"'model'={model!r}: this server serves {served!r}, or {served + '@<tau>'!r} to set the threshold"
        raise RequestError(400, message, param="model")
    if not _TAU_SUFFIX.fullmatch(suffix):
        example = f"{served}@0.8"
        message = f"'model'={model!r}: after '@' comes a threshold in nats (e.g. {example}), got {suffix!r}"
        raise RequestError(400, message, param="model")
    return check_tau(float(suffix), name="the threshold in 'model'")


def _positive_int(body: Mapping[str, Any], name: str, limit: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(400, f"'{name}' must be a positive integer, got {value!r}", param=name)
    if value > limit:
        raise RequestError(400, f"'{name}'={value} exceeds this server's limit of {limit}", param=name)
    return value


def _tau(body: Mapping[str, Any], from_model: float | None) -> float | None:
    """This request's threshold: from ``model`` (``name@tau``) or ``glimp_tau``; both must agree when both are set."""
    given = body.get("glimp_tau")
    if given is None:
        return from_model
    try:
        from_body = check_tau(given, name="'glimp_tau'")
    except ValueError as exc:
        raise RequestError(400, str(exc), param="glimp_tau") from None
    if from_model is not None and from_model != from_body:
        message = (
            f"'glimp_tau'={given!r} contradicts the threshold in 'model'={body.get('model')!r}: set one of the two"
        )
        raise RequestError(400, message, param="glimp_tau")
    return from_body


@dataclass(frozen=True)
class RunRequest:
    """One chat completion request, read and checked: the graph's input and runtime context, and how to answer.

    Attributes:
        inputs: The graph's input (``{"messages": [...]}``).
        context: The run's settings for the graph's runtime context (``final_max_tokens``, ``tau``, ``tools``,
            ``tool_choice``; only those the request sets).
        stream: Answer with Server-Sent Events.
        include_usage: Send the usage chunk at the end of a stream (``stream_options.include_usage``).
        model: The model name the answer carries: the request's when it chose a threshold (``name@tau``), else
            the served name.

    """

    inputs: dict[str, Any]
    context: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    model: str = "glimp-router"

    @classmethod
    def read(cls, body: Mapping[str, Any], settings: ServerSettings) -> RunRequest:
        """Check a request body and turn it into a run (400 naming the field at fault)."""
        messages = parse_messages(body.get("messages"))
        if body.get("n") not in (None, 1):
            raise RequestError(400, f"'n'={body.get('n')!r}: only one choice is supported", param="n")
        limit = settings.max_tokens_limit
        max_tokens = _positive_int(body, "max_completion_tokens", limit) or _positive_int(body, "max_tokens", limit)
        context: dict[str, Any] = {}
        if max_tokens:
            context["final_max_tokens"] = max_tokens
        from_model = parse_model(body.get("model"), settings.model_name)
        tau = _tau(body, from_model)
        if tau is not None:
            context["tau"] = tau
        model = settings.model_name if from_model is None else str(body["model"])
        tools, choice = parse_tools(body)
        if tools:
            context["tools"] = tools
            if choice is not None:
                context["tool_choice"] = choice
        options = body.get("stream_options")
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        return cls({"messages": messages}, context, bool(body.get("stream")), include_usage, model)


# --------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class ServerSettings:
    """What one app serves and how it guards it; kept on ``app.state.glimp`` for the handlers.

    Attributes:
        graph: The compiled GlimpRouter graph; every request runs it, its settings in the runtime context.
        model_name: The model id that ``GET /v1/models`` lists and responses carry (``<model_name>@<tau>`` sets
            a request's threshold).
        authorization: The ``Authorization`` header every request must carry (``None``: no token).
        max_body_bytes: Larger request bodies are refused with 413.
        max_tokens_limit: A larger ``max_tokens`` / ``max_completion_tokens`` is refused with 400.
        keepalive_seconds: A stream sends an SSE comment after this long without an event.
        endpoints: The model endpoints by role, checked by ``GET /health?deep=1`` (empty: nothing to check).
        metrics: The Prometheus metrics the app counts and ``GET /metrics`` serves.
        metrics_authorization: The ``Authorization`` header ``GET /metrics`` needs (the metrics token, else the
            API token; ``None``: no token, then only a connection on a loopback address is served).
        secrets: The tokens and API keys, never written to a log line or an error message.

    """

    graph: Any
    model_name: str = "glimp-router"
    authorization: bytes | None = None
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 4096
    keepalive_seconds: float = 10.0
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    metrics: GlimpMetrics = field(default_factory=GlimpMetrics)
    metrics_authorization: bytes | None = None
    secrets: tuple[str, ...] = ()

    def authorize(self, request: Request) -> None:
        """Refuse (401) a request without the bearer token, compared in constant time."""
        _check_bearer(request, self.authorization)

    def authorize_metrics(self, request: Request) -> None:
        """Refuse ``GET /metrics`` without its token (401), or without any token set off loopback (403).

        Without a token the metrics are served only on a connection whose local address is a loopback one (the
        server's socket, not a header a client could set): a server that listens on 127.0.0.1, or a local
        client of one that listens on every address.
        """
        if self.metrics_authorization is not None:
            _check_bearer(request, self.metrics_authorization)
            return
        server = request.scope.get("server")
        if not server or not is_loopback(str(server[0])):
            message = (
                "GET /metrics without a token is served only on a loopback address: set a metrics token "
                "(glimp serve-router --metrics-token, create_app(metrics_token=...)) or an API token"
            )
            raise RequestError(403, message, kind="auth_error")

    def redact(self, text: str) -> str:
        """``text`` without any of :attr:`secrets`."""
        return redact(text, self.secrets)


def _check_bearer(request: Request, authorization: bytes | None) -> None:
    if authorization is None:
        return
    given = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(given, authorization):
        raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)", kind="auth_error")


def _secret(value: SecretStr | str | None) -> str | None:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    return text or None


Handler = Callable[[Request], Awaitable[Response]]


def _counted(path: str, handler: Handler) -> Handler:
    """``handler`` that counts each request under ``path`` with the status it answered (500 when it raised)."""

    @functools.wraps(handler)
    async def counted(request: Request) -> Response:
        metrics: GlimpMetrics = request.app.state.glimp.metrics
        try:
            response = await handler(request)
        except BaseException:
            metrics.request(path, 500)
            raise
        metrics.request(path, response.status_code)
        return response

    return counted


def create_app(
    graph: Any,
    *,
    model_name: str = "glimp-router",
    api_token: SecretStr | str | None = None,
    max_body_bytes: int = 1_000_000,
    max_tokens_limit: int = 4096,
    keepalive_seconds: float = 10.0,
    endpoints: Mapping[str, Endpoint] | None = None,
    metrics: GlimpMetrics | None = None,
    metrics_token: SecretStr | str | None = None,
    metrics_path: str = "/metrics",
) -> Starlette:
    """Build the ASGI app that serves a GlimpRouter graph behind the OpenAI chat completions API.

    Args:
        graph: A compiled GlimpRouter graph (:func:`~glimp_graph.create_glimp_graph`). It serves every request:
            a request's settings go to it as its runtime ``context``.
        model_name: The model id that ``GET /v1/models`` lists and responses carry; a request's
            ``"<model_name>@<tau>"`` sets its threshold.
        api_token: When set, every request needs ``Authorization: Bearer <token>`` (checked in constant time);
            ``GET /health`` without ``deep`` stays open.
        max_body_bytes: Larger request bodies are refused with 413.
        max_tokens_limit: A larger ``max_tokens`` / ``max_completion_tokens`` is refused with 400.
        keepalive_seconds: While a stream waits longer than this for the next event, it sends ``: keep-alive``.
        endpoints: The model endpoints by role (``{"small": ..., "large": ...}``) for ``GET /health?deep=1``.
        metrics: Where the app counts (default: new :class:`~glimp_graph.metrics.GlimpMetrics` of its own; pass
            one with ``multiprocess_dir`` under several worker processes).
        metrics_token: The bearer token of ``GET /metrics`` (default: ``api_token``). With neither, the metrics
            are served only on a loopback address (403 elsewhere).
        metrics_path: Where the metrics are served (LangGraph's server keeps ``/metrics`` for its own: mount
            this app there with another path).

    Returns:
        A Starlette app.

    Raises:
        TypeError: ``graph`` is not a compiled graph (a factory of graphs is no longer taken).
        ValueError: ``keepalive_seconds`` is not positive, or ``metrics_path`` does not start with ``/``.

    Request fields used: ``messages`` (required; the last user message is the question, earlier ones are
    history; assistant ``tool_calls`` and ``tool`` messages of an agent loop are read), ``stream``,
    ``stream_options.include_usage``, ``max_tokens`` / ``max_completion_tokens`` (caps the final answer),
    ``model`` (``name@tau``), ``tools`` / ``tool_choice`` (offered to the large model's final answer), and the
    extension ``glimp_tau``. Other sampling fields are accepted and ignored: the endpoints' settings apply.
    ``n`` > 1 is refused. The header ``X-Glimp-Thread-Id`` names the conversation in the run's log line.

    """
    if not hasattr(graph, "astream") or not hasattr(graph, "ainvoke"):
        raise TypeError(
            f"create_app takes a compiled graph (create_glimp_graph(...)), got {type(graph).__name__}: one graph "
            "serves every request, its per-request settings go in the runtime context (no graph factory)"
        )
    if not keepalive_seconds > 0:
        raise ValueError(f"keepalive_seconds must be > 0, got {keepalive_seconds!r}")
    if not metrics_path.startswith("/"):
        raise ValueError(f"metrics_path must start with '/', got {metrics_path!r}")
    token, scrape_token = _secret(api_token), _secret(metrics_token)
    keys = [e.api_key.get_secret_value() for e in (endpoints or {}).values()]
    # redacted wherever a message is logged or returned (a key of under 4 characters would mangle every message)
    secrets = tuple(dict.fromkeys(s for s in (token, scrape_token, *keys) if s and len(s) >= 4 and s != "EMPTY"))
    routes = {
        "/v1/chat/completions": (chat_completions, "POST"),
        "/v1/models": (models, "GET"),
        "/health": (health, "GET"),
        metrics_path: (metrics_endpoint, "GET"),
    }
    app = Starlette(
        routes=[Route(path, _counted(path, handler), methods=[method]) for path, (handler, method) in routes.items()]
    )
    metrics_secret = scrape_token or token
    app.state.glimp = ServerSettings(
        graph=graph,
        model_name=model_name,
        authorization=f"Bearer {token}".encode() if token else None,
        max_body_bytes=max_body_bytes,
        max_tokens_limit=max_tokens_limit,
        keepalive_seconds=float(keepalive_seconds),
        endpoints=dict(endpoints or {}),
        metrics=metrics if metrics is not None else GlimpMetrics(),
        metrics_authorization=f"Bearer {metrics_secret}".encode() if metrics_secret else None,
        secrets=secrets,
    )
    return app


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: the Prometheus metrics (text format), behind the metrics token (see ``create_app``)."""
    settings: ServerSettings = request.app.state.glimp
    try:
        settings.authorize_metrics(request)
    except RequestError as exc:
        return exc.response()
    body, content_type = await asyncio.to_thread(settings.metrics.render)
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


async def models(request: Request) -> Response:
    """``GET /v1/models``: the router, as the one model served (``<id>@<tau>`` is accepted, not listed)."""
    settings: ServerSettings = request.app.state.glimp
    try:
        settings.authorize(request)
    except RequestError as exc:
        return exc.response()
    card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "glimp-graph"}
    return JSONResponse({"object": "list", "data": [card]})


async def health(request: Request) -> Response:
    """``GET /health``: liveness, open to all (``{"status": "ok"}``, nothing about the models).

    ``?deep=1`` (bearer token required when one is set) also asks each endpoint ``GET /models`` and answers 200
    with ``{"status": "ok", "endpoints": {"small": "ok", ...}}``, or 503 with ``"status": "unavailable"`` and what
    failed per role (no URLs).
    """
    settings: ServerSettings = request.app.state.glimp
    deep = request.query_params.get("deep", "0").lower()
    if deep not in ("0", "1", "false", "true", ""):
        return RequestError(400, f"'deep' must be 1 or 0, got {deep!r}", param="deep").response()
    if deep not in ("1", "true"):
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})
    try:
        settings.authorize(request)
    except RequestError as exc:
        return exc.response()
    roles = list(settings.endpoints)
    states = await asyncio.gather(*(_ping(settings.endpoints[r]) for r in roles))
    ok = all(s == "ok" for s in states)
    body = {"status": "ok" if ok else "unavailable", "endpoints": dict(zip(roles, states, strict=True))}
    return JSONResponse(body, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})


async def _ping(endpoint: Endpoint) -> str:
    """``"ok"`` when the endpoint answers ``GET /models`` with 200, else a short reason (no URL)."""
    headers = {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}"}
    try:
        async with httpx.AsyncClient(timeout=min(endpoint.timeout, 10.0)) as http:
            answer = await http.get(f"{endpoint.base_url}/models", headers=headers)
    except httpx.TimeoutException:
        return "no answer within the timeout"
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok" if answer.status_code == 200 else f"HTTP {answer.status_code}"


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``: one run of the graph, as one JSON body or as Server-Sent Events.

    Every answer (a refusal too) carries the request's id in ``X-Request-Id`` (the completion's ``id``); the run
    is counted and logged once, by a :class:`~glimp_graph.metrics.RunObserver`.
    """
    settings: ServerSettings = request.app.state.glimp
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    observer = RunObserver(settings.metrics, request_id=request_id, secrets=settings.secrets)
    headers = {"X-Request-Id": request_id}
    try:
        settings.authorize(request)
        observer.thread_id = _thread_id(request)
        body = await _read_body(request, settings.max_body_bytes)
        run = RunRequest.read(body, settings)
    except RequestError as exc:
        observer.fail(None, exc.status, kind="auth" if exc.status == 401 else "input", message=exc.message)
        observer.finish()
        response = exc.response()
        response.headers.update(headers)
        return response
    observer.begin(model=run.model, stream=run.stream, tau=run.context.get("tau"))
    completion = _Completion(run.model, id=request_id)
    if run.stream:
        headers |= {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        events = _sse(settings, run, completion, observer)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        try:
            result = await settings.graph.ainvoke(run.inputs, context=run.context)
        except GlimpError as exc:
            error = _graph_error(exc, run, settings)
            observer.fail(exc, error.status, message=error.message)
            response = error.response()
        else:
            observer.output(result)
            response = _answer(result, completion)
    except Exception as exc:
        logger.exception("the router's run failed")
        observer.fail(exc, 500)
        response = RequestError(500, "the router's run failed (see the server's log)", kind="server_error").response()
    finally:
        observer.finish()
    response.headers.update(headers)
    return response


def _thread_id(request: Request) -> str | None:
    """The request's ``X-Glimp-Thread-Id`` (``None`` when absent), checked so that a log line stays one line."""
    value = request.headers.get(THREAD_HEADER)
    if value is None:
        return None
    if not _THREAD_ID.fullmatch(value):
        message = f"{THREAD_HEADER} must be 1-128 letters, digits or ._:@/+=- characters, got {value[:40]!r}"
        raise RequestError(400, message, param=THREAD_HEADER)
    return value


def _answer(result: Mapping[str, Any], completion: _Completion) -> JSONResponse:
    """The graph's output as one ``chat.completion`` body."""
    steps, stats = result["glimp_steps"], result["glimp_stats"].model_dump()
    # the graph's own reasoning text (joined with its delimiter), on the answer it appends to the messages
    reasoning = result["messages"][-1].additional_kwargs.get("reasoning_content", "")
    invalid = list(result.get("glimp_invalid_tool_calls") or [])
    calls = _openai_tool_calls(result.get("glimp_tool_calls") or [], invalid)
    answer = result["glimp_answer"]
    message: dict[str, Any] = {"role": "assistant", "content": answer if answer or not calls else None}
    message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop", "logprobs": None}
    return JSONResponse(
        completion.body(
            "chat.completion",
            choices=[choice],
            usage=_usage(stats),
            glimp=_record([s.model_dump() for s in steps], stats, invalid),
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


# --------------------------------------------------------------------------- answers


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


def _graph_error(exc: GlimpError, run: RunRequest, settings: ServerSettings) -> RequestError:
    """The graph's error as the client sees it (no token or API key in the message, should a server echo one)."""
    if isinstance(exc, InputError):
        return RequestError(400, settings.redact(str(exc)))
    if isinstance(exc, EndpointError):
        message = f"a model endpoint failed: {exc}"
        if run.context.get("tools") and exc.role == "large":
            names = [t["function"]["name"] for t in run.context["tools"]]
            message += f" (the request offered the tools {names}: the large model's server may reject their schema)"
        return RequestError(502, settings.redact(message), kind="upstream_error")
    return RequestError(500, settings.redact(str(exc)), kind="server_error")


def _usage(stats: Mapping[str, Any]) -> dict[str, int]:
    """The OpenAI ``usage`` of a run, from its :class:`~glimp_graph.state.RunStats` as a dict (both models)."""
    prompt = int(stats.get("small_prompt_tokens", 0) + stats.get("large_prompt_tokens", 0))
    completion = int(stats["small_tokens"] + stats["large_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_tool_calls(calls: list[Mapping[str, Any]], invalid: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The graph's tool calls in OpenAI's format: ``{"id", "type": "function", "function": {name, arguments}}``.

    Invalid calls (arguments that are not JSON, a name not among the tools) are passed on as the model wrote
    them, as OpenAI does (its ``arguments`` are not guaranteed to be valid JSON either): ``ChatOpenAI`` reads
    them back into ``invalid_tool_calls``. The reasons are in the response's ``glimp.invalid_tool_calls``.
    """
    out = []
    for call in calls:
        arguments = json.dumps(call.get("args") or {}, ensure_ascii=False)
        out.append(_openai_call(call.get("id"), str(call["name"]), arguments))
    for call in invalid:
        args = call.get("args")
        arguments = args if isinstance(args, str) else json.dumps(args or {}, ensure_ascii=False)
        out.append(_openai_call(call.get("id"), str(call.get("name") or ""), arguments))
    return out


def _openai_call(call_id: Any, name: str, arguments: str) -> dict[str, Any]:
    call_id = call_id if isinstance(call_id, str) and call_id else f"call_{uuid.uuid4().hex[:24]}"
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _record(steps: list[dict[str, Any]], stats: Mapping[str, Any], invalid: list[Mapping[str, Any]]) -> Any:
    """The response's ``glimp`` field: every step, the statistics, and why tool calls are invalid (when any)."""
    record: dict[str, Any] = {"steps": steps, "stats": dict(stats)}
    if invalid:
        record["invalid_tool_calls"] = [
            {"id": c.get("id"), "name": c.get("name"), "error": c.get("error")} for c in invalid
        ]
    return _json_safe(record)


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (``tau=inf``) as the strings "inf", "-inf", "nan" (JSON has no infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class _AnswerText:
    """The answer's streamed deltas, as the graph's final ``glimp_answer`` will read.

    Leading whitespace is dropped and trailing whitespace held back until more text follows (the graph strips the
    answer), so the pieces sent add up to the final answer; :meth:`rest` gives what the deltas did not send (all of
    it when the graph sent the text in one piece at the end, as it does where a tool call may be written as text).
    """

    def __init__(self) -> None:
        self.sent = ""
        self._raw = ""

    def push(self, delta: str) -> str:
        """The part of the answer to send now that ``delta`` came."""
        self._raw += delta
        visible = self._raw.strip()
        if len(visible) <= len(self.sent) or not visible.startswith(self.sent):
            return ""
        piece, self.sent = visible[len(self.sent) :], visible
        return piece

    def rest(self, answer: str) -> str:
        """What of the final ``answer`` is still to send ("" when the deltas sent something else)."""
        if answer.startswith(self.sent):
            return answer[len(self.sent) :]
        logger.warning("the streamed answer differs from the final one; the final one was not sent again")
        return ""


async def _events(settings: ServerSettings, run: RunRequest) -> AsyncIterator[dict[str, Any] | None]:
    """The graph's custom events, with ``None`` after each ``keepalive_seconds`` without one.

    The graph runs in its own task (so it keeps one context throughout) and hands events over a queue; the task is
    cancelled when the consumer stops (a client that went away).
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in settings.graph.astream(run.inputs, context=run.context, stream_mode="custom"):
                await queue.put(("event", event))
        except Exception as exc:
            await queue.put(("error", exc))
        else:
            await queue.put(("end", None))

    task = asyncio.create_task(pump(), name="glimp-router-run")
    try:
        while True:
            try:
                kind, item = await asyncio.wait_for(queue.get(), settings.keepalive_seconds)
            except TimeoutError:
                yield None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _error_event(err: RequestError) -> str:
    return f"data: {json.dumps({'error': {'message': err.message, 'type': err.kind, 'code': err.status}})}\n\n"


async def _sse(
    settings: ServerSettings, run: RunRequest, completion: _Completion, observer: RunObserver
) -> AsyncIterator[str]:
    """The run as Server-Sent Events, keep-alive comments in between.

    In order: the role, a reasoning delta per step, the answer's deltas, the tool calls (one chunk each), the
    finish chunk with the routing record, the usage (when asked), ``[DONE]``. The observer sees every event of
    the graph and is finished when the stream ends (a client that went away: when the generator is closed).
    """
    try:
        yield completion.delta({"role": "assistant", "content": ""})
        async for chunk in _sse_chunks(settings, run, completion, observer):
            yield chunk
    finally:
        observer.finish()


async def _sse_chunks(
    settings: ServerSettings, run: RunRequest, completion: _Completion, observer: RunObserver
) -> AsyncIterator[str]:
    steps: list[dict[str, Any]] = []
    sent = ""
    answer = _AnswerText()
    try:
        async for event in _events(settings, run):
            if event is not None:
                observer.event(event)
            if event is None:
                yield KEEPALIVE
            elif event.get("type") == "step":
                steps.append({k: v for k, v in event.items() if k not in ("type", "delimiter")})
                reasoning = reasoning_text((s["text"] for s in steps), event["delimiter"])
                yield completion.delta({"reasoning_content": reasoning[len(sent) :]})
                sent = reasoning
            elif event.get("type") == "answer":
                piece = answer.push(str(event.get("delta") or ""))
                if piece:
                    yield completion.delta({"content": piece})
            elif event.get("type") == "final":
                rest = answer.rest(event["answer"])
                if rest:
                    yield completion.delta({"content": rest})
                invalid = list(event.get("invalid_tool_calls") or [])
                calls = _openai_tool_calls(event.get("tool_calls") or [], invalid)
                for index, call in enumerate(calls):
                    yield completion.delta({"tool_calls": [{"index": index, **call}]})
                record = _record(steps, event["stats"], invalid)
                yield completion.delta({}, "tool_calls" if calls else "stop", glimp=record)
                if run.include_usage:
                    yield completion.event(choices=[], usage=_usage(event["stats"]))
    except GlimpError as exc:
        error = _graph_error(exc, run, settings)
        observer.fail(exc, error.status, message=error.message)
        yield _error_event(error)
    except Exception as exc:
        logger.exception("the router's run failed")
        observer.fail(exc, 500)
        yield _error_event(RequestError(500, "the router's run failed (see the server's log)", kind="server_error"))
    yield "data: [DONE]\n\n"
