"""Server faults with real llama.cpp servers: the small server dies mid-run; the large one dies mid-run and comes
back, and the run resumes from its checkpoint."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.errors import EndpointUnavailableError
from glimp_graph.serving import LlamaServer, ensure_llama_server, fetch_model

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
    binary = ensure_llama_server(cache)
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


def test_large_server_dies_after_two_steps_and_the_resumed_run_repeats_none(smol_parts, recorder):
    """tau=-inf: every step is the large model's. It dies once two steps are done; the run fails naming it, the
    two steps are in the checkpoint; it comes back on the same port and the same thread resumes: every step is
    written once, the two saved ones are neither written nor probed again."""
    with _start(smol_parts) as small, _start(smol_parts) as large:
        graph = create_glimp_graph(
            _endpoint(small), _endpoint(large), config={**SMOL, "tau": -float("inf")}, checkpointer=InMemorySaver()
        )
        config = {"configurable": {"thread_id": "large-dies"}}
        saved = []
        with pytest.raises(
            EndpointUnavailableError, match=re.escape(f"large model at {large.base_url}: cannot connect")
        ):
            for values in graph.stream({"question": QUESTION}, config, stream_mode="values"):
                if len(values.get("glimp_steps") or []) == 2 and not saved:
                    saved = list(values["glimp_steps"])  # the values after the superstep that wrote step 1
                    large.stop()
        assert [s.index for s in saved] == [0, 1] and {s.model for s in saved} == {"large"}
        state = graph.get_state(config)
        assert state.next == ("large_step",)  # the run waits at step 2, which failed
        assert state.values["glimp_steps"] == saved

        with _start(smol_parts, port=large.port):
            out = graph.invoke(None, {**config, "callbacks": [recorder]})  # resume: same thread, no new input
        steps = out["glimp_steps"]
        assert [s.index for s in steps] == list(range(len(steps))) and len(steps) >= 3
        assert steps[:2] == saved  # the steps completed before the crash, unchanged
        assert {s.model for s in steps} == {"large"} and out["glimp_answer"]
        names = [call["name"] for call in recorder.calls]
        assert names.count("large_step") == len(steps) - 2  # steps 2.. only: none of the saved ones again
        assert names.count("probe") == len(steps) - 3  # step 2's probe was saved too
        assert names[-1] == "final_answer"
