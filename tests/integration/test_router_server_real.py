"""``glimp serve-router`` for real: uvicorn in a subprocess on 127.0.0.1 over the local Qwen pair (llama.cpp),
called with the ``openai`` client, LangChain's ``ChatOpenAI`` and plain HTTP: the answer streamed in pieces, the
threshold chosen by the model name, a forced tool call and the turn that reads its result, health; Prometheus
metrics and the run log lines; two uvicorn workers answering concurrent requests with one set of metrics."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.sockets import listeners, listeners_of, owners, stop_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "router-token-for-the-test"
MODEL = "glimp-router"
QUESTION = [{"role": "user", "content": "What is 17 * 3?"}]
CALC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression and return the number.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 17 * 3"}},
            "required": ["expression"],
        },
    },
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Router(NamedTuple):
    """The running ``glimp serve-router``: its base URL, root URL, process id and log file."""

    url: str
    root: str
    pid: int
    log: Path


def _start_router(qwen_pair, log_path: Path, *extra: str):
    """``glimp serve-router`` over the pair with the test's small budgets; yields a :class:`Router`."""
    small, large = qwen_pair
    port = _free_port()
    command = [
        sys.executable,
        "-c",
        "from glimp_graph.cli.serve_router import serve_router; serve_router()",
        *("--small-url", small.base_url, "--large-url", large.base_url),
        *("--small-model", small.model, "--large-model", large.model),
        *("--port", str(port), "--model-name", MODEL),
        *("--max-step-tokens", "32", "--max-thinking-tokens", "96", "--max-steps", "3"),
        *("--final-max-tokens", "24", "--max-tokens-limit", "96"),
        # short, so every stream below (the openai client's and LangChain's too) carries keep-alive comments
        *("--keep-alive", "0.2"),
        *extra,
    ]
    env = {**os.environ, "GLIMP_ROUTER_TOKEN": TOKEN}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{root}/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield Router(f"{root}/v1", root, proc.pid, log_path)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def router(qwen_pair, tmp_path_factory):
    yield from _start_router(qwen_pair, tmp_path_factory.mktemp("router") / "serve-router.log")


@pytest.fixture(scope="module")
def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url, api_key=TOKEN, max_retries=0, timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_router_listens_on_loopback_only(router):
    """Started without ``--host``, uvicorn's socket is on 127.0.0.1 and nowhere else (read from /proc)."""
    port = urlsplit(router.url).port
    on_port = [listener for listener in listeners() if listener.port == port]
    assert [listener.address for listener in on_port] == ["127.0.0.1"], on_port  # no 0.0.0.0 or :: listener
    assert owners(on_port[0].inode) == {router.pid}
    assert {listener.address for listener in listeners_of(router.pid)} == {"127.0.0.1"}, listeners_of(router.pid)


def test_health_open_and_deep_behind_the_token(router):
    r = httpx.get(f"{router.root}/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert httpx.get(f"{router.root}/health?deep=1", timeout=10).status_code == 401
    deep = httpx.get(f"{router.root}/health?deep=1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert deep.status_code == 200 and deep.json() == {"status": "ok", "endpoints": {"small": "ok", "large": "ok"}}


def test_openai_client_plain_answer_usage_and_refusals(client, router):
    assert [m.id for m in client.models.list().data] == [MODEL]
    done = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12)
    answer = done.choices[0].message
    assert answer.role == "assistant" and answer.content and done.choices[0].finish_reason == "stop"
    extra = done.model_extra or {}
    steps = extra["glimp"]["steps"]
    assert steps and [s["index"] for s in steps] == list(range(len(steps)))
    assert answer.model_extra["reasoning_content"] == "\n\n".join(s["text"] for s in steps)
    assert extra["glimp"]["stats"]["final_tokens"] <= 12
    # real prompt tokens: every call of both models read at least the question
    assert done.usage.prompt_tokens > done.usage.completion_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=router.url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="1000"):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="glimp-router@high"):
        client.chat.completions.create(model=f"{MODEL}@high", messages=QUESTION)


def test_streamed_answer_arrives_in_pieces_after_the_steps(client):
    sentence = [{"role": "user", "content": "What is 17 * 3? Answer with one full sentence."}]
    stream = client.chat.completions.create(
        model=MODEL, messages=sentence, stream=True, stream_options={"include_usage": True}
    )
    reasoning, content, finish, usage = [], [], None, None
    for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            assert not content, "reasoning comes before the answer"
            reasoning.append(delta.model_extra["reasoning_content"])
        if delta.content:
            content.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning and finish == "stop"
    assert len(content) > 1, f"the answer came in one piece: {content}"
    assert usage is not None and usage.prompt_tokens > 0


def test_keep_alive_comments_in_the_raw_stream(router):
    body = {"model": MODEL, "messages": QUESTION, "stream": True, "max_tokens": 8}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("POST", f"{router.url}/chat/completions", json=body, headers=headers, timeout=300) as r:
        frames = r.read().decode().split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    comments = [f for f in frames if f.startswith(":")]
    assert comments and set(comments) == {": keep-alive"}, frames
    assert all(f.startswith(("data: ", ":")) for f in frames[:-1])


def test_the_model_name_chooses_the_threshold(client):
    routes = {}
    for model in (f"{MODEL}@1e9", f"{MODEL}@-1e9"):
        done = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=8)
        assert done.model == model
        steps = done.model_extra["glimp"]["steps"]
        assert steps and all(s["tau"] == float(model.split("@")[1]) for s in steps)
        routes[model] = {s["model"] for s in steps}
    assert routes == {f"{MODEL}@1e9": {"small"}, f"{MODEL}@-1e9": {"large"}}


def test_forced_tool_call_then_the_turn_with_its_result(client):
    choice = {"type": "function", "function": {"name": "calculator"}}
    done = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[CALC], tool_choice=choice, max_tokens=64
    )
    assert done.choices[0].finish_reason == "tool_calls", done
    (call,) = done.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "calculator" and call.id
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments.get("expression"), str) and arguments["expression"]

    # streamed: the call comes as delta.tool_calls, no call text as content
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[CALC], tool_choice=choice, max_tokens=64, stream=True
    )
    calls, content, finish = [], [], None
    for chunk in stream:
        if chunk.choices:
            calls += chunk.choices[0].delta.tool_calls or []
            content += [chunk.choices[0].delta.content or ""]
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and [c.index for c in calls] == [0] and calls[0].function.name == "calculator"
    assert json.loads(calls[0].function.arguments)["expression"] and not "".join(content)

    # the agent's next turn: the call and its result in the messages, the model answers in text
    turn = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "51"},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=turn, tools=[CALC], tool_choice="none")
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


def test_langchain_chat_openai(router):
    llm = ChatOpenAI(base_url=router.url, api_key=TOKEN, model=MODEL, max_retries=0, timeout=300)
    message = llm.invoke("What is 2 + 2?")
    assert isinstance(message.content, str) and message.content
    chunks = list(llm.stream("What is 3 + 4?"))
    assert "".join(str(c.content) for c in chunks)
    forced = llm.bind_tools([CALC], tool_choice="calculator").invoke([HumanMessage("What is 6 * 7?")])
    assert forced.tool_calls and forced.tool_calls[0]["name"] == "calculator"
    follow = llm.bind_tools([CALC], tool_choice="none").invoke(
        [HumanMessage("What is 6 * 7?"), forced, ToolMessage("42", tool_call_id=forced.tool_calls[0]["id"])]
    )
    assert isinstance(follow.content, str) and follow.content and not follow.tool_calls


# --------------------------------------------------------------------------- operations


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample's value in Prometheus' text format (0 when the series is absent)."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    return found[0] if found else 0.0


def test_metrics_and_the_run_log_line_on_the_real_pair(router, client):
    """The real graph's numbers reach ``/metrics`` (behind the API token) and the text log line (no token)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{router.root}/metrics", timeout=10).status_code == 401
    before = httpx.get(f"{router.root}/metrics", headers=auth, timeout=10).text
    done = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, extra_headers={"X-Glimp-Thread-Id": "real-thread-1"}
    )
    after = httpx.get(f"{router.root}/metrics", headers=auth, timeout=10).text
    stats = done.model_extra["glimp"]["stats"]
    assert stats["steps"] > 0

    def moved(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert moved("glimp_http_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert moved("glimp_steps_total", model="small") == stats["small_steps"]
    assert moved("glimp_steps_total", model="large") == stats["large_steps"]
    assert moved("glimp_h_init_nats_count") == stats["steps"]
    assert moved("glimp_probe_seconds_count") == stats["probes"]
    assert moved("glimp_tokens_total", model="large", kind="completion") == stats["large_tokens"]
    assert moved("glimp_run_seconds_count", mode="plain", outcome="ok") == 1
    lines = [line for line in router.log.read_text().splitlines() if done.id in line]
    assert len(lines) == 1 and " 200 ok " in lines[0] and "thread_id='real-thread-1'" in lines[0], lines
    assert TOKEN not in router.log.read_text()


@pytest.fixture(scope="module")
def two_workers(qwen_pair, tmp_path_factory):
    log = tmp_path_factory.mktemp("workers") / "serve-router.log"
    yield from _start_router(qwen_pair, log, "--workers", "2", "--log-format", "json")


def test_two_workers_answer_concurrent_requests_and_metrics_count_them_all(two_workers):
    """``--workers 2``: concurrent requests are answered by both worker processes (their pids in the JSON run
    lines), each answer has its one log line, and ``/metrics`` (from whichever worker) counts all of them."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    questions = [f"What is {a} + {a}?" for a in range(2, 40)]

    def ask(question: str) -> tuple[str, str]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 16}
        r = httpx.post(f"{two_workers.url}/chat/completions", json=body, headers=headers, timeout=600)
        assert r.status_code == 200, r.text
        return question, r.json()["id"]

    def runs() -> list[dict]:
        lines = two_workers.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and '"event": "run"' in line]

    answered: list[tuple[str, str]] = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while len({line["pid"] for line in runs()}) < 2 and len(answered) < len(questions) - 4:
            answered += pool.map(ask, questions[len(answered) : len(answered) + 4])
    lines = {line["request_id"]: line for line in runs()}
    assert len({line["pid"] for line in lines.values()}) == 2, lines
    assert two_workers.pid not in {line["pid"] for line in lines.values()}
    assert {request_id for _, request_id in answered} == set(lines)
    assert all(line["status"] == 200 and line["steps"] > 0 for line in lines.values())
    for _ in range(4):  # whichever worker serves /metrics, it reports the sum over both
        text = httpx.get(f"{two_workers.root}/metrics", headers=headers, timeout=30).text
        assert _metric(text, "glimp_http_requests_total", endpoint="/v1/chat/completions", status="200") == len(
            answered
        )
        steps = _metric(text, "glimp_steps_total", model="small") + _metric(text, "glimp_steps_total", model="large")
        assert steps == sum(line["steps"] for line in lines.values())
    assert TOKEN not in two_workers.log.read_text()
