"""Load test: N concurrent GlimpRouter runs against two local llama-server processes, in-process or through a face.

For every concurrency level N of ``--levels`` the script runs ``--questions`` GSM8K dev questions with at most N
runs in flight (``asyncio.gather`` under a semaphore, the whole level under ``asyncio.wait_for``), after
``--warmup`` runs that are not counted, and reports throughput, p50/p95 latency and errors by type, the tokens a
run generated, what the way in added to each run (its latency minus the graph's own ``RunStats.wall_seconds``)
and the CPU time of the face's processes. ``--via`` picks the way in (several, comma-separated, run one after the
other on the same two llama-servers):

- ``graph``: ONE compiled graph in this process (``graph.ainvoke``);
- ``serve-router``: ``glimp serve-router`` as a subprocess on a free loopback port, driven by N ``httpx`` clients
  that POST ``/v1/chat/completions`` (one question per request, not streamed);
- ``langgraph-dev``: ``langgraph dev`` (in-memory) serving ``deploy/router_graph.py:graph`` from a temporary
  ``langgraph.json``, driven with ``langgraph_sdk`` (one thread-less ``runs.wait`` per question).

Every mode gets the same router settings (``--tau`` and the budgets: the face's flags, the deploy module's
``GLIMP_*`` variables) and the same endpoint settings (the faces' defaults: temperature 0.6, no seed, 300 s
timeout, 2 retries, which graph mode uses too).

It checks that every result belongs to its own question: each run's question carries a unique tag
(``[LOAD-xxxxxxxx]``). A recording reverse proxy sits in front of the LARGE llama-server (the final answer is always
the large model's; every mode talks to the proxy, so the modes compare fairly; ``--no-proxy`` drops it in graph
mode) and records each final-answer call (its last message is the assistant prefix ending in the prompt's answer
prefix): its messages and its generated text, SSE streams passed through chunk by chunk. A run is mapped when
exactly one final-answer call carries its tag, that call carries no other tag, its assistant prefix continues
the run's own steps, and the run's answer is that call's generated text (after strip). In graph mode a callback
handler checks the same per ``load_run`` metadata. Swapped states or answers fail it. The proxy's cost per call is
measured on its own (``--proxy-calls`` direct vs proxied calls to the large server) and printed in the report.

After everything is stopped it checks that no process of the run is left (the servers, the face and its process
group: ``/proc``) and that nothing listens on their ports any more. The servers are started here (not with
``LocalModels``) because ``--parallel`` sets the llama-server slots (``-np``), which ``LocalModels`` does not
expose.

Quick run (SmolLM2 as both models)::

    python bench/load.py --small smollm2-135m --large smollm2-135m --levels 1,2 --questions 2 --out /tmp/LOAD.md

The two faces on the Qwen pair, added as a section to bench/LOAD.md (the section is replaced when run again)::

    python bench/load.py --via serve-router,langgraph-dev --levels 1,4,8 --questions 20 --parallel 8 \\
        --append-to bench/LOAD.md --section "Qwen pair through the faces"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import httpx
from langchain_core.callbacks import BaseCallbackHandler

from glimp_graph import Endpoint, GlimpConfig, create_glimp_graph

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k_dev.jsonl"
DEPLOY_CONFIG = ROOT / "deploy" / "langgraph.json"
TAG_RE = re.compile(r"\[LOAD-[0-9a-f]{8}\]")
VIAS = ("graph", "serve-router", "langgraph-dev")
FACE_TITLES = {
    "graph": "In-process graph (`graph.ainvoke`)",
    "serve-router": "Through `glimp serve-router` (POST /v1/chat/completions)",
    "langgraph-dev": "Through `langgraph dev` (in-memory; thread-less `runs.wait`)",
}
ASSISTANT_ID = "glimp_router"  # the graph's name in deploy/langgraph.json
SERVED_NAME = "glimp-router"


# --------------------------------------------------------------------------- questions and tags


def load_questions(path: Path = DATA, n: int = 8, start: int = 0) -> list[str]:
    """The first ``n`` questions from ``start`` of a JSONL file with a ``question`` field."""
    out: list[str] = []
    if n < 1:
        return out
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < start or not line.strip():
                continue
            out.append(json.loads(line)["question"])
            if len(out) == n:
                break
    if len(out) < n:
        raise SystemExit(f"{path} has only {len(out)} questions from index {start}, {n} needed")
    return out


@dataclasses.dataclass
class RunRecord:
    """One run of a level."""

    key: str
    tag: str
    question: str
    finished: bool = False
    latency: float | None = None
    waited: float = 0.0
    error: str | None = None
    error_message: str = ""
    answer: str | None = None
    steps: list[str] = dataclasses.field(default_factory=list)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    mismatch: str | None = None


def make_runs(questions: Sequence[str], label: str) -> list[RunRecord]:
    """One record per question, each with a unique tag put in front of its question."""
    runs = []
    for i, q in enumerate(questions):
        tag = f"[LOAD-{uuid.uuid4().hex[:8]}]"
        runs.append(RunRecord(key=f"{label}-{i}", tag=tag, question=f"{tag} {q}"))
    return runs


# --------------------------------------------------------------------------- recorded final-answer calls and the check

# A recorded final-answer call is a dict: "user" (the user messages' text), "prefix" (the assistant message it
# continued), "all" (every message's text), "output" (the generated text, None when the call failed).


class CallRecorder(Protocol):
    """Whatever recorded the final-answer calls of a level."""

    def by_run(self, runs: Sequence[RunRecord]) -> dict[str, list[dict[str, Any]]]:
        """The recorded final-answer calls of ``runs``, by run key."""
        ...


def mapping_problem(run: RunRecord, calls: Sequence[Mapping[str, Any]], delimiter: str) -> str | None:
    """Why ``run`` is not mapped to its own question (``None``: it is), given the final-answer calls filed under it.

    Mapped: exactly one call; it carries the run's tag in a user message and no other tag anywhere; its assistant
    prefix contains the run's steps joined with ``delimiter``; its generated text is the run's answer (after strip).
    """
    if len(calls) != 1:
        return f"{len(calls)} final-answer calls belong to {run.key} ({run.tag})"
    call = calls[0]
    tags = set(TAG_RE.findall(call["all"]))
    if run.tag not in call["user"] or tags != {run.tag}:
        return f"final-answer call has tags {sorted(tags)}, expected only {run.tag}"
    if run.steps and delimiter.join(run.steps) not in call["prefix"]:
        return "the run's steps are not the reasoning its final-answer call continued"
    if call["output"] is None or call["output"].strip() != (run.answer or "").strip():
        return "the run's answer is not the generated text of its own final-answer call"
    return None


def check_mapping(runs: Sequence[RunRecord], recorder: CallRecorder, delimiter: str) -> None:
    """Set ``mismatch`` on every finished run whose final-answer call does not belong to its own question.

    A run that already has a mismatch keeps it (several recorders may check the same runs).
    """
    calls = recorder.by_run(runs)
    for run in runs:
        if not run.finished or run.error or run.mismatch:
            continue
        run.mismatch = mapping_problem(run, calls.get(run.key, []), delimiter)


class FinalAnswerRecorder(BaseCallbackHandler):
    """Graph mode: records the messages and the output of every ``final_answer`` chat-model run by ``load_run``."""

    run_inline = True  # called in the event loop, no thread pool: the dicts need no lock

    def __init__(self) -> None:
        self.calls: dict[UUID, dict[str, Any]] = {}

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if name != "final_answer":
            return
        msgs = messages[0] if messages else []
        self.calls[run_id] = {
            "load_run": (metadata or {}).get("load_run"),
            "user": "\n".join(str(m.content) for m in msgs if m.type == "human"),
            "prefix": str(msgs[-1].content) if msgs and msgs[-1].type == "ai" else "",
            "all": "\n".join(str(m.content) for m in msgs),
            "output": None,
        }

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id in self.calls:
            gen = response.generations[0][0] if response.generations and response.generations[0] else None
            self.calls[run_id]["output"] = None if gen is None else gen.text

    def by_run(self, runs: Sequence[RunRecord] = ()) -> dict[str, list[dict[str, Any]]]:
        """The recorded final-answer calls grouped by ``load_run`` (every call; ``runs`` is not needed)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for call in self.calls.values():
            out.setdefault(str(call["load_run"]), []).append(call)
        return out


def _content_text(content: Any) -> str:
    """A chat message's content as text (a string, or a list of text parts)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def is_final_answer(body: Mapping[str, Any], answer_prefix: str) -> bool:
    """Whether a chat completion request is the router's final answer: it continues an assistant message that ends
    with the prompt's answer prefix (the steps continue the reasoning, which never ends with it)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    last = messages[-1]
    return last.get("role") == "assistant" and _content_text(last.get("content")).endswith(answer_prefix)


class ProxyRecorder:
    """The final-answer calls that went through the recording proxy, filed under the tags of their user messages.

    Calls come from the proxy's thread: a lock guards the list. Failed calls (not 200, a broken stream, an error
    event) are kept apart: a call the client retried is one answer, not two.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.failed = 0

    def record(self, body: Mapping[str, Any], output: str | None) -> None:
        """Keep one final-answer call: its request ``body`` and its generated text (``None``: it failed)."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        call = {
            "user": "\n".join(_content_text(m.get("content")) for m in messages if m.get("role") == "user"),
            "prefix": _content_text(messages[-1].get("content")) if messages else "",
            "all": "\n".join(_content_text(m.get("content")) for m in messages),
            "output": output,
        }
        with self._lock:
            if output is None:
                self.failed += 1
            else:
                self.calls.append(call)

    def by_run(self, runs: Sequence[RunRecord]) -> dict[str, list[dict[str, Any]]]:
        """The successful calls filed under each run whose tag one of their user messages carries."""
        key_of = {run.tag: run.key for run in runs}
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            calls = list(self.calls)
        for call in calls:
            for tag in dict.fromkeys(TAG_RE.findall(call["user"])):
                if tag in key_of:
                    out.setdefault(key_of[tag], []).append(call)
        return out


# --------------------------------------------------------------------------- the recording proxy


class SSEText:
    """The generated text of a chat completion stream, read from its raw bytes as they pass."""

    def __init__(self) -> None:
        self._buffer = b""
        self.parts: list[str] = []
        self.error = False

    def feed(self, chunk: bytes) -> None:
        """Read the complete lines of ``chunk`` (a partial line waits for the next chunk)."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            self.error = True
            return
        if not isinstance(event, dict) or "error" in event:
            self.error = True
            return
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if isinstance(piece, str):
                self.parts.append(piece)

    @property
    def text(self) -> str:
        """The content deltas so far, joined."""
        return "".join(self.parts)


def _completion_text(data: Any, prefix: str) -> str | None:
    """The generated text of a non-streamed completion (llama.cpp returns the continued prefix too: cut off)."""
    try:
        text = _content_text(data["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return None
    return text[len(prefix) :] if prefix and text.startswith(prefix) else text


_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}
_HOP_RESPONSE_HEADERS = {"content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding"}


def proxy_app(upstream: str, recorder: ProxyRecorder, answer_prefix: str, timeout: float = 600.0) -> Any:
    """A reverse proxy to ``upstream`` (``http://HOST:PORT``) that records the final-answer calls into ``recorder``.

    Every method and path is forwarded; a streamed answer is passed on chunk by chunk as it arrives.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # idle connections are dropped before llama.cpp's server drops them (5 s)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=upstream, timeout=timeout, limits=limits, trust_env=False) as http:
            app.state.http = http
            yield

    async def forward(request: Request) -> Response:
        http: httpx.AsyncClient = request.app.state.http
        raw = await request.body()
        body: Any = None
        if request.method == "POST" and request.url.path.endswith("/chat/completions"):
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        final = isinstance(body, dict) and is_final_answer(body, answer_prefix)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["accept-encoding"] = "identity"  # the stream is read as it passes
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            answer = await _send(http, http.build_request(request.method, target, content=raw, headers=headers))
        except httpx.HTTPError as exc:
            if final:
                recorder.record(body, None)
            return JSONResponse({"error": {"message": f"proxy: upstream failed: {exc!r}"}}, status_code=502)
        out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_RESPONSE_HEADERS}
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(
                _relay(answer, body if final else None, recorder), status_code=answer.status_code, headers=out_headers
            )
        try:
            content = await answer.aread()
        finally:
            await answer.aclose()
        if final:
            output = None
            if answer.status_code == 200:
                with contextlib.suppress(ValueError):
                    output = _completion_text(json.loads(content), _content_text(body["messages"][-1].get("content")))
            recorder.record(body, output)
        return Response(content, status_code=answer.status_code, headers=out_headers)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


async def _send(http: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``request`` sent upstream (streamed), once more when a kept-alive connection turned out closed.

    llama.cpp's server may close a kept-alive connection (idle for a few seconds, or just after a stream); a
    request that meets the closing connection got no answer at all (none was processed) and goes again on a new
    one, as OpenAI's client retries it.
    """
    try:
        return await http.send(request, stream=True)
    except (httpx.RemoteProtocolError, httpx.ConnectError):
        return await http.send(request, stream=True)


async def _relay(answer: httpx.Response, body: Any, recorder: ProxyRecorder) -> AsyncIterator[bytes]:
    """The upstream stream's chunks as they come; at the end the final-answer call (``body`` set) is recorded."""
    text, complete = SSEText(), False
    try:
        async for chunk in answer.aiter_raw():
            text.feed(chunk)
            yield chunk
        complete = True
    finally:
        await answer.aclose()
        if body is not None:
            text.feed(b"\n")
            ok = complete and answer.status_code == 200 and not text.error
            recorder.record(body, text.text if ok else None)


class ServerThread:
    """An ASGI app served by uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, app: Any, *, name: str = "proxy") -> None:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"load-{name}", daemon=True
        )

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving; return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._socket.close()
                raise RuntimeError(f"the {self._thread.name} server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proxy_overhead(direct: str, proxied: str, model: str, calls: int) -> dict[str, Any]:
    """What the proxy adds per call: ``calls`` pairs of the same request, direct and proxied, interleaved.

    Two kinds of call: one token (the cost per call) and 16 streamed tokens (the cost of passing a stream on).
    Both URLs are ``http://HOST:PORT``; greedy decoding with a seed, so both sides generate the same text.
    """
    out: dict[str, Any] = {"calls": calls}
    kinds = {"1-token call": {"max_tokens": 1}, "16-token streamed call": {"max_tokens": 16, "stream": True}}
    # a new connection per call on both sides: llama.cpp's server may close a connection just after a stream, and
    # a call on it would fail (the proxy sends such a call again; OpenAI's client, which the router uses, too)
    with httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        for kind, extra in kinds.items():
            times: dict[str, list[float]] = {"direct": [], "proxied": []}
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
                "temperature": 0.0,
                "seed": 7,
                **extra,
            }
            for i in range(calls + 1):  # the first pair warms the prompt cache and is not counted
                for side, url in (("direct", direct), ("proxied", proxied))[:: 1 if i % 2 else -1]:
                    start = time.perf_counter()
                    answer = http.post(f"{url}/v1/chat/completions", json=body)
                    _ = answer.content
                    elapsed = time.perf_counter() - start
                    if answer.status_code != 200:
                        raise RuntimeError(f"{side} {kind} failed: HTTP {answer.status_code} {answer.text[:500]}")
                    if i:
                        times[side].append(elapsed)
            out[kind] = {side: statistics.median(values) for side, values in times.items()}
    return out


# --------------------------------------------------------------------------- the faces


class RunFailed(Exception):
    """A run the face answered with an error: ``kind`` is what the report counts it under."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


Answer = tuple[str, list[str], dict[str, Any]]
"""What a run returns: its answer, its steps' texts and its statistics (``RunStats`` as a dict)."""
Caller = Callable[[RunRecord], Awaitable[Answer]]
"""Runs one record through a face."""


async def graph_call(graph: Any, recorder: FinalAnswerRecorder, run: RunRecord) -> Answer:
    """One run of the compiled graph in this process, its final-answer call recorded under ``load_run``."""
    config = {"metadata": {"load_run": run.key}, "callbacks": [recorder]}
    out = await graph.ainvoke({"question": run.question}, config=config)
    return out["glimp_answer"], [s.text for s in out["glimp_steps"]], out["glimp_stats"].model_dump()


async def serve_router_call(http: httpx.AsyncClient, url: str, run: RunRecord) -> Answer:
    """One chat completion of ``glimp serve-router`` at ``url`` (``http://HOST:PORT``), the question as the user's."""
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": run.question}]}
    answer = await http.post(f"{url}/v1/chat/completions", json=body)
    if answer.status_code != 200:
        try:
            kind = answer.json()["error"]["type"]
        except (ValueError, KeyError, TypeError):
            kind = "?"
        raise RunFailed(f"HTTP {answer.status_code} {kind}", answer.text)
    data = answer.json()
    content = data["choices"][0]["message"].get("content") or ""
    return content, [s["text"] for s in data["glimp"]["steps"]], data["glimp"]["stats"]


async def langgraph_call(client: Any, run: RunRecord) -> Answer:
    """One thread-less run of the router graph on LangGraph's server (``client``: ``langgraph_sdk.get_client``)."""
    out = await client.runs.wait(None, ASSISTANT_ID, input={"question": run.question}, raise_error=False)
    if isinstance(out, dict) and isinstance(out.get("__error__"), dict):
        error = out["__error__"]
        raise RunFailed(f"run error {error.get('error')}", str(error.get("message")))
    if not isinstance(out, dict) or "glimp_answer" not in out:
        raise RunFailed("unexpected output", repr(out))
    return out["glimp_answer"], [s["text"] for s in out["glimp_steps"]], out["glimp_stats"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


@dataclasses.dataclass
class FaceProcess:
    """A face served by a subprocess of its own (own process group) on a loopback port."""

    name: str
    command: list[str]
    port: int
    log: Path
    env: dict[str, str]
    ready_path: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        """Start the process and wait until ``GET ready_path`` answers 200 (its log's tail in the error if not)."""
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.log.parent,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready after {timeout:g} s:\n{_tail(self.log)}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` seconds."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # the group may outlive its leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _face_env() -> dict[str, str]:
    """This process's environment without ``GLIMP_*`` (no stray setting reaches a face), tracing off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMP_")}
    env |= {"LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false", "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    return env


def serve_router_face(
    args: argparse.Namespace, small: Any, large_url: str, large_alias: str, work: Path
) -> FaceProcess:
    """``glimp serve-router`` (not started) on a free port, on the given endpoints with the run's router settings."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "glimp_graph.cli",
        "serve-router",
        *("--small-url", small.base_url, "--small-model", small.alias),
        *("--large-url", large_url, "--large-model", large_alias),
        *("--host", "127.0.0.1", "--port", str(port), "--model-name", SERVED_NAME),
        *("--tau", str(args.tau), "--max-step-tokens", str(args.max_step_tokens)),
        *("--max-thinking-tokens", str(args.max_thinking_tokens), "--max-steps", str(args.max_steps)),
        *("--final-max-tokens", str(args.final_max_tokens)),
    ]
    return FaceProcess("glimp serve-router", command, port, work / "serve-router.log", _face_env(), "/health")


def langgraph_config(work: Path) -> Path:
    """``deploy/langgraph.json`` with absolute paths and only the graph (the mounted face is not driven here)."""
    config = json.loads(DEPLOY_CONFIG.read_text(encoding="utf-8"))
    graphs = {}
    for name, spec in config["graphs"].items():
        path, _, variable = spec.rpartition(":")
        graphs[name] = f"{(DEPLOY_CONFIG.parent / path).resolve()}:{variable}"
    config["graphs"] = graphs
    config["dependencies"] = [str((DEPLOY_CONFIG.parent / d).resolve()) for d in config.get("dependencies", [])]
    config.pop("http", None)
    out = work / "langgraph.json"
    out.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def langgraph_face(args: argparse.Namespace, small: Any, large_url: str, large_alias: str, work: Path) -> FaceProcess:
    """``langgraph dev`` (in-memory; not started) on a free port, serving the deploy module's graph from ``GLIMP_*``."""
    langgraph = Path(sys.executable).parent / "langgraph"
    if not langgraph.exists():
        raise SystemExit(f"{langgraph} not found: install the 'studio' extra (langgraph-cli[inmem])")
    port = _free_port()
    jobs = args.n_jobs_per_worker or max(10, *args.level_list)
    command = [
        str(langgraph),
        "dev",
        *("--config", str(langgraph_config(work)), "--no-browser", "--no-reload"),
        *("--host", "127.0.0.1", "--port", str(port), "--n-jobs-per-worker", str(jobs)),
    ]
    env = _face_env() | {
        "GLIMP_SMALL_URL": small.base_url,
        "GLIMP_SMALL_MODEL": small.alias,
        "GLIMP_LARGE_URL": large_url,
        "GLIMP_LARGE_MODEL": large_alias,
        "GLIMP_TAU": str(args.tau),
        "GLIMP_MAX_STEP_TOKENS": str(args.max_step_tokens),
        "GLIMP_MAX_THINKING_TOKENS": str(args.max_thinking_tokens),
        "GLIMP_MAX_STEPS": str(args.max_steps),
        "GLIMP_FINAL_MAX_TOKENS": str(args.final_max_tokens),
        "BG_JOB_ISOLATED_LOOPS": "true" if args.isolated_loops else "false",
    }
    return FaceProcess("langgraph dev", command, port, work / "langgraph-dev.log", env, "/ok")


# --------------------------------------------------------------------------- driving one level


@dataclasses.dataclass
class LevelResult:
    """What one concurrency level produced."""

    concurrency: int
    runs: list[RunRecord]
    wall: float
    timed_out: bool


async def run_level(call: Caller, runs: list[RunRecord], concurrency: int, timeout: float) -> LevelResult:
    """Run every record through ``call`` with at most ``concurrency`` in flight, within ``timeout`` seconds."""
    sem = asyncio.Semaphore(concurrency)

    async def one(run: RunRecord) -> None:
        submitted = time.perf_counter()
        async with sem:
            start = time.perf_counter()
            run.waited = start - submitted
            try:
                run.answer, run.steps, run.stats = await call(run)
            except RunFailed as exc:
                run.error, run.error_message = exc.kind, str(exc)[:300]
            except Exception as exc:  # a measurement: counted by type
                run.error, run.error_message = type(exc).__name__, str(exc)[:300]
            run.latency = time.perf_counter() - start
            run.finished = True

    start = time.perf_counter()
    timed_out = False
    tasks = [asyncio.ensure_future(one(r)) for r in runs]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except TimeoutError:
        timed_out = True
        await asyncio.gather(*tasks, return_exceptions=True)  # wait_for cancelled them; let them unwind
    return LevelResult(concurrency, runs, time.perf_counter() - start, timed_out)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(level: LevelResult, warmup: int = 0, face_cpu: float | None = None) -> dict[str, Any]:
    """Throughput, latency percentiles, errors by type and mapping failures of one level.

    Also what the runs did (generated tokens of both models, from their ``RunStats``) and what the way in cost on
    top of the graph: a run's latency minus the graph's own wall time (``RunStats.wall_seconds``, from ``prepare``
    to the final answer), and ``face_cpu`` (CPU seconds of the face's processes during the level) per run.
    """
    ok = [r for r in level.runs if r.finished and not r.error and not r.mismatch]
    errors = Counter(r.error for r in level.runs if r.error)
    unfinished = sum(not r.finished for r in level.runs)
    if unfinished:
        errors["LevelTimeout (unfinished)"] = unfinished
    latencies = [r.latency for r in level.runs if r.finished and not r.error and r.latency is not None]
    return {
        "concurrency": level.concurrency,
        "warmup": warmup,
        "runs": len(level.runs),
        "ok": len(ok),
        "errors": dict(errors),
        "error_samples": {r.error: r.error_message for r in level.runs if r.error},
        "mismatches": [f"{r.key}: {r.mismatch}" for r in level.runs if r.mismatch],
        "wall_s": level.wall,
        "throughput_per_min": 60.0 * len(ok) / level.wall if level.wall > 0 else 0.0,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "max_s": max(latencies) if latencies else None,
        "mean_wait_s": sum(r.waited for r in level.runs) / len(level.runs) if level.runs else 0.0,
        "mean_tokens": _mean([r.stats["small_tokens"] + r.stats["large_tokens"] for r in ok if r.stats]),
        "mean_outside_s": _mean([r.latency - r.stats["wall_seconds"] for r in ok if r.stats and r.latency]),
        "face_cpu_per_run": face_cpu / len(level.runs) if face_cpu is not None and level.runs else None,
        "timed_out": level.timed_out,
    }


# --------------------------------------------------------------------------- nothing left behind


def _pid_alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        text = status.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = re.search(r"^State:\s+(\S)", text, re.MULTILINE)
    return bool(state) and state.group(1) != "Z"  # type: ignore[union-attr]


def _process_group(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[2]) if len(fields) > 2 else None  # state, ppid, pgrp


def group_cpu_seconds(group: int) -> float:
    """CPU seconds (user + system) of the live processes of a process group so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 12 and int(fields[2]) == group:  # state, ppid, pgrp, ... utime (11), stime (12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def leftovers(pids: Sequence[int], ports: Sequence[int], binary: str, groups: Sequence[int] = ()) -> list[str]:
    """Processes and listening ports of the run that are still there (empty: clean).

    Args:
        pids: Processes that must be gone.
        ports: Ports nothing may listen on any more.
        binary: The llama-server binary: a process of it serving one of ``ports`` is reported.
        groups: Process groups (the faces') of which no live member may be left.

    """
    found = [f"pid {pid} still alive" for pid in pids if _pid_alive(pid)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        if groups and _process_group(proc.name) in set(groups) and _pid_alive(int(proc.name)):
            found.append(f"pid {proc.name} of the face's process group {_process_group(proc.name)} still alive")
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace") == binary:
            args = [a.decode(errors="replace") for a in argv]
            port = args[args.index("--port") + 1] if "--port" in args[:-1] else "?"
            if port in {str(p) for p in ports} and _pid_alive(int(proc.name)):
                found.append(f"llama-server pid {proc.name} on port {port} still running")
    found += [f"port {port} still accepts connections" for port in ports if _listening(port)]
    return sorted(set(found))


# --------------------------------------------------------------------------- servers


def start_servers(args: argparse.Namespace) -> tuple[list[Any], str]:
    """Fetch both models, find or build llama-server, and start one server per model with ``-np parallel``."""
    from glimp_graph.serving import LlamaServer, ensure_llama_server, fetch_model
    from glimp_graph.serving.weights import get_spec

    specs = [get_spec(args.small), get_spec(args.large)]
    paths = [fetch_model(spec, args.cache_dir, progress=True) for spec in specs]
    binary = ensure_llama_server(args.cache_dir, progress=True)
    servers: list[Any] = []
    try:
        for spec, path in zip(specs, paths, strict=True):
            servers.append(
                LlamaServer.start(
                    path,
                    alias=spec.alias,
                    binary=binary,
                    ctx_size=args.ctx_per_slot * args.parallel,
                    threads=args.threads,
                    parallel=args.parallel,
                    ready_timeout=args.ready_timeout,
                    cache_dir=args.cache_dir,
                )
            )
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, str(binary)


# --------------------------------------------------------------------------- report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclasses.dataclass
class ModeResult:
    """The levels of one way in, and how the face was run."""

    via: str
    summaries: list[dict[str, Any]]
    command: list[str] | None = None
    error: str | None = None


def _table(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| N (concurrent) | warm-up | runs | ok | mapped wrong | errors (by type) | wall s | runs/min | p50 s | p95 s"
        " | max s | mean slot wait s | tokens/run | outside the graph s/run | face CPU s/run |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "none"
        lines.append(
            f"| {s['concurrency']} | {s['warmup']} | {s['runs']} | {s['ok']} | {len(s['mismatches'])} | {errors}"
            f" | {s['wall_s']:.1f} | {s['throughput_per_min']:.2f} | {_fmt(s['p50_s'])} | {_fmt(s['p95_s'])}"
            f" | {_fmt(s['max_s'])} | {s['mean_wait_s']:.1f} | {_fmt(s['mean_tokens'], 0)}"
            f" | {_fmt(s['mean_outside_s'], 2)} | {_fmt(s['face_cpu_per_run'], 2)} |"
        )
    return lines


def _overhead_lines(overhead: Mapping[str, Any] | None, proxy: bool) -> list[str]:
    if not proxy:
        return ["- Mapping proxy: off (`--no-proxy`): graph mode checks the mapping with its callback handler only"]
    lines = [
        "- Mapping proxy: a recording reverse proxy (Starlette + uvicorn in a thread of the load script, httpx to"
        " the server) in front of the large llama-server, in every mode: the large model's calls take one more"
        " loopback hop, the small model's none"
    ]
    if overhead:
        for kind in ("1-token call", "16-token streamed call"):
            if kind in overhead:
                d, p = overhead[kind]["direct"], overhead[kind]["proxied"]
                lines.append(
                    f"  - its cost per {kind} to the large server, median of {overhead['calls']} interleaved pairs"
                    f" on the idle server: direct {1000 * d:.1f} ms, proxied {1000 * p:.1f} ms"
                    f" (+{1000 * (p - d):.1f} ms)"
                )
    return lines


def render(
    args: argparse.Namespace,
    argv: Sequence[str],
    modes: Sequence[ModeResult],
    left: list[str] | None,
    overhead: Mapping[str, Any] | None = None,
    status: str | None = None,
) -> str:
    """The Markdown report (``left``: what the cleanup check found, ``None`` before it ran; ``status``: a line
    saying the report is partial)."""
    from glimp_graph.serving import LLAMA_CPP_PYTHON_VERSION

    lines = [
        "# Load test",
        "",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by:",
        "",
        "```",
        shlex.join(["python", "bench/load.py", *argv]),
        "```",
        "",
        *([f"**{status}**", ""] if status else []),
        "## Machine and versions",
        "",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; glimp-graph {_version('glimp-graph')},"
        f" langgraph {_version('langgraph')},"
        f" langchain-core {_version('langchain-core')}, langchain-openai {_version('langchain-openai')},"
        f" openai {_version('openai')}, httpx {_version('httpx')}, starlette {_version('starlette')},"
        f" uvicorn {_version('uvicorn')}",
    ]
    if "langgraph-dev" in args.via_list:
        lines.append(
            f"- LangGraph server: langgraph-cli {_version('langgraph-cli')},"
            f" langgraph-api {_version('langgraph-api')},"
            f" langgraph-runtime-inmem {_version('langgraph-runtime-inmem')},"
            f" langgraph-sdk {_version('langgraph-sdk')};"
            f" `BG_JOB_ISOLATED_LOOPS={'true' if args.isolated_loops else 'false'}`,"
            f" `--n-jobs-per-worker {args.n_jobs_per_worker or max(10, *args.level_list)}`"
        )
    lines += [
        f"- llama-server built from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s sources;"
        f" small `{args.small}`, large `{args.large}`, one server each, {args.parallel} slot(s) (`-np`),"
        f" context {args.ctx_per_slot} tokens per slot, {args.threads} thread(s) per server",
        f"- Router: tau={args.tau}, max_step_tokens={args.max_step_tokens},"
        f" max_thinking_tokens={args.max_thinking_tokens}, max_steps={args.max_steps},"
        f" final_max_tokens={args.final_max_tokens}; endpoints as the faces build them (temperature 0.6,"
        f" top_p 0.95, no seed, 300 s timeout, 2 retries); per-level limit {args.level_timeout:g} s",
        *_overhead_lines(overhead, args.proxy),
        "",
        "## Results",
        "",
        "Latency: one run's wall time from the moment its client got a concurrency slot until the whole answer was"
        " back (queueing for the slot excluded; the mean wait for a slot is its own column). Warm-up runs (other"
        " questions, same concurrency) come first and are not counted. Throughput: successful runs per minute of"
        " the level's wall time. Mapped: runs whose final-answer call carried their own question's tag and no"
        " other, continued their own steps, and whose answer was that call's generated text. Tokens/run: tokens"
        " both models generated per successful run (its `RunStats`; no seed, so a mode may generate more or less)."
        " Outside the graph: a run's latency minus the graph's own wall time (`RunStats.wall_seconds`, from"
        " `prepare` to the final answer): what the way in adds. Face CPU: CPU seconds of the face's processes"
        " during the level, per run (graph mode: `-`, the graph runs in the load script).",
    ]
    for mode in modes:
        lines += ["", f"### {FACE_TITLES[mode.via]}", ""]
        if mode.command:
            lines += ["Face started as:", "", "```", shlex.join(mode.command), "```", ""]
        if mode.error:
            lines += [f"FAILED: {mode.error}", ""]
        lines += _table(mode.summaries)
        samples = {k: v for s in mode.summaries for k, v in s["error_samples"].items()}
        mismatches = [m for s in mode.summaries for m in s["mismatches"]]
        if samples:
            lines += ["", "Error samples (one per type):", ""]
            lines += [f"- `{k}`: {v}" for k, v in sorted(samples.items())]
        if mismatches:
            lines += ["", "Runs mapped to the wrong question:", ""] + [f"- {m}" for m in mismatches]
    if left is None:
        return "\n".join([*lines, "", "## Cleanup", "", "Not checked yet: the run goes on.", ""])
    lines += [
        "",
        "## Cleanup",
        "",
        "After everything was stopped: "
        + (
            "no process of the run (llama-servers, faces and their process groups) is left and none of its ports"
            " (servers, faces, proxy) accepts connections."
            if not left
            else ""
        )
        + "".join(f"\n- LEFT OVER: {item}" for item in left),
        "",
    ]
    return "\n".join(lines)


def as_section(report: str, title: str) -> str:
    """The report as one ``## title`` section: its headings one level down, its own title dropped."""
    body = report.split("\n", 1)[1] if report.startswith("# ") else report
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.MULTILINE)
    return f"## {title}\n{body.rstrip()}\n"


def merge_section(existing: str, section: str) -> str:
    """``existing`` with ``section`` in place of its section of the same ``## `` heading, or appended."""
    heading = section.split("\n", 1)[0]
    lines = existing.rstrip("\n").split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        # the section's own headings are deeper ("### "): the next "## " is the next section
        after = ["", *lines[end:]] if end < len(lines) else []
        merged = [*lines[:start], *section.rstrip("\n").split("\n"), *after]
        return "\n".join(merged).rstrip("\n") + "\n"
    return "\n".join(lines).rstrip("\n") + "\n\n" + section


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", default="qwen2.5-coder-0.5b", help="small model name (glimp_graph.serving.MODELS)")
    p.add_argument("--large", default="qwen2.5-coder-1.5b", help="large model name")
    p.add_argument(
        "--via", default="graph", help=f"way(s) in, comma-separated, run in turn: {', '.join(VIAS)} (default graph)"
    )
    p.add_argument("--levels", default="1,4,16,32", help="comma-separated concurrency levels N")
    p.add_argument(
        "--questions", type=int, default=None, help="measured runs per level (default: graph max(2N, 8), a face 20)"
    )
    p.add_argument(
        "--warmup",
        default=None,
        help="uncounted runs before each level: a number, or N for the level's concurrency (default: graph 0, faces N)",
    )
    p.add_argument("--start", type=int, default=0, help="index of the first GSM8K dev question")
    p.add_argument("--data", type=Path, default=DATA, help="JSONL problem file")
    p.add_argument("--parallel", type=int, default=8, help="llama-server slots (-np) per server")
    p.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens per slot")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads per server")
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--max-thinking-tokens", type=int, default=128)
    p.add_argument("--max-step-tokens", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--final-max-tokens", type=int, default=48)
    p.add_argument("--level-timeout", type=float, default=600.0, help="wall-clock limit of one level (s)")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds a server or face may take to start")
    p.add_argument(
        "--proxy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the recording proxy in front of the large server (needed by the faces; --no-proxy: graph mode only)",
    )
    p.add_argument("--proxy-calls", type=int, default=20, help="pairs of calls that measure the proxy's cost (0: no)")
    p.add_argument("--n-jobs-per-worker", type=int, default=None, help="langgraph dev's (default: max(10, max N))")
    p.add_argument(
        "--isolated-loops",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="langgraph dev: BG_JOB_ISOLATED_LOOPS=true (each run in an event loop thread of its own; default: the"
        " server's default, one shared loop)",
    )
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "LOAD.md", help="Markdown report (whole file)")
    p.add_argument(
        "--append-to",
        type=Path,
        default=None,
        help="instead of --out: put the report into this file as one '## SECTION' (replaced if there, else appended)",
    )
    p.add_argument("--section", default=None, help="the section's title for --append-to (default: models and vias)")
    args = p.parse_args(argv)
    args.level_list = [int(x) for x in args.levels.split(",") if x.strip()]
    if not args.level_list or min(args.level_list) < 1:
        p.error(f"--levels needs positive integers, got {args.levels!r}")
    args.via_list = [v.strip() for v in args.via.split(",") if v.strip()]
    bad = [v for v in args.via_list if v not in VIAS]
    if bad or not args.via_list:
        p.error(f"--via {args.via!r}: choose from {', '.join(VIAS)} (comma-separated)")
    if not args.proxy and args.via_list != ["graph"]:
        p.error("--no-proxy works with --via graph only: through a face the proxy is what checks the mapping")
    if args.questions is not None and args.questions < 1:
        p.error(f"--questions must be >= 1, got {args.questions}")
    if args.warmup is not None and args.warmup != "N" and not args.warmup.isdigit():
        p.error(f"--warmup must be a number >= 0 or N (the level's concurrency), got {args.warmup!r}")
    return args


def level_sizes(args: argparse.Namespace, via: str, n: int) -> tuple[int, int]:
    """``(measured runs, warm-up runs)`` of level ``n`` in mode ``via``."""
    face = via != "graph"
    questions = args.questions or (20 if face else max(2 * n, 8))
    warmup = args.warmup if args.warmup is not None else ("N" if face else "0")
    return questions, n if warmup == "N" else int(warmup)


async def drive(
    args: argparse.Namespace,
    mode: ModeResult,
    delimiter: str,
    recorders: Sequence[CallRecorder],
    make_call: Callable[[contextlib.AsyncExitStack], Awaitable[Caller]],
    group: int | None = None,
    on_level: Callable[[], None] = lambda: None,
) -> None:
    """Every level of one mode in one event loop (async clients are bound to the loop that made them).

    Each level's summary goes into ``mode`` as soon as the level is done, then ``on_level`` is called (it writes
    the report so far), so an interrupted run keeps the levels it finished.
    """
    via = mode.via
    async with contextlib.AsyncExitStack() as stack:
        call = await make_call(stack)
        for n in args.level_list:
            count, warmup = level_sizes(args, via, n)
            if warmup:
                warm = make_runs(load_questions(args.data, warmup, args.start + count), f"warm-{via}-N{n}")
                warmed = await run_level(call, warm, n, args.level_timeout)
                failed = [f"{r.key}: {r.error} {r.error_message[:120]}" for r in warmed.runs if r.error]
                print(f"{via} N={n}: {warmup} warm-up runs, {len(failed)} failed {failed[:2]}", flush=True)
            runs = make_runs(load_questions(args.data, count, args.start), f"{via}-N{n}")
            cpu = group_cpu_seconds(group) if group is not None else 0.0
            level = await run_level(call, runs, n, args.level_timeout)
            face_cpu = group_cpu_seconds(group) - cpu if group is not None else None
            for recorder in recorders:
                check_mapping(level.runs, recorder, delimiter)
            summary = summarize(level, warmup, face_cpu)
            mode.summaries.append(summary)
            print(
                f"{via} N={n}: {summary['ok']}/{summary['runs']} ok, errors {summary['errors'] or 'none'}, "
                f"wrong mapping {len(summary['mismatches'])}, {summary['throughput_per_min']:.2f} runs/min, "
                f"p50 {_fmt(summary['p50_s'])} s, p95 {_fmt(summary['p95_s'])} s, wall {summary['wall_s']:.1f} s, "
                f"{_fmt(summary['mean_tokens'], 0)} tokens/run, {_fmt(summary['mean_outside_s'], 2)} s/run outside "
                f"the graph, face CPU {_fmt(summary['face_cpu_per_run'], 2)} s/run",
                flush=True,
            )
            on_level()


def run_mode(
    args: argparse.Namespace,
    servers: Sequence[Any],
    large_url: str,
    proxy_recorder: ProxyRecorder | None,
    work: Path,
    faces: list[FaceProcess],
    mode: ModeResult,
    on_level: Callable[[], None] = lambda: None,
) -> None:
    """One way in: start its face (if any), drive every level through it into ``mode``, stop the face."""
    via = mode.via
    small, large = servers
    delimiter = GlimpConfig().delimiter
    recorders: list[CallRecorder] = [proxy_recorder] if proxy_recorder is not None else []
    if via == "graph":
        config = GlimpConfig(
            tau=args.tau,
            max_step_tokens=args.max_step_tokens,
            max_thinking_tokens=args.max_thinking_tokens,
            max_steps=args.max_steps,
            final_max_tokens=args.final_max_tokens,
        )
        # the endpoints the faces build (the deploy module and serve-router set only URL and model)
        graph = create_glimp_graph(
            Endpoint(base_url=small.base_url, model=small.alias),
            Endpoint(base_url=large_url, model=large.alias),
            config=config,
        )
        callbacks = FinalAnswerRecorder()
        recorders.insert(0, callbacks)

        async def make_graph_call(stack: contextlib.AsyncExitStack) -> Caller:
            return functools.partial(graph_call, graph, callbacks)

        asyncio.run(drive(args, mode, config.delimiter, recorders, make_graph_call, None, on_level))
        return

    make_face = serve_router_face if via == "serve-router" else langgraph_face
    face = make_face(args, small, large_url, large.alias, work)
    faces.append(face)  # checked for leftovers whatever happens
    try:
        mode.command = face.command
        face.start(args.ready_timeout)
        url = face.url
        # idle connections are dropped before the face's uvicorn drops them (5 s)
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=max(args.level_list), keepalive_expiry=2.0
        )

        async def make_face_call(stack: contextlib.AsyncExitStack) -> Caller:
            if via == "serve-router":
                http = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=args.level_timeout, limits=limits, trust_env=False)
                )
                return functools.partial(serve_router_call, http, url)
            from langgraph_sdk import get_client

            client = get_client(url=url, api_key=None, timeout=args.level_timeout)
            stack.push_async_callback(client.aclose)
            return functools.partial(langgraph_call, client)

        group = face.proc.pid if face.proc is not None else None
        asyncio.run(drive(args, mode, delimiter, recorders, make_face_call, group, on_level))
    finally:
        face.stop()


def write_report(args: argparse.Namespace, report: str) -> Path:
    """Write ``report`` to ``--out``, or as its section of ``--append-to``; return the path."""
    if args.append_to is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        return Path(args.out)
    title = args.section or f"{args.small} + {args.large} via {', '.join(args.via_list)}"
    existing = args.append_to.read_text(encoding="utf-8") if args.append_to.exists() else ""
    args.append_to.write_text(merge_section(existing, as_section(report, title)), encoding="utf-8")
    return Path(args.append_to)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    answer_prefix = GlimpConfig().prompt.answer_prefix
    servers, binary = start_servers(args)
    pids, ports = [s.pid for s in servers], [s.port for s in servers]
    faces: list[FaceProcess] = []
    modes: list[ModeResult] = []
    overhead: dict[str, Any] | None = None
    proxy: ServerThread | None = None
    interrupted = False

    def partial() -> None:  # the report so far, after each level: an interrupted run keeps what it measured
        done = ", ".join(f"{m.via} N={s['concurrency']}" for m in modes for s in m.summaries)
        write_report(args, render(args, argv, modes, None, overhead, status=f"partial, the run goes on; done: {done}"))

    try:
        large = servers[1]
        large_root = large.base_url.removesuffix("/v1")
        recorder = ProxyRecorder() if args.proxy else None
        if recorder is not None:
            proxy = ServerThread(proxy_app(large_root, recorder, answer_prefix, timeout=args.level_timeout)).start()
            ports.append(proxy.port)
            if args.proxy_calls:
                overhead = proxy_overhead(large_root, proxy.url, large.alias, args.proxy_calls)
                print(f"proxy overhead: {overhead}", flush=True)
        large_url = f"{proxy.url}/v1" if proxy is not None else large.base_url
        with tempfile.TemporaryDirectory(prefix="glimp-load-") as tmp:
            for via in args.via_list:
                mode = ModeResult(via, [])
                modes.append(mode)
                try:
                    run_mode(args, servers, large_url, recorder, Path(tmp), faces, mode, partial)
                except Exception as exc:  # a face that did not start or a mode that failed: reported, others run
                    print(f"{via}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    mode.error = f"{type(exc).__name__}: {str(exc)[:2000]}"
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping everything and writing the levels done so far", file=sys.stderr, flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        for server in servers:
            server.stop()
    groups = [f.proc.pid for f in faces if f.proc is not None]
    left = leftovers([*pids, *groups], [*ports, *(f.port for f in faces if f.port)], binary, groups)
    status = "INTERRUPTED: only the levels listed were measured" if interrupted else None
    where = write_report(args, render(args, argv, modes, left, overhead, status=status))
    print(f"cleanup: {left or 'clean'}\nreport: {where}")
    bad = interrupted or left or any(m.error for m in modes)
    bad = bad or any(s["errors"] or s["mismatches"] for m in modes for s in m.summaries)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
