"""The OpenAI-compatible router server against the fake model servers: answers, SSE framing, auth, limits, errors."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from glimp_graph import create_glimp_graph
from glimp_graph.router_server import create_app
from tests.unit.conftest import FakeServer, ScriptStep, endpoint

STEPS = [
    ScriptStep(0.2, "First, write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(2.0, "That is 30 + 21."),
    ScriptStep(0.2, "So the answer is \\boxed{51}."),
]
CHAT = {"model": "glimp-router", "messages": [{"role": "user", "content": "What is 17 * 3?"}]}


@pytest.fixture
def make_client(fake_small: FakeServer, fake_large: FakeServer, scripted):
    scripted(STEPS, answer="51")
    clients: list[TestClient] = []
    seen: list[dict[str, Any]] = []

    def make(**kwargs: Any) -> TestClient:
        def factory(overrides: dict[str, Any]):
            seen.append(overrides)
            return create_glimp_graph(endpoint(fake_small), endpoint(fake_large), config={"tau": 1.0, **overrides})

        client = TestClient(create_app(factory, **kwargs))
        client.__enter__()
        clients.append(client)
        return client

    make.overrides = seen  # type: ignore[attr-defined]
    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _events(text: str) -> list[str]:
    assert text.endswith("\n\n"), "an SSE stream ends with a blank line"
    frames = text.split("\n\n")[:-1]
    assert all(f.startswith("data: ") and "\n" not in f for f in frames), frames
    return [f[len("data: ") :] for f in frames]


def test_non_streaming_answer_reasoning_and_glimp_record(make_client):
    client = make_client()
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "glimp-router"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] == "51"
    assert message["reasoning_content"] == "\n\n".join(s.text for s in STEPS)
    steps = body["glimp"]["steps"]
    assert [s["model"] for s in steps] == ["small", "large", "small"]
    assert [s["index"] for s in steps] == [0, 1, 2]
    assert body["glimp"]["stats"]["steps"] == 3 and body["glimp"]["stats"]["large_steps"] == 1
    assert body["usage"]["completion_tokens"] > 0


def test_streaming_sends_steps_then_answer_then_done(make_client):
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    reasoning = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    assert len(reasoning) == 3 and "".join(reasoning) == "\n\n".join(s.text for s in STEPS)
    content = "".join(d.get("content", "") for d in deltas)
    assert content == "51"
    # the answer comes after every step, the finish chunk carries the routing record, usage comes last
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(i < first_content for i, d in enumerate(deltas) if "reasoning_content" in d)
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] == "stop"]
    assert len(finish) == 1 and [s["model"] for s in finish[0]["glimp"]["steps"]] == ["small", "large", "small"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_models_lists_the_router(make_client):
    client = make_client(model_name="my-router")
    r = client.get("/v1/models")
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["my-router"]


def test_bearer_token_is_required_when_set(make_client):
    client = make_client(api_token=SecretStr("s3cret-token"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        r = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "s3cret" not in r.text
        assert client.get("/v1/models", headers=headers).status_code == 401
    ok = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/v1/models", headers=ok).status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT, headers=ok).json()["choices"][0]["message"]["content"] == "51"


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


def test_max_tokens_caps_the_final_answer(make_client, fake_large):
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7})
    assert r.status_code == 200
    final = [b for b in fake_large.chat_requests() if not b.get("stop")]
    assert final and (final[-1].get("max_completion_tokens") or final[-1].get("max_tokens")) == 7
    assert make_client.overrides == [{"final_max_tokens": 7}]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"model": "x"}).encode(), "'messages' is required"),
        (json.dumps({"messages": []}).encode(), "'messages' is required"),
        (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), "messages[0].role"),
        (json.dumps({"messages": [{"role": "system", "content": "be brief"}]}).encode(), "no user message"),
        (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), "messages[0].content"),
        (json.dumps({**CHAT, "n": 2}).encode(), "only one choice"),
        (json.dumps({**CHAT, "glimp_tau": "high"}).encode(), "glimp_tau"),
    ],
)
def test_bad_requests_are_400_with_a_clear_message(make_client, fake_small, payload, needle):
    client = make_client()
    r = client.post("/v1/chat/completions", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert fake_small.chat_requests() == []


def test_glimp_tau_per_request_and_infinite_tau_is_valid_json(make_client):
    client = make_client()
    r = client.post("/v1/chat/completions", json={**CHAT, "glimp_tau": 1e9})
    assert r.status_code == 200
    assert {s["model"] for s in r.json()["glimp"]["steps"]} == {"small"}


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
