"""Server faults with real llama.cpp servers: the small server dies mid-run, the large one is down and comes back."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.errors import EndpointUnavailableError
from glimp_graph.serving import LlamaServer, build_llama_server, fetch_model, find_llama_server

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 boxes with 4 pencils in each box. He gives away 5 pencils. How many pencils does he have left?"
SMOL = {
    "max_step_tokens": 40,
    "max_thinking_tokens": 160,
    "max_steps": 6,
    "final_max_tokens": 16,
    "stop_on_repeat": False,
}


@pytest.fixture(scope="module")
def smol_parts() -> tuple[Path, Path, Path | None]:
    cache = Path(os.environ["GLIMP_CACHE_DIR"]) if os.environ.get("GLIMP_CACHE_DIR") else None
    binary = find_llama_server(cache) or build_llama_server(cache)
    return binary, fetch_model("smollm2-135m", cache), cache


def _start(parts: tuple[Path, Path, Path | None], port: int | None = None) -> LlamaServer:
    binary, model, cache = parts
    return LlamaServer.start(model, alias="smollm2-135m", binary=binary, port=port, ctx_size=2048, cache_dir=cache)


def _endpoint(server: LlamaServer | str) -> Endpoint:
    url = server if isinstance(server, str) else server.base_url
    return Endpoint(base_url=url, model="smollm2-135m", temperature=0.0, max_retries=0, timeout=300)


def test_small_server_dies_mid_run_and_the_large_model_finishes(smol_parts):
    with _start(smol_parts) as small, _start(smol_parts) as large:
        graph = create_glimp_graph(_endpoint(small), _endpoint(large), config={**SMOL, "tau": float("inf")})
        result = None
        for mode, chunk in graph.stream({"question": QUESTION}, stream_mode=["custom", "values"]):
            if mode == "custom" and chunk["type"] == "step" and chunk["index"] == 0:
                small.stop()  # the small server dies after the first step
            elif mode == "values":
                result = chunk
        steps, stats = result["glimp_steps"], result["glimp_stats"]
        assert steps[0].model == "small" and len(steps) >= 2
        assert all(s.model == "large" and "small model unavailable" in (s.note or "") for s in steps[1:])
        assert stats.small_failure and small.base_url in stats.small_failure
        assert result["glimp_answer"]


def test_large_server_down_is_named_and_the_run_resumes_when_it_is_back(smol_parts):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    large_url = f"http://127.0.0.1:{port}/v1"
    with _start(smol_parts) as small:
        graph = create_glimp_graph(
            _endpoint(small), _endpoint(large_url), config={**SMOL, "tau": -float("inf")}, checkpointer=InMemorySaver()
        )
        config = {"configurable": {"thread_id": "large-down"}}
        with pytest.raises(EndpointUnavailableError, match=re.escape(f"large model at {large_url}: cannot connect")):
            graph.invoke({"question": QUESTION}, config)
        assert graph.get_state(config).next == ("large_step",)  # the run waits at the step that failed
        with _start(smol_parts, port=port):
            out = graph.invoke(None, config)  # resume: same thread, no new input
        assert [s.index for s in out["glimp_steps"]] == list(range(len(out["glimp_steps"])))
        assert {s.model for s in out["glimp_steps"]} == {"large"} and out["glimp_answer"]
