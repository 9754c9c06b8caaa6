"""``glimp serve-router`` for real: uvicorn in a subprocess on 127.0.0.1 over the SmolLM2 servers, called with the
``openai`` client and LangChain's ``ChatOpenAI``, non-streaming and streaming."""

from __future__ import annotations

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
from langchain_openai import ChatOpenAI

from tests.integration.sockets import listeners, listeners_of, owners, stop_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "router-token-for-the-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Router(NamedTuple):
    """The running ``glimp serve-router``: its base URL and process id."""

    url: str
    pid: int


@pytest.fixture(scope="module")
def router(smol_pair, tmp_path_factory):
    small, large = smol_pair
    port = _free_port()
    log_path = tmp_path_factory.mktemp("router") / "serve-router.log"
    command = [
        sys.executable,
        "-c",
        "from glimp_graph.cli.serve_router import serve_router; serve_router()",
        "--small-url",
        small.base_url,
        "--large-url",
        large.base_url,
        "--small-model",
        small.model,
        "--large-model",
        large.model,
        "--port",
        str(port),
        "--max-step-tokens",
        "32",
        "--max-thinking-tokens",
        "96",
        "--max-steps",
        "3",
        "--final-max-tokens",
        "16",
        "--max-tokens-limit",
        "64",
    ]
    env = {**os.environ, "GLIMP_ROUTER_TOKEN": TOKEN}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield Router(url, proc.pid)
    finally:
        stop_process(proc)


@pytest.fixture
def router_url(router):
    return router.url


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_router_listens_on_loopback_only(router):
    """Started without ``--host``, uvicorn's socket is on 127.0.0.1 and nowhere else (read from /proc)."""
    port = urlsplit(router.url).port
    on_port = [listener for listener in listeners() if listener.port == port]
    assert [listener.address for listener in on_port] == ["127.0.0.1"], on_port  # no 0.0.0.0 or :: listener
    assert owners(on_port[0].inode) == {router.pid}
    assert {listener.address for listener in listeners_of(router.pid)} == {"127.0.0.1"}, listeners_of(router.pid)


def test_openai_client_non_streaming_and_streaming(router_url):
    client = openai.OpenAI(base_url=router_url, api_key=TOKEN, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["glimp-router"]
    messages = [{"role": "user", "content": "What is 17 * 3?"}]
    done = client.chat.completions.create(model="glimp-router", messages=messages, max_tokens=12)
    answer = done.choices[0].message
    assert answer.role == "assistant" and answer.content
    extra = done.model_extra or {}
    steps = extra["glimp"]["steps"]
    assert steps and [s["index"] for s in steps] == list(range(len(steps)))
    assert answer.model_extra["reasoning_content"] == "\n\n".join(s["text"] for s in steps)
    assert extra["glimp"]["stats"]["final_tokens"] <= 12

    stream = client.chat.completions.create(model="glimp-router", messages=messages, stream=True)
    reasoning, content, finish = [], [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            assert not content, "reasoning comes before the answer"
            reasoning.append(delta.model_extra["reasoning_content"])
        if delta.content:
            content.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning and "".join(content) and finish == "stop"

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=router_url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="1000"):
        client.chat.completions.create(model="glimp-router", messages=messages, max_tokens=1000)


def test_langchain_chat_openai(router_url):
    llm = ChatOpenAI(base_url=router_url, api_key=TOKEN, model="glimp-router", max_retries=0, timeout=120)
    message = llm.invoke("What is 2 + 2?")
    assert isinstance(message.content, str) and message.content
    chunks = list(llm.stream("What is 3 + 4?"))
    assert "".join(str(c.content) for c in chunks)
