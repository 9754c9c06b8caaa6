"""Every example runs for real (one command each) against the SmolLM2 servers, passed through GLIMP_* variables."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.sockets import stop_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FAST = ["--max-step-tokens", "32", "--max-thinking-tokens", "96", "--max-steps", "4", "--final-max-tokens", "16"]


def example_env(smol_pair) -> dict[str, str]:
    small, large = smol_pair
    return {
        **os.environ,
        "GLIMP_SMALL_URL": small.base_url,
        "GLIMP_LARGE_URL": large.base_url,
        "GLIMP_SMALL_MODEL": small.model,
        "GLIMP_LARGE_MODEL": large.model,
    }


def run_example(name: str, *args: str, env: dict[str, str], timeout: float = 180) -> dict:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_invoke_example(smol_pair):
    out = run_example("invoke.py", "What is 17 * 3?", *FAST, env=example_env(smol_pair))
    assert out["answer"]
    assert out["steps"] and [s["index"] for s in out["steps"]] == list(range(len(out["steps"])))
    assert all(s["model"] in ("small", "large") for s in out["steps"])
    assert out["stats"]["steps"] == len(out["steps"])


def test_subgraph_example(smol_pair):
    out = run_example("subgraph.py", "What is 12 + 30?", *FAST, env=example_env(smol_pair))
    chat = out["chat_host"]
    # the router, added with no glue, appended its answer to the host's messages
    assert [t for t, _ in chat["messages"]] == ["human", "ai"]
    assert chat["messages"][1][1] and chat["reasoning"]
    assert chat["plan"].startswith("reason in short steps") and chat["verdict"]
    task = out["task_host"]
    assert task["task"] == "What is 12 + 30?" and task["solution"] and task["steps_used"] >= 1 and task["verdict"]


def test_agent_with_tools_example(smol_pair):
    """create_agent with ChatGlimpRouter: the model's own (forced) calculator call, really run, then an answer."""
    question = "A shop sells 23 boxes of 17 pens. How many pens is that?"
    # the final answer's budget must hold the call's JSON (about 25 tokens)
    budgets = [*FAST[:-1], "64"]
    out = run_example("agent_with_tools.py", question, *budgets, env=example_env(smol_pair))
    assert [t for t, _ in out["messages"]] == ["human", "ai", "tool", "ai"], out
    (call,) = out["tool_calls"]
    assert call["name"] == "calculator" and set(call["args"]) == {"expression"}
    # the tool result is the calculator's on the expression the model wrote (SmolLM2 may write nonsense)
    sys.path.insert(0, str(EXAMPLES))
    try:
        from agent_with_tools import calculator
    finally:
        sys.path.remove(str(EXAMPLES))
    assert out["tool_results"] == [calculator.invoke(call["args"])]
    # both turns are GlimpRouter runs: reasoning steps, and tokens of both models
    assert len(out["turns"]) == 2 and all(turn["steps"] for turn in out["turns"])
    assert all(turn["usage"]["input_token_details"]["small"] > 0 for turn in out["turns"])
    assert out["answer"] == out["messages"][-1][1]


def test_durable_example_runs_to_the_end(smol_pair, tmp_path):
    db = tmp_path / "ck.sqlite"
    args = ["--thread-id", "t1", "--db", str(db), *FAST]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "durable.py"), *args],
        env=example_env(smol_pair),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0] == {"event": "start", "resumed": False, "steps_done": 0, "thread_id": "t1"}
    assert events[-1]["event"] == "result" and events[-1]["answer"]
    assert db.exists() and db.stat().st_size > 0


def test_studio_graph_module_builds_from_env(smol_pair):
    code = "import graph; print(type(graph.graph).__name__, graph.graph.name, sorted(graph.graph.nodes))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=example_env(smol_pair),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES / "studio",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("CompiledStateGraph glimp_router")
    config = json.loads((EXAMPLES / "studio" / "langgraph.json").read_text())
    assert config["graphs"] == {"glimp_router": "./graph.py:graph"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_studio_langgraph_dev_serves_the_graph(smol_pair, tmp_path):
    langgraph = Path(sys.executable).parent / "langgraph"
    if not langgraph.exists():
        pytest.skip("langgraph-cli[inmem] is not installed (extra 'studio')")
    from langgraph_sdk import get_sync_client

    port = _free_port()
    env = {
        **example_env(smol_pair),
        "GLIMP_MAX_STEP_TOKENS": "32",
        "GLIMP_MAX_THINKING_TOKENS": "96",
        "GLIMP_FINAL_MAX_TOKENS": "16",
        "LANGSMITH_TRACING": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "BG_JOB_ISOLATED_LOOPS": "true",
    }
    log = (tmp_path / "langgraph-dev.log").open("wb")
    proc = subprocess.Popen(
        [str(langgraph), "dev", "--no-browser", "--no-reload", "--port", str(port), "--host", "127.0.0.1"],
        cwd=EXAMPLES / "studio",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "langgraph-dev.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "langgraph-dev.log").read_text()[-3000:]
            time.sleep(1)
        client = get_sync_client(url=url)
        assistants = client.assistants.search(graph_id="glimp_router")
        assert assistants, "the graph is not registered"
        result = client.runs.wait(None, "glimp_router", input={"question": "What is 2 + 3?"})
        assert result["glimp_answer"], result
        assert result["glimp_steps"] and result["glimp_stats"]["steps"] == len(result["glimp_steps"])
        # assistants carry their own threshold (the runtime context) on the one deployed graph
        routed = {}
        for name, tau in (("all-small", 100.0), ("all-large", -100.0)):  # entropies lie in [0, ln 20]
            assistant = client.assistants.create("glimp_router", context={"tau": tau}, name=name)
            out = client.runs.wait(None, assistant["assistant_id"], input={"question": "What is 2 + 3?"})
            routed[name] = {step["model"] for step in out["glimp_steps"]}
            assert out["glimp_stats"]["tau"] == tau, out["glimp_stats"]
        assert routed == {"all-small": {"small"}, "all-large": {"large"}}
    finally:
        stop_process(proc)
        log.close()
