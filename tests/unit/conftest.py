"""Shared fixtures of the unit tests: a fake OpenAI-compatible server, and a scripted model that runs on it.

The fake server is the stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a thread, speaking HTTP/1.1 with
keep-alive as the real servers do (a client reuses its connection: no connect and no new server thread per
request), and closing every connection when it is closed (a client then finds it down). It answers
``GET /v1/models`` (with a configurable ``owned_by``) and hands every ``POST /v1/chat/completions`` body to a
handler that the test sets. :class:`ScriptedModel` is a ready-made handler pair for graph tests: it knows the
reasoning steps, the probe entropies and the final answer of one run, and answers the small and the large server
as real models would (llama.cpp mode included: it returns the continued prefix with the new text, except in a
streamed reply). A request with ``"stream": true`` gets the handler's reply as Server-Sent Events
(:func:`sse_events`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import selectors
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from glimp_graph import Endpoint

Reply = dict[str, Any] | tuple[int, str | bytes]
Handler = Callable[[dict[str, Any]], Reply]

DELIMITER = "\n\n"

RETRY_DELAY = 0.01
"""The OpenAI client's first retry backoff in the unit tests, in seconds (its own is 0.5 s, doubling per retry)."""


# --------------------------------------------------------------------------- what every unit test shares


@pytest.fixture(autouse=True, scope="package")
def _one_tls_context() -> Iterator[None]:
    """Every HTTP client of the unit tests shares one default TLS context.

    ``httpx2`` (the OpenAI client's HTTP library) builds a default :class:`ssl.SSLContext` for each client it
    makes, reading the system's CA bundle (30-40 ms). ``langchain-openai`` keeps one client pair per base URL,
    but each test's fake servers have new ports, so every graph, chat model and dead URL built new ones: about a
    third of the suite's time went to reading certificates. The context is built once instead, with the same
    settings (no test uses TLS: every fake server speaks plain HTTP).
    """
    try:
        import httpcore2
    except ImportError:  # another HTTP library under the OpenAI client: nothing to share
        yield
        return
    build = httpcore2.default_ssl_context
    contexts: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}

    def shared(*, _trust_env: bool = True) -> ssl.SSLContext:
        key = (_trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in contexts:
            contexts[key] = build(_trust_env=_trust_env)
        return contexts[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpcore2, "default_ssl_context", shared)
        yield


@pytest.fixture(autouse=True)
def _short_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenAI client waits :data:`RETRY_DELAY` (doubling) before a retry instead of 0.5 s (doubling).

    Retries are still made, counted and reported as the client makes them (an endpoint's ``max_retries``, 2 by
    default, so in every CLI test with a dead URL); only the wait between them shrinks. A test about the backoff
    itself sets its own delay.
    """
    monkeypatch.setattr("openai._base_client.INITIAL_RETRY_DELAY", RETRY_DELAY)


# --------------------------------------------------------------------------- response building


def token_entry(token: str, logprob: float) -> dict[str, Any]:
    """One ``top_logprobs`` entry in the OpenAI format."""
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_response(
    content: str,
    *,
    finish_reason: str | None = "stop",
    top_logprobs: list[tuple[str, float]] | None = None,
    stop_reason: Any = ...,
    completion_tokens: int = 1,
    prompt_tokens: int = 10,
    include_prefix: str = "",
    model: str = "fake",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` JSON.

    Args:
        content: The generated text.
        finish_reason: ``"stop"`` or ``"length"``.
        top_logprobs: ``(token, logprob)`` pairs of the first generated token; ``None``: no ``logprobs`` at all.
        stop_reason: vLLM's ``stop_reason`` (the matched stop string, or ``None`` at end of sequence); left out
            of the JSON when not given (llama.cpp, OpenAI).
        completion_tokens: ``usage.completion_tokens``.
        prompt_tokens: ``usage.prompt_tokens``.
        include_prefix: Text put before ``content`` (llama.cpp returns the continued prefix too).
        model: The model name in the response.
        tool_calls: OpenAI tool calls (``{"id", "type": "function", "function": {"name", "arguments"}}``) the
            message carries (``finish_reason`` becomes ``"tool_calls"`` unless given otherwise).

    """
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": include_prefix + content},
        "finish_reason": finish_reason,
        "logprobs": None,
    }
    if top_logprobs is not None:
        first = top_logprobs[0] if top_logprobs else (content, 0.0)
        top = [token_entry(t, lp) for t, lp in top_logprobs]
        choice["logprobs"] = {"content": [{**token_entry(content, first[1]), "top_logprobs": top}]}
    if stop_reason is not ...:
        choice["stop_reason"] = stop_reason
    if tool_calls:
        choice["message"]["tool_calls"] = tool_calls
        if finish_reason == "stop":
            choice["finish_reason"] = "tool_calls"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _entropy(probs: list[float]) -> float:
    return -math.fsum(p * math.log(p) for p in probs if p > 0.0)


def logprobs_for_entropy(h: float, token: str = "tok") -> list[tuple[str, float]]:
    """Top log-probabilities (summing to one) whose entropy is ``h`` nats; ``token`` is the most likely one.

    The distribution is one token of probability ``p`` and ``n - 1`` alternatives sharing ``1 - p``; ``p`` is
    found by bisection (the entropy falls from ``ln n`` at ``p = 1/n`` to 0 at ``p = 1``).
    """
    if h <= 0.0:
        return [(token, 0.0)]
    n = math.floor(math.exp(h)) + 1

    def entropy_at(p: float) -> float:
        return _entropy([p] + [(1.0 - p) / (n - 1)] * (n - 1))

    lo, hi = 1.0 / n, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if entropy_at(mid) > h:
            lo = mid
        else:
            hi = mid
    p = (lo + hi) / 2
    rest = math.log((1.0 - p) / (n - 1))
    return [(token, math.log(p))] + [(f" alt{i}", rest) for i in range(1, n)]


# --------------------------------------------------------------------------- request reading


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """The request's token cap, whichever name the client used."""
    return body.get("max_completion_tokens", body.get("max_tokens"))


def is_probe(body: dict[str, Any]) -> bool:
    """A one-token request with log-probabilities: the router's probe."""
    return max_tokens_of(body) == 1 and bool(body.get("logprobs"))


def prefix_of(body: dict[str, Any]) -> str:
    """The partial assistant message the request continues ("" for a fresh assistant turn)."""
    messages = body.get("messages") or []
    if messages and messages[-1].get("role") == "assistant" and body.get("continue_final_message"):
        return str(messages[-1].get("content") or "")
    return ""


# --------------------------------------------------------------------------- streaming


def pieces(text: str) -> list[str]:
    """``text`` cut as a server streams it: a word with the spaces before it per piece."""
    return re.findall(r"\s*\S+|\s+$", text) or ([text] if text else [])


def sse_events(reply: dict[str, Any], *, prefix: str = "", include_usage: bool = False) -> str:
    """A ``chat.completion`` JSON as the Server-Sent Events of a streamed completion.

    Args:
        reply: The completion (:func:`chat_response`).
        prefix: Text the reply's content starts with that a streamed reply leaves out (llama.cpp streams a
            continuation without the prefix it returns when not streaming).
        include_usage: Send the usage chunk (``stream_options.include_usage``).

    """
    choice = reply["choices"][0]
    message = choice["message"]
    content = message.get("content") or ""
    if prefix and content.startswith(prefix):
        content = content[len(prefix) :]
    base = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}
        return f"data: {json.dumps(body)}\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces(content)]
    for i, call in enumerate(message.get("tool_calls") or []):
        events.append(chunk({"tool_calls": [{"index": i, **call}]}))
    extra = {"stop_reason": choice["stop_reason"]} if "stop_reason" in choice else {}
    events.append(chunk({}, choice["finish_reason"], **extra))
    if include_usage:
        events.append(f"data: {json.dumps(base | {'choices': [], 'usage': reply['usage']})}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events)


# --------------------------------------------------------------------------- the fake server


class FakeServer:
    """A fake OpenAI-compatible server on 127.0.0.1.

    Attributes:
        owned_by: What ``GET /v1/models`` reports (``"vllm"``, ``"llamacpp"``, ...).
        model_extra: More fields of the model entry (``{"meta": {"n_ctx": ...}}``, ``{"max_model_len": ...}``).
        handler: ``(body) -> dict | (status, text)``, answers ``POST /v1/chat/completions``.
        models_hook: Called on each ``GET /v1/models`` before it is answered; a ``(status, text)`` it returns
            is sent instead of the model list (``None``: the model list).
        requests: Parsed JSON bodies of the chat completion requests, in order.
        paths: ``(method, path)`` of every request, in order.

    """

    def __init__(self, owned_by: str = "vllm") -> None:
        self.owned_by = owned_by
        self.model_extra: dict[str, Any] = {}
        self.handler: Handler = lambda body: (500, "no handler set in the test")
        self.models_hook: Callable[[], tuple[int, str] | None] | None = None
        self.requests: list[dict[str, Any]] = []
        self.paths: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._wake, self._waker = socket.socketpair()
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: each reply carries its Content-Length
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: str | bytes, content_type: str = "application/json") -> None:
                data = payload.encode("utf-8") if isinstance(payload, str) else payload
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts)
                    self.wfile.write(data)

            def do_GET(self) -> None:
                with fake._lock:
                    fake.paths.append(("GET", self.path))
                hooked = fake.models_hook() if fake.models_hook and self.path.rstrip("/") == "/v1/models" else None
                if hooked is not None:
                    self._send(*hooked)
                elif self.path.rstrip("/") == "/v1/models":
                    models = {
                        "object": "list",
                        "data": [
                            {"id": "fake", "object": "model", "created": 0, "owned_by": fake.owned_by}
                            | fake.model_extra
                        ],
                    }
                    self._send(200, json.dumps(models))
                else:
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with fake._lock:
                    fake.paths.append(("POST", self.path))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                    return
                body = json.loads(raw or b"{}")
                with fake._lock:
                    fake.requests.append(body)
                try:
                    reply = fake.handler(body)
                except Exception as exc:  # surfaced by the test through fake.errors
                    fake.errors.append(f"{type(exc).__name__}: {exc}")
                    self._send(500, json.dumps({"error": {"message": f"fake handler failed: {exc}"}}))
                    return
                if isinstance(reply, tuple):
                    status, payload = reply
                    self._send(status, payload)
                elif body.get("stream"):
                    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    prefix = prefix_of(body) if fake.llamacpp else ""
                    events = sse_events(reply, prefix=prefix, include_usage=include_usage)
                    self._send(200, events, "text/event-stream")
                else:
                    self._send(200, json.dumps(reply))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, name=f"fake-server-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Accept connections until :meth:`close` writes to the waker (no polling, so closing takes no time)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while not any(key.fileobj is self._wake for key, _ in selector.select()):
                self._server.handle_request()

    @property
    def llamacpp(self) -> bool:
        """Whether the server plays llama.cpp's (the continuation's content includes the prefix)."""
        return self.owned_by.startswith("llama")

    def chat(self, content: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """:func:`chat_response` as this server kind answers ``body``.

        llama.cpp: the prefix is included; vLLM: ``stop_reason`` is set (default ``None`` on a "stop" finish).
        """
        if self.llamacpp:
            kwargs.pop("stop_reason", None)
            kwargs.setdefault("include_prefix", prefix_of(body))
        elif self.owned_by == "vllm" and "stop_reason" not in kwargs and kwargs.get("finish_reason", "stop") == "stop":
            kwargs["stop_reason"] = None
        return chat_response(content, **kwargs)

    def chat_requests(self) -> list[dict[str, Any]]:
        """A copy of the recorded chat completion bodies."""
        with self._lock:
            return list(self.requests)

    def reset(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()
            self.paths.clear()
            self.errors.clear()

    def close(self) -> None:
        """Stop serving, release the port and close every client's connection."""
        with contextlib.suppress(OSError):  # closed already
            self._waker.send(b"x")
        self._thread.join(timeout=5)
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # its handler thread reads the end of the stream and returns
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._wake.close()
        self._waker.close()


def endpoint(server: FakeServer, **overrides: Any) -> Endpoint:
    """An :class:`Endpoint` for ``server`` that fails fast (no retries, 5 s timeout)."""
    settings: dict[str, Any] = {"base_url": server.url + "/v1", "model": "fake", "max_retries": 0, "timeout": 5}
    settings.update(overrides)
    return Endpoint(**settings)


def unused_port() -> int:
    """A local port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake_small() -> Iterator[FakeServer]:
    server = FakeServer("vllm")
    yield server
    server.close()


@pytest.fixture
def fake_large() -> Iterator[FakeServer]:
    server = FakeServer("vllm")
    yield server
    server.close()


# --------------------------------------------------------------------------- the scripted model


def first_word(text: str) -> str:
    """The default probe token of a step: its first word (with leading spaces), or the whole text."""
    match = re.match(r"\s*\S+", text)
    return match.group() if match else text


@dataclass
class ScriptStep:
    """One scripted reasoning step.

    Attributes:
        h: Entropy (nats) of the probe's renormalized top log-probabilities.
        text: The step's text (without the delimiter).
        token: The probe token (default: the text's first word); the small step continues after it.
        probe_eos: The probe hits end of sequence (empty content, finish_reason "stop").
        eos: The step ends at end of sequence instead of the delimiter (vLLM ``stop_reason`` None).
        tokens: Completion tokens the step's request reports (default 3).

    """

    h: float
    text: str
    token: str | None = None
    probe_eos: bool = False
    eos: bool = False
    tokens: int = 3

    @property
    def probe_token(self) -> str:
        return "" if self.probe_eos else (self.token if self.token is not None else first_word(self.text))


@dataclass
class ScriptedModel:
    """A fake small/large model pair that writes scripted steps and answers.

    Step ``i`` is identified by the request's prefix (``think_prefix`` + the earlier steps, each followed by the
    delimiter), so the same script serves repeated sync and async runs. A request whose prefix matches no
    scripted state fails with HTTP 500 and an entry in ``errors``.
    """

    steps: list[ScriptStep]
    answer: str = "42"
    think_prefix: str = ""
    final_tokens: int = 2
    final_tool_calls: list[dict[str, Any]] | None = None
    errors: list[str] = field(default_factory=list)

    def install(self, small: FakeServer, large: FakeServer) -> ScriptedModel:
        small.handler = lambda body: self.respond(small, "small", body)
        large.handler = lambda body: self.respond(large, "large", body)
        return self

    def _trace(self, i: int) -> str:
        return self.think_prefix + "".join(s.text + DELIMITER for s in self.steps[:i])

    def _index(self, prefix: str) -> tuple[int, bool] | None:
        """``(step index, continues after the probe token)`` for a request prefix."""
        for i in range(len(self.steps) + 1):
            trace = self._trace(i)
            if prefix == trace:
                return i, False
            if i < len(self.steps) and prefix == trace + self.steps[i].probe_token:
                return i, True
        return None

    def _fail(self, message: str) -> tuple[int, str]:
        self.errors.append(message)
        return 500, json.dumps({"error": {"message": message}})

    def respond(self, server: FakeServer, role: str, body: dict[str, Any]) -> Reply:
        prefix = prefix_of(body)
        if is_probe(body):
            if role != "small":
                return self._fail(f"probe sent to the {role} server")
            where = self._index(prefix)
            if where is None or where[1] or where[0] >= len(self.steps):
                return self._fail(f"probe with an unscripted prefix {prefix!r}")
            step = self.steps[where[0]]
            if step.probe_eos:
                top = [("<|im_end|>", math.log(0.9)), ("The", math.log(0.1))]
                return server.chat("", body, finish_reason="stop", top_logprobs=top, completion_tokens=1)
            return server.chat(
                step.probe_token,
                body,
                finish_reason="length",
                top_logprobs=logprobs_for_entropy(step.h, step.probe_token),
                completion_tokens=1,
            )
        if not body.get("stop"):  # the final answer
            if role != "large":
                return self._fail(f"final answer asked of the {role} server")
            return server.chat(
                " " + self.answer if self.answer else "",
                body,
                finish_reason="stop",
                completion_tokens=self.final_tokens,
                tool_calls=self.final_tool_calls,
            )
        where = self._index(prefix)
        if where is None or where[0] >= len(self.steps):
            return self._fail(f"step request with an unscripted prefix {prefix!r}")
        i, after_probe = where
        step = self.steps[i]
        text = step.text[len(step.probe_token) :] if after_probe else step.text
        cap = max_tokens_of(body) or step.tokens
        tokens = min(step.tokens, cap)
        if step.eos:
            return server.chat(text, body, finish_reason="stop", stop_reason=None, completion_tokens=tokens)
        return server.chat(text, body, finish_reason="stop", stop_reason=DELIMITER, completion_tokens=tokens)


@pytest.fixture
def scripted(fake_small: FakeServer, fake_large: FakeServer) -> Callable[..., ScriptedModel]:
    """``scripted([ScriptStep(...), ...], answer=...)`` installs a :class:`ScriptedModel` on both fake servers."""

    def make(steps: list[ScriptStep], **kwargs: Any) -> ScriptedModel:
        return ScriptedModel(steps=steps, **kwargs).install(fake_small, fake_large)

    return make
