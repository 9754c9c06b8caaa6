"""``stream_mode="messages"`` (LangGraph Studio's chat view, the LangGraph server's "messages-tuple") against invoke.

That mode attaches a streaming callback handler, which switches a chat model to the streaming API unless the
model disables streaming. The fake servers answer ``"stream": true`` the way the real ones do (Server-Sent
Events, the usage only when ``stream_options.include_usage`` is asked for, ``stop_reason`` on the last chunk,
llama.cpp's continuation without its prefix), so a step call that went through the streaming API would lose the
statistics and the step ends. The tests check that the mode gives the same run as ``invoke``, hands every model
call's message to the stream, and that only the final answer streams (token by token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage

from glimp_graph import create_glimp_graph
from tests.unit.conftest import FakeServer, ScriptedModel, ScriptStep
from tests.unit.conftest import endpoint as endpoint_of

Scripted = Callable[..., ScriptedModel]
QUESTION = "What is 17 * 3?"

# small, large, small; vLLM says the third step ended at the end of sequence (stop_reason None), llama.cpp
# cannot tell, so its run goes on to a fourth probe that ends the turn
STEPS = [
    ScriptStep(0.2, "First, write 17 * 3 as 10 * 3 + 7 * 3.", tokens=12),
    ScriptStep(2.0, "That is 30 + 21.", tokens=7),
    ScriptStep(0.2, "So 17 * 3 = 51.", tokens=6, eos=True),
    ScriptStep(0.0, "", probe_eos=True),
]
NODES = {"probe", "small_step", "large_step", "final_answer"}


def build(small: FakeServer, large: FakeServer) -> Any:
    return create_glimp_graph(endpoint_of(small), endpoint_of(large), config={"tau": 1.0})


def comparable(out: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """The run without its wall times: steps, statistics, answer."""
    steps = [s.model_dump(exclude={"seconds", "probe_seconds"}) for s in out["glimp_steps"]]
    stats = out["glimp_stats"].model_dump(exclude={"probe_seconds", "final_seconds", "wall_seconds"})
    return steps, stats, out["glimp_answer"]


def split(chunks: list[tuple[str, Any]]) -> tuple[list[tuple[BaseMessage, dict[str, Any]]], dict[str, Any]]:
    """``stream_mode=["messages", "values"]`` chunks as (message, metadata) pairs and the last values."""
    messages = [chunk for mode, chunk in chunks if mode == "messages"]
    values = [chunk for mode, chunk in chunks if mode == "values"]
    return messages, values[-1]


@pytest.fixture
def run(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> Callable[[str], Any]:
    def start(owned_by: str) -> Any:
        fake_small.owned_by = fake_large.owned_by = owned_by
        return scripted(STEPS, answer="51")

    return start


@pytest.mark.parametrize("owned_by", ["vllm", "llamacpp"])
def test_messages_mode_gives_the_same_run_as_invoke(
    fake_small: FakeServer, fake_large: FakeServer, run: Callable[[str], Any], owned_by: str
) -> None:
    model = run(owned_by)
    graph = build(fake_small, fake_large)
    expected = graph.invoke({"question": QUESTION})
    calls = len(fake_small.requests) + len(fake_large.requests)
    fake_small.reset()
    fake_large.reset()

    messages, values = split(list(graph.stream({"question": QUESTION}, stream_mode=["messages", "values"])))

    assert model.errors == [] and fake_small.errors == [] and fake_large.errors == []
    assert comparable(values) == comparable(expected)
    steps, stats, _ = comparable(values)
    vllm = owned_by == "vllm"
    assert [s["end"] for s in steps] == (["delimiter", "delimiter", "eos"] if vllm else ["stop"] * 3 + ["eos"])
    assert stats["stop_reason"] == "end_of_sequence"
    assert stats["small_tokens"] == (3 if vllm else 4) + 12 + 6  # the probes, two small steps (probe token reused)
    assert stats["large_tokens"] == 7 + 2  # one large step, the final answer
    # every model call's message reaches the stream, tagged with its node; the final answer token by token
    model_messages = [(m, meta) for m, meta in messages if meta.get("langgraph_node") in NODES]
    final = [m for m, meta in model_messages if meta["langgraph_node"] == "final_answer"]
    others = [m for m, meta in model_messages if meta["langgraph_node"] != "final_answer"]
    assert len(others) + 1 == calls == len(fake_small.requests) + len(fake_large.requests)
    assert all(isinstance(m, AIMessage) and m.content for m in others)
    assert "".join(m.content for m in final if isinstance(m.content, str)) == " 51"
    # only the final answer's call streams from the server
    assert [bool(b.get("stream")) for b in fake_small.requests + fake_large.requests].count(True) == 1
    assert fake_large.requests[-1]["stream"] is True


def test_async_messages_mode_gives_the_same_run_as_ainvoke(
    fake_small: FakeServer, fake_large: FakeServer, run: Callable[[str], Any]
) -> None:
    run("vllm")
    graph = build(fake_small, fake_large)

    async def both() -> tuple[dict[str, Any], list[tuple[str, Any]]]:
        expected = await graph.ainvoke({"question": QUESTION})
        chunks = [c async for c in graph.astream({"question": QUESTION}, stream_mode=["messages", "values"])]
        return expected, chunks

    expected, chunks = asyncio.run(both())
    messages, values = split(chunks)
    assert comparable(values) == comparable(expected)
    assert [s.end for s in values["glimp_steps"]] == ["delimiter", "delimiter", "eos"]
    calls = (len(fake_small.requests) + len(fake_large.requests)) // 2  # each run made the same calls
    nodes = [meta.get("langgraph_node") for _, meta in messages if meta.get("langgraph_node") in NODES]
    assert len([n for n in nodes if n != "final_answer"]) + 1 == calls
    assert "".join(m.content for m, meta in messages if meta.get("langgraph_node") == "final_answer") == " 51"
