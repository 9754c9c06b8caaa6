"""The deploy bundle's ``langgraph.json`` under ``langgraph dev`` (in-memory) on the real llama.cpp pair: one port
serves LangGraph's API (a thread and a run of the router graph) and the OpenAI face (``/v1/chat/completions``,
its metrics at ``/glimp/metrics``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
TOKEN = "deploy-test-token"
QUESTION = "Tom has 3 boxes with 4 pencils in each box. How many pencils does he have?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(smol_pair, tmp_path) -> Iterator[str]:
    langgraph = Path(sys.executable).parent / "langgraph"
    if not langgraph.exists():
        pytest.skip("langgraph-cli[inmem] is not installed (extra 'studio')")
    small, large = smol_pair
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GLIMP_")},
        "GLIMP_SMALL_URL": small.base_url,
        "GLIMP_LARGE_URL": large.base_url,
        "GLIMP_SMALL_MODEL": small.model,
        "GLIMP_LARGE_MODEL": large.model,
        "GLIMP_MAX_STEP_TOKENS": "32",
        "GLIMP_MAX_THINKING_TOKENS": "96",
        "GLIMP_FINAL_MAX_TOKENS": "16",
        "GLIMP_ROUTER_TOKEN": TOKEN,
        "LANGSMITH_TRACING": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "BG_JOB_ISOLATED_LOOPS": "true",
    }
    log_path = tmp_path / "langgraph-dev.log"
    # langgraph dev resolves http.app against the working folder: run it from deploy/, as the README says
    command = [str(langgraph), "dev", "--config", "langgraph.json", "--no-browser", "--no-reload"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--port", str(port), "--host", "127.0.0.1"],
            cwd=DEPLOY,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_one_port_serves_langgraphs_api_and_the_openai_face(served):
    from langgraph_sdk import get_sync_client

    client = get_sync_client(url=served)
    assert client.assistants.search(graph_id="glimp_router"), "the graph is not registered"
    thread = client.threads.create()
    result = client.runs.wait(thread["thread_id"], "glimp_router", input={"question": QUESTION})
    steps = result["glimp_steps"]
    assert result["glimp_answer"].strip() and steps
    assert [s["index"] for s in steps] == list(range(len(steps)))
    state = client.threads.get_state(thread["thread_id"])  # checkpointed by the server
    assert [s["text"] for s in state["values"]["glimp_steps"]] == [s["text"] for s in steps]

    body = {"model": "glimp-router", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
    refused = httpx.post(f"{served}/v1/chat/completions", json=body, timeout=30)
    assert refused.status_code == 401
    answered = httpx.post(
        f"{served}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300
    )
    assert answered.status_code == 200, answered.text[:2000]
    completion = answered.json()
    assert completion["object"] == "chat.completion" and completion["choices"][0]["message"]["content"].strip()
    models = httpx.get(f"{served}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["glimp-router"]

    # the face's metrics sit at /glimp/metrics (LangGraph's server answers /metrics itself), behind the token
    assert httpx.get(f"{served}/glimp/metrics", timeout=30).status_code == 401
    scraped = httpx.get(f"{served}/glimp/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert scraped.status_code == 200, scraped.text[:2000]
    assert 'glimp_http_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in scraped.text
    assert "glimp_steps_total" in scraped.text
    assert "glimp_http_requests_total" not in httpx.get(f"{served}/metrics", timeout=30).text
