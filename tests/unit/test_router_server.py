"""The OpenAI-compatible router server: answers, SSE framing, tool calls, model@tau, keep-alive, health, auth, errors.

Two kinds of graph behind the app: the real graph on the fake model servers (end-to-end through the fakes), and a
stand-in graph (:class:`StubGraph`) that records each run's input and runtime context and plays scripted events,
for the server's own mapping (what goes into the context, how events become chunks) independent of the graph.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr
from starlette.testclient import TestClient

from glimp_graph import create_glimp_graph
from glimp_graph.router_server import KEEPALIVE, RequestError, create_app, parse_messages
from glimp_graph.state import RunStats, Step
from tests.unit.conftest import FakeServer, ScriptStep, endpoint, is_probe

STEPS = [
    ScriptStep(0.2, "First, write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(2.0, "That is 30 + 21."),
    ScriptStep(0.2, "So the answer is \\boxed{51}."),
]
CHAT = {"model": "glimp-router", "messages": [{"role": "user", "content": "What is 17 * 3?"}]}
CALC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
FORCE_CALC = {"type": "function", "function": {"name": "calculator"}}


def _final_requests(server: FakeServer) -> list[dict[str, Any]]:
    """The final-answer requests a fake server got (no stop strings, not a probe)."""
    return [b for b in server.chat_requests() if not b.get("stop") and not is_probe(b)]


@pytest.fixture
def make_client(fake_small: FakeServer, fake_large: FakeServer, scripted):
    """``make_client(**create_app kwargs)``: a test client of the real graph (tau 1.0) on the scripted fakes."""
    scripted(STEPS, answer="51")
    clients: list[TestClient] = []

    def make(**kwargs: Any) -> TestClient:
        graph = create_glimp_graph(endpoint(fake_small), endpoint(fake_large), config={"tau": 1.0})
        kwargs.setdefault("endpoints", {"small": endpoint(fake_small), "large": endpoint(fake_large)})
        client = TestClient(create_app(graph, **kwargs))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _frames(text: str) -> list[str]:
    assert text.endswith("\n\n"), "an SSE stream ends with a blank line"
    frames = text.split("\n\n")[:-1]
    assert all((f.startswith("data: ") or f == KEEPALIVE.strip()) and "\n" not in f for f in frames), frames
    return frames


def _events(text: str) -> list[str]:
    """The data of each event (keep-alive comments left out)."""
    return [f[len("data: ") :] for f in _frames(text) if f.startswith("data: ")]


def _chunks(text: str) -> list[dict[str, Any]]:
    events = _events(text)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def _finish(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


# --------------------------------------------------------------------------- a stand-in graph


def _stats(**extra: Any) -> RunStats:
    values: dict[str, Any] = {
        "steps": 1,
        "small_steps": 1,
        "large_steps": 0,
        "large_share": 0.0,
        "small_tokens": 5,
        "large_tokens": 4,
        "thinking_tokens": 5,
        "final_tokens": 4,
        "probes": 1,
        "probe_seconds": 0.0,
        "final_seconds": 0.0,
        "wall_seconds": 0.0,
        "stop_reason": "think_end",
        "tau": 1.0,
        "estimator": "renormalized",
        "small_prompt_tokens": 30,
        "large_prompt_tokens": 12,
    }
    return RunStats.model_validate({**values, **extra})


STEP = Step(
    index=0,
    model="small",
    text="17 * 3 = 51.",
    h_init=0.1,
    score=0.1,
    scorer="glimp",
    tau=1.0,
    probe_token="17",
    tokens=5,
    seconds=0.0,
    probe_seconds=0.0,
    end="delimiter",
)


class StubGraph:
    """Stands in for a compiled graph: records each run's input and context, returns / streams a scripted run.

    Attributes:
        answer: ``glimp_answer``.
        deltas: The answer's pieces, streamed as ``{"type": "answer"}`` events.
        tool_calls: ``glimp_tool_calls`` (LangChain ``ToolCall`` dicts).
        invalid: ``glimp_invalid_tool_calls``.
        pause: Seconds the stream waits after the step event (for the keep-alive test).
        runs: ``(method, inputs, context)`` of each run.

    """

    def __init__(self, answer: str = "51", deltas: list[str] | None = None, **kwargs: Any) -> None:
        self.answer = answer
        self.deltas = deltas if deltas is not None else [answer]
        self.tool_calls: list[dict[str, Any]] = kwargs.get("tool_calls", [])
        self.invalid: list[dict[str, Any]] = kwargs.get("invalid", [])
        self.pause: float = kwargs.get("pause", 0.0)
        self.runs: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    async def ainvoke(self, inputs: dict[str, Any], *, context: dict[str, Any] | None = None) -> dict[str, Any]:
        self.runs.append(("ainvoke", inputs, context))
        message = AIMessage(content=self.answer, additional_kwargs={"reasoning_content": STEP.text})
        return {
            "messages": [*inputs["messages"], message],
            "glimp_answer": self.answer,
            "glimp_steps": [STEP],
            "glimp_stats": _stats(),
            "glimp_tool_calls": self.tool_calls,
            "glimp_invalid_tool_calls": self.invalid,
        }

    async def astream(
        self, inputs: dict[str, Any], *, context: dict[str, Any] | None = None, stream_mode: str = "values"
    ) -> AsyncIterator[dict[str, Any]]:
        assert stream_mode == "custom"
        self.runs.append(("astream", inputs, context))
        yield {"type": "step", **STEP.model_dump(), "delimiter": "\n\n"}
        if self.pause:
            await asyncio.sleep(self.pause)
        for delta in self.deltas:
            yield {"type": "answer", "delta": delta}
        yield {
            "type": "final",
            "answer": self.answer,
            "stats": _stats().model_dump(),
            "tool_calls": self.tool_calls,
            "invalid_tool_calls": self.invalid,
        }


@pytest.fixture
def stub_client():
    """``stub_client(graph, **create_app kwargs)``: a test client of a :class:`StubGraph`."""
    clients: list[TestClient] = []

    def make(graph: StubGraph, **kwargs: Any) -> TestClient:
        client = TestClient(create_app(graph, **kwargs))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _chat_openai(client: TestClient, **kwargs: Any) -> ChatOpenAI:
    """LangChain's ``ChatOpenAI`` talking to the app through the test client (an ``httpx.Client``)."""
    return ChatOpenAI(
        base_url="http://testserver/v1",
        api_key=SecretStr("unused"),
        model="glimp-router",
        http_client=client,
        max_retries=0,
        **kwargs,
    )


# --------------------------------------------------------------------------- the real graph on the fakes


def test_non_streaming_answer_reasoning_record_and_usage(make_client, fake_small, fake_large):
    client = make_client()
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "glimp-router"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] == "51" and "tool_calls" not in message
    assert body["choices"][0]["finish_reason"] == "stop"
    assert message["reasoning_content"] == "\n\n".join(s.text for s in STEPS)
    steps = body["glimp"]["steps"]
    assert [s["model"] for s in steps] == ["small", "large", "small"]
    assert [s["index"] for s in steps] == [0, 1, 2]
    assert body["glimp"]["stats"]["steps"] == 3 and body["glimp"]["stats"]["large_steps"] == 1
    usage = body["usage"]
    assert usage["completion_tokens"] > 0
    # the fakes report 10 prompt tokens per call: the usage adds up every call of both models
    calls = len(fake_small.chat_requests()) + len(fake_large.chat_requests())
    assert usage["prompt_tokens"] == 10 * calls
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_sends_steps_then_the_answer_token_by_token_then_done(make_client, fake_small, fake_large, scripted):
    scripted(STEPS, answer="The answer is 51.")
    client = make_client()
    plain = client.post("/v1/chat/completions", json=CHAT).json()
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = _chunks(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    deltas = _deltas(chunks)
    assert deltas[0] == {"role": "assistant", "content": ""}
    reasoning = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    assert len(reasoning) == 3 and "".join(reasoning) == "\n\n".join(s.text for s in STEPS)
    content = [d["content"] for d in deltas if d.get("content")]
    assert len(content) > 1, "the answer is streamed in pieces, as the large model writes it"
    assert "".join(content) == plain["choices"][0]["message"]["content"] == "The answer is 51."
    # the answer comes after every step, the finish chunk carries the routing record, usage comes last
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(i < first_content for i, d in enumerate(deltas) if "reasoning_content" in d)
    finish = _finish(chunks)
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert [s["model"] for s in finish[0]["glimp"]["steps"]] == ["small", "large", "small"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-1]["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] > 0


def test_models_lists_the_served_name_only(make_client):
    client = make_client(model_name="my-router")
    r = client.get("/v1/models")
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["my-router"]


@pytest.mark.parametrize(("model", "routes"), [("glimp@1e9", {"small"}), ("glimp@-inf", {"large"})])
def test_model_name_with_a_threshold_routes_the_request(make_client, model, routes):
    client = make_client(model_name="glimp")
    r = client.post("/v1/chat/completions", json={**CHAT, "model": model})
    assert r.status_code == 200, r.text
    assert {s["model"] for s in r.json()["glimp"]["steps"]} == routes
    assert r.json()["model"] == model
    stats_tau = r.json()["glimp"]["stats"]["tau"]
    assert stats_tau == ("-inf" if model.endswith("inf") else 1e9)
    # the same request through the plain name routes by the server's tau (1.0): both models write
    plain = client.post("/v1/chat/completions", json={**CHAT, "model": "glimp"}).json()
    assert {s["model"] for s in plain["glimp"]["steps"]} == {"small", "large"} and plain["model"] == "glimp"


def test_glimp_tau_per_request_still_works_and_may_repeat_the_models_threshold(make_client):
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "glimp_tau": 1e9})
    assert r.status_code == 200 and {s["model"] for s in r.json()["glimp"]["steps"]} == {"small"}
    r = client.post("/v1/chat/completions", json={**CHAT, "model": "glimp-router@-1e9", "glimp_tau": -1e9})
    assert r.status_code == 200 and {s["model"] for s in r.json()["glimp"]["steps"]} == {"large"}


def test_bearer_token_is_required_when_set(make_client):
    client = make_client(api_token=SecretStr("s3cret-token"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        r = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "s3cret" not in r.text
        assert client.get("/v1/models", headers=headers).status_code == 401
        assert client.get("/health?deep=1", headers=headers).status_code == 401
    ok = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/v1/models", headers=ok).status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers=ok).json()["choices"][0]["message"]["content"] == "51"


def test_health_is_open_and_says_nothing_about_the_models(make_client, fake_small, fake_large):
    client = make_client(api_token="s3cret-token", model_name="secret-model-name")
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert fake_small.paths == [] and fake_large.paths == [], "liveness contacts no model"


def test_deep_health_checks_each_endpoint(make_client, fake_small, fake_large):
    client = make_client()
    r = client.get("/health?deep=1")
    assert r.status_code == 200 and r.json() == {"status": "ok", "endpoints": {"small": "ok", "large": "ok"}}
    assert ("GET", "/v1/models") in fake_small.paths and ("GET", "/v1/models") in fake_large.paths
    fake_large.models_hook = lambda: (503, json.dumps({"error": {"message": "loading model"}}))
    r = client.get("/health", params={"deep": "true"})
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "endpoints": {"small": "ok", "large": "HTTP 503"}}
    fake_small.close()
    r = client.get("/health?deep=1").json()["endpoints"]
    assert r["small"].startswith("unreachable") and fake_small.url not in json.dumps(r)
    assert client.get("/health?deep=maybe").status_code == 400


def test_body_over_the_limit_is_413(make_client, fake_large):
    client = make_client(max_body_bytes=200)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 500}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "200 bytes" in r.json()["error"]["message"]
    # also without a Content-Length header (a chunked body)
    r = client.post("/v1/chat/completions", content=iter([json.dumps(big).encode()]))
    assert r.status_code == 413
    assert fake_large.chat_requests() == []


def test_max_tokens_over_the_limit_is_400_naming_the_value(make_client):
    client = make_client(max_tokens_limit=100)
    for name in ("max_tokens", "max_completion_tokens"):
        r = client.post("/v1/chat/completions", json={**CHAT, name: 5000})
        assert r.status_code == 400
        error = r.json()["error"]
        assert "5000" in error["message"] and "100" in error["message"] and error["param"] == name
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 0})
    assert r.status_code == 400 and "positive integer" in r.json()["error"]["message"]


def test_max_tokens_caps_the_final_answer_of_the_one_graph(make_client, fake_large):
    client = make_client()
    for cap in (7, 9):
        r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": cap})
        assert r.status_code == 200
        final = _final_requests(fake_large)
        assert final and (final[-1].get("max_completion_tokens") or final[-1].get("max_tokens")) == cap
    client.post("/v1/chat/completions", json=CHAT)
    final = _final_requests(fake_large)[-1]
    assert (final.get("max_completion_tokens") or final.get("max_tokens")) not in (7, 9), "a cap is per request"


def test_create_app_takes_a_graph_not_a_factory():
    with pytest.raises(TypeError, match="compiled graph"):
        create_app(lambda overrides: None)
    with pytest.raises(ValueError, match="keepalive_seconds"):
        create_app(StubGraph(), keepalive_seconds=0)


BAD = [
    (b"{not json", "not valid JSON", None),
    (b"[1, 2]", "JSON object", None),
    ({"model": "x"}, "'messages' is required", "messages"),
    ({"messages": []}, "'messages' is required", "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "messages"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, "no user message", "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "messages"),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "role 'tool'", "messages"),
    ({**CHAT, "n": 2}, "only one choice", "n"),
    ({**CHAT, "glimp_tau": "high"}, "glimp_tau", "glimp_tau"),
    ({**CHAT, "model": "glimp-router@high"}, "'glimp-router@high'", "model"),
    ({**CHAT, "model": "glimp-router@nan"}, "'nan'", "model"),
    ({**CHAT, "model": "glimp-router@"}, "after '@'", "model"),
    ({**CHAT, "model": "other@0.5"}, "serves 'glimp-router'", "model"),
    ({**CHAT, "model": "glimp-router@0.5", "glimp_tau": 0.8}, "contradicts", "glimp_tau"),
    ({**CHAT, "tools": {"calculator": {}}}, "'tools' must be a list", "tools"),
    ({**CHAT, "tools": ["calculator"]}, "'tools'[0] must be an object", "tools"),
    ({**CHAT, "tools": [{"type": "function"}]}, "tool 0 has no 'function'", "tools"),
    ({**CHAT, "tools": [CALC, {"type": "retrieval"}]}, "'tools'[1].type is 'retrieval'", "tools"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "'a b'", "tools"),
    ({**CHAT, "tools": [CALC, CALC]}, "['calculator'] appear more than once", "tools"),
    (
        {**CHAT, "tools": [{"type": "function", "function": {"name": "calc", "parameters": "x"}}]},
        "tool 'calc' has parameters 'x'",
        "tools",
    ),
    ({**CHAT, "tool_choice": "required"}, "no tools are given", "tool_choice"),
    ({**CHAT, "tools": [], "tool_choice": "required"}, "no tools are given", "tool_choice"),
    ({**CHAT, "tools": [CALC], "tool_choice": "always"}, "'always'", "tool_choice"),
    (
        {**CHAT, "tools": [CALC], "tool_choice": {"type": "function", "function": {"name": "search"}}},
        "'search', which is not among the tools ['calculator']",
        "tool_choice",
    ),
    ({**CHAT, "tools": [CALC], "tool_choice": {"type": "function"}}, "a named choice is", "tool_choice"),
    ({**CHAT, "functions": [CALC["function"]]}, "send 'tools'", "functions"),
]
TURN = [{"role": "user", "content": "What is 17 * 3?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "17*3"}'}}
BAD_TURNS = [
    ([*TURN, {"role": "assistant", "tool_calls": {"id": "x"}}], "messages[1].tool_calls must be a list"),
    ([*TURN, {"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}], "messages[1].tool_calls[0].id"),
    ([*TURN, {"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}], "messages[1].tool_calls[0].function"),
    (
        [*TURN, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "calculator", "arguments": {}}}]}],
        "messages[1].tool_calls[0].function.arguments must be a string",
    ),
    ([*TURN, {"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}], "messages[1].tool_calls[0].type"),
    ([*TURN, {"role": "tool", "content": "51"}], "messages[1].tool_call_id is required"),
    ([*TURN, {"role": "tool", "tool_call_id": "call_9", "content": "51"}], "'call_9' answers no tool call"),
    (
        [
            *TURN,
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_2", "content": "1"},
        ],
        "messages[2].tool_call_id 'call_2'",
    ),
]


@pytest.mark.parametrize(
    ("payload", "needle", "param"), BAD + [({**CHAT, "messages": m}, n, "messages") for m, n in BAD_TURNS]
)
def test_bad_requests_are_400_naming_the_field(stub_client, payload, needle, param):
    graph = StubGraph()
    client = stub_client(graph)
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    r = client.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    assert param is None or error["param"] == param
    assert graph.runs == [], "a bad request never runs the graph"


def test_infinite_tau_is_sent_as_a_string(fake_small, fake_large, scripted):
    scripted(STEPS, answer="51")
    graph = create_glimp_graph(endpoint(fake_small), endpoint(fake_large), config={"tau": math.inf})
    with TestClient(create_app(graph)) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        json.loads(r.text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
        assert r.json()["glimp"]["stats"]["tau"] == "inf"
        s = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        for event in _events(s.text)[:-1]:
            json.loads(event, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_endpoint_failure_is_502_and_a_stream_error_event(make_client, fake_large):
    fake_large.handler = lambda body: (400, json.dumps({"error": {"message": "boom"}}))
    client = make_client()
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and "large" in r.json()["error"]["message"], r.text
    s = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = _events(s.text)
    assert events[-1] == "[DONE]" and "error" in json.loads(events[-2])


# --------------------------------------------------------------------------- tool calls on the fakes


def _tool_call_answer(fake_large: FakeServer, arguments: str = '{"expression": "17 * 3"}', name: str = "calculator"):
    """Make the large fake answer the final-answer request with one tool call (steps and probes as scripted)."""
    scripted_handler = fake_large.handler

    def handler(body: dict[str, Any]) -> Any:
        if body.get("stop") or is_probe(body) or not body.get("tools"):
            return scripted_handler(body)
        response = fake_large.chat("", body, completion_tokens=6)
        message = response["choices"][0]["message"]
        message["content"] = None
        message["tool_calls"] = [
            {"id": "call_abc", "type": "function", "function": {"name": name, "arguments": arguments}}
        ]
        response["choices"][0]["finish_reason"] = "tool_calls"
        return response

    fake_large.handler = handler


def test_tool_call_answer_in_openais_format(make_client, fake_small, fake_large):
    _tool_call_answer(fake_large)
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "tools": [CALC], "tool_choice": FORCE_CALC})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["id"] == "call_abc" and call["type"] == "function"
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "17 * 3"}
    # the tools went to the large model's final answer only, never to a step or a probe
    (final,) = _final_requests(fake_large)
    assert final["tools"][0]["function"]["name"] == "calculator" and final["tool_choice"] == FORCE_CALC
    steps = [b for b in fake_small.chat_requests() + fake_large.chat_requests() if b is not final]
    assert steps and not any("tools" in b for b in steps)


def test_tool_call_streamed_as_delta_tool_calls(make_client, fake_large):
    _tool_call_answer(fake_large)
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "tools": [CALC], "tool_choice": "required", "stream": True})
    chunks = _chunks(r.text)
    calls = [d["tool_calls"] for d in _deltas(chunks) if d.get("tool_calls")]
    assert calls and all(len(c) == 1 for c in calls)
    assert [c[0]["index"] for c in calls] == [0]
    call = calls[0][0]
    assert call["id"] == "call_abc" and call["type"] == "function" and call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "17 * 3"}
    (finish,) = _finish(chunks)
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(d.get("content") for d in _deltas(chunks))


def test_chat_openai_reads_the_tool_call_plain_and_streamed(make_client, fake_large):
    _tool_call_answer(fake_large)
    llm = _chat_openai(make_client()).bind_tools([CALC], tool_choice="calculator")
    message = llm.invoke("What is 17 * 3?")
    assert message.tool_calls == [
        {"name": "calculator", "args": {"expression": "17 * 3"}, "id": "call_abc", "type": "tool_call"}
    ]
    merged = None
    for chunk in llm.stream("What is 17 * 3?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None and merged.tool_calls[0]["args"] == {"expression": "17 * 3"}
    assert merged.response_metadata.get("finish_reason") == "tool_calls"


def test_invalid_tool_call_is_passed_on_as_written_with_the_reason(make_client, fake_large):
    _tool_call_answer(fake_large, arguments='{"expression": 17 *')
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "tools": [CALC], "tool_choice": "required"})
    assert r.status_code == 200, r.text
    body = r.json()
    (call,) = body["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "calculator", "arguments": '{"expression": 17 *'}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    (reason,) = body["glimp"]["invalid_tool_calls"]
    assert reason["id"] == call["id"] and reason["name"] == "calculator" and reason["error"]
    # ChatOpenAI reads it as an invalid tool call, as it would read OpenAI's own bad arguments
    message = _chat_openai(client).bind_tools([CALC], tool_choice="required").invoke("What is 17 * 3?")
    assert message.tool_calls == [] and message.invalid_tool_calls[0]["args"] == '{"expression": 17 *'


def test_a_tool_schema_the_large_server_rejects_is_a_502_naming_the_tools(make_client, fake_large):
    scripted_handler = fake_large.handler

    def handler(body: dict[str, Any]) -> Any:
        if body.get("tools"):
            return 400, json.dumps({"error": {"message": "JSON schema conversion failed: unsupported 'format'"}})
        return scripted_handler(body)

    fake_large.handler = handler
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "tools": [CALC]})
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert "JSON schema conversion failed" in message and "['calculator']" in message and "large" in message


def test_an_agent_turn_with_the_tool_result_reaches_the_final_answer(make_client, fake_large):
    client = make_client()
    turn = [
        *TURN,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "51"},
    ]
    r = client.post("/v1/chat/completions", json={**CHAT, "messages": turn, "tools": [CALC]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "51"
    final = _final_requests(fake_large)[-1]
    roles = [m["role"] for m in final["messages"]]
    assert "tool" in roles, final["messages"]
    tool = next(m for m in final["messages"] if m["role"] == "tool")
    assert tool["tool_call_id"] == "call_1" and "51" in json.dumps(tool["content"])
    called = next(m for m in final["messages"] if m.get("tool_calls"))
    assert called["tool_calls"][0]["function"]["name"] == "calculator"


# --------------------------------------------------------------------------- the server's mapping (stand-in graph)


def test_a_requests_settings_go_to_the_one_graph_as_its_context(stub_client):
    graph = StubGraph()
    client = stub_client(graph, model_name="glimp")
    plain = client.post("/v1/chat/completions", json={**CHAT, "model": "glimp"})
    assert plain.status_code == 200, plain.text
    body = {
        **CHAT,
        "model": "glimp@0.8",
        "max_completion_tokens": 9,
        "tools": [CALC],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0.2,
    }
    client.post("/v1/chat/completions", json=body)
    client.post("/v1/chat/completions", json={**CHAT, "glimp_tau": -1.5, "max_tokens": 3, "stream": True})
    client.post("/v1/chat/completions", json={**CHAT, "tools": [CALC], "tool_choice": "none"})
    client.post("/v1/chat/completions", json={**CHAT, "tools": [], "tool_choice": "auto"})
    contexts = [(method, context) for method, _, context in graph.runs]
    assert contexts == [
        ("ainvoke", {}),
        ("ainvoke", {"final_max_tokens": 9, "tau": 0.8, "tools": [CALC], "tool_choice": "required"}),
        ("astream", {"final_max_tokens": 3, "tau": -1.5}),
        ("ainvoke", {"tools": [CALC], "tool_choice": "none"}),
        ("ainvoke", {}),
    ]
    assert all(list(inputs) == ["messages"] for _, inputs, _ in graph.runs)


def test_keep_alive_comments_while_a_step_runs(stub_client):
    graph = StubGraph(pause=0.3)
    client = stub_client(graph, keepalive_seconds=0.01)
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    frames = _frames(r.text)
    kept = [i for i, f in enumerate(frames) if f == ": keep-alive"]
    assert kept, frames
    # between the step and the answer (the graph was quiet there), and the stream still ends normally
    step = next(i for i, f in enumerate(frames) if "reasoning_content" in f)
    answer = next(i for i, f in enumerate(frames) if '"content": "51"' in f)
    assert all(step < i < answer for i in kept)
    assert frames[-1] == "data: [DONE]"
    quiet = stub_client(StubGraph()).post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert ": keep-alive" not in quiet.text, "no comment when events come in time (10 s default)"


def test_streamed_answer_adds_up_to_the_stripped_answer(stub_client):
    graph = StubGraph(answer="The answer is 51.", deltas=["  ", "\nThe", " answer", " is ", "51", ".", "\n"])
    client = stub_client(graph)
    chunks = _chunks(client.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    content = [d["content"] for d in _deltas(chunks) if d.get("content")]
    assert content == ["The", " answer", " is", " 51", "."]
    # a graph that streams no answer pieces still sends the whole answer once
    silent = stub_client(StubGraph(answer="51", deltas=[]))
    chunks = _chunks(silent.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert [d["content"] for d in _deltas(chunks) if d.get("content")] == ["51"]


def test_stub_tool_calls_without_ids_get_ids_and_keep_their_order(stub_client):
    calls = [
        {"name": "calculator", "args": {"expression": "1+1"}, "id": None, "type": "tool_call"},
        {"name": "calculator", "args": {"expression": "2+2"}, "id": "call_2", "type": "tool_call"},
    ]
    invalid = [{"name": "search", "args": '{"q": "x"}', "id": "call_3", "error": "unknown tool", "type": "x"}]
    client = stub_client(StubGraph(answer="", deltas=[], tool_calls=calls, invalid=invalid))
    body = client.post("/v1/chat/completions", json={**CHAT, "tools": [CALC]}).json()
    got = body["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in got] == ["calculator", "calculator", "search"]
    assert got[0]["id"].startswith("call_") and got[1]["id"] == "call_2" and got[2]["id"] == "call_3"
    assert [json.loads(c["function"]["arguments"]) for c in got] == [
        {"expression": "1+1"},
        {"expression": "2+2"},
        {"q": "x"},
    ]
    assert body["glimp"]["invalid_tool_calls"] == [{"id": "call_3", "name": "search", "error": "unknown tool"}]
    chunks = _chunks(client.post("/v1/chat/completions", json={**CHAT, "tools": [CALC], "stream": True}).text)
    streamed = [d["tool_calls"][0] for d in _deltas(chunks) if d.get("tool_calls")]
    assert [c["index"] for c in streamed] == [0, 1, 2] and streamed[1]["id"] == "call_2"
    assert _finish(chunks)[0]["choices"][0]["finish_reason"] == "tool_calls"


def test_usage_counts_the_prompt_tokens_of_both_models(stub_client):
    client = stub_client(StubGraph())
    usage = client.post("/v1/chat/completions", json=CHAT).json()["usage"]
    assert usage == {"prompt_tokens": 42, "completion_tokens": 9, "total_tokens": 51}


def test_parse_messages_reads_an_agent_turn():
    messages = parse_messages(
        [
            {"role": "developer", "content": "Use the calculator."},
            {"role": "user", "content": [{"type": "text", "text": "What is 17 * 3?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [CALL, {**CALL, "id": "call_2", "function": {"name": "calculator", "arguments": "17*"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "51"},
            {"role": "tool", "tool_call_id": "call_2", "content": "error: bad arguments"},
        ]
    )
    system, human, ai, tool, tool_2 = messages
    assert isinstance(system, SystemMessage) and isinstance(human, HumanMessage)
    assert human.content == "What is 17 * 3?"
    assert isinstance(ai, AIMessage) and ai.content == ""
    assert ai.tool_calls == [
        {"name": "calculator", "args": {"expression": "17*3"}, "id": "call_1", "type": "tool_call"}
    ]
    # arguments that are not JSON are carried as an invalid call (as ChatOpenAI reads them), not refused
    assert ai.invalid_tool_calls[0]["id"] == "call_2" and ai.invalid_tool_calls[0]["args"] == "17*"
    assert isinstance(tool, ToolMessage) and tool.tool_call_id == "call_1" and tool.content == "51"
    assert isinstance(tool_2, ToolMessage) and tool_2.tool_call_id == "call_2"
    with pytest.raises(RequestError, match="answers no tool call"):
        parse_messages([*TURN, {"role": "tool", "tool_call_id": "call_1", "content": "51"}])


@pytest.mark.parametrize("tool_choice", ["required", FORCE_CALC, "auto"])
def test_a_call_written_as_text_on_llama_cpp_is_never_streamed_as_content(make_client, fake_large, tool_choice):
    """llama.cpp writes the call as text (the grammar's JSON): the stream shows the call, not that text."""
    fake_large.owned_by = "llamacpp"
    scripted_handler = fake_large.handler

    def handler(body: dict[str, Any]) -> Any:
        if not body.get("tools"):
            return scripted_handler(body)
        return fake_large.chat('{"name": "calculator", "arguments": {"expression": "17 * 3"}}', body)

    fake_large.handler = handler
    client = make_client()
    body = {**CHAT, "tools": [CALC], "tool_choice": tool_choice, "stream": True}
    chunks = _chunks(client.post("/v1/chat/completions", json=body).text)
    assert not any(d.get("content") for d in _deltas(chunks)), _deltas(chunks)
    calls = [d["tool_calls"][0] for d in _deltas(chunks) if d.get("tool_calls")]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "calculator")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"expression": "17 * 3"}
    assert _finish(chunks)[0]["choices"][0]["finish_reason"] == "tool_calls"
