"""``stream_mode="messages"`` (LangGraph Studio's chat view, the LangGraph server's "messages-tuple") on real
llama.cpp servers: the same run as ``invoke`` (steps, step ends, stop reason, token statistics), and every model
call's message on the stream."""

from __future__ import annotations

import math
from typing import Any

import pytest

from glimp_graph import create_glimp_graph

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 boxes with 4 pencils in each box. He gives away 5 pencils. How many pencils does he have left?"
SMOL = {"max_step_tokens": 48, "max_thinking_tokens": 192, "max_steps": 6, "final_max_tokens": 32}
NODES = {"probe", "small_step", "large_step", "final_answer"}


def comparable(out: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """A run without its wall times and entropies (compared apart, with a tolerance): steps, statistics, answer."""
    volatile = {"seconds", "probe_seconds", "h_init", "score", "signals"}
    steps = [s.model_dump(exclude=volatile) for s in out["glimp_steps"]]
    stats = out["glimp_stats"].model_dump(exclude={"probe_seconds", "final_seconds", "wall_seconds"})
    return steps, stats, out["glimp_answer"]


def stream_run(graph: Any, recorder: Any) -> tuple[list[tuple[Any, dict[str, Any]]], dict[str, Any]]:
    """``graph.stream`` in the messages mode (and values, for the final state): (messages, last values)."""
    chunks = list(
        graph.stream({"question": QUESTION}, config={"callbacks": [recorder]}, stream_mode=["messages", "values"])
    )
    return [c for mode, c in chunks if mode == "messages"], [c for mode, c in chunks if mode == "values"][-1]


@pytest.mark.parametrize("tau", [math.inf, -math.inf], ids=["small", "large"])
def test_messages_mode_gives_the_same_run_as_invoke(smol_pair, recorder, tau):
    graph = create_glimp_graph(*smol_pair, config={**SMOL, "tau": tau})
    graph.invoke({"question": QUESTION})  # warm-up: both compared runs then find the same prompt cache
    expected = graph.invoke({"question": QUESTION})
    messages, out = stream_run(graph, recorder)

    assert comparable(out) == comparable(expected)
    assert [s.h_init for s in out["glimp_steps"]] == pytest.approx(
        [s.h_init for s in expected["glimp_steps"]], abs=1e-3
    )
    stats = out["glimp_stats"]
    assert stats.steps == len(out["glimp_steps"]) > 0
    assert stats.thinking_tokens == sum(s.tokens for s in out["glimp_steps"]) > 0
    assert stats.final_tokens > 0
    # every model call's whole message reaches the stream, under its node
    on_stream = [(m, meta) for m, meta in messages if meta.get("langgraph_node") in NODES]
    # the final answer streams token by token: its chunks add up to the answer
    others = [meta["langgraph_node"] for _, meta in on_stream if meta["langgraph_node"] != "final_answer"]
    final = [m.content for m, meta in on_stream if meta["langgraph_node"] == "final_answer"]
    assert [*others, "final_answer"] == [call["name"] for call in recorder.calls]
    assert "".join(final).strip() == out["glimp_answer"]
