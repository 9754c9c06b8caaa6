"""``stream_mode="messages"`` (LangGraph Studio's chat view, the LangGraph server's "messages-tuple") against invoke.

That mode attaches a streaming callback handler, which switches a chat model to the streaming API unless the
model disables streaming. The fake servers here answer ``"stream": true`` the way vLLM's server does (Server-Sent
Events, the usage only when ``stream_options.include_usage`` is asked for, ``stop_reason`` on the last chunk), so
a model call that went through the streaming API would lose the statistics and the step ends. The tests check
that the mode gives the same run as ``invoke`` and still hands every model call's message to the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage

from glimp_graph import create_glimp_graph
from tests.unit.conftest import FakeServer, Reply, ScriptedModel, ScriptStep
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


def sse(reply: dict[str, Any], body: dict[str, Any]) -> tuple[int, str]:
    """``reply`` (a ``chat.completion``) as vLLM streams it: one chunk per piece, ``stop_reason`` at the end."""
    choice = reply["choices"][0]
    content = choice["message"]["content"]
    tokens = (choice.get("logprobs") or {}).get("content") or []
    base = {"id": reply["id"], "object": "chat.completion.chunk", "created": 0, "model": reply["model"]}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    pieces = [t["token"] for t in tokens] if "".join(t["token"] for t in tokens) == content else [content]
    for i, piece in enumerate(pieces):
        delta: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        if tokens and i < len(tokens):
            delta["logprobs"] = {"content": [tokens[i]]}
        chunks.append({**base, "choices": [delta]})
    last: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
    if "stop_reason" in choice:
        last["stop_reason"] = choice["stop_reason"]
    chunks.append({**base, "choices": [last]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": reply["usage"]})
    return 200, "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def speak_sse(server: FakeServer) -> None:
    """Make ``server`` answer streaming requests with Server-Sent Events, as vLLM does."""
    plain = server.handler

    def handler(body: dict[str, Any]) -> Reply:
        reply = plain(body)
        if body.get("stream") and isinstance(reply, dict):
            return sse(reply, body)
        return reply

    server.handler = handler


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
        model = scripted(STEPS, answer="51")
        speak_sse(fake_small)
        speak_sse(fake_large)
        return model

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
    # every model call's message reaches the stream, tagged with its node
    model_messages = [(m, meta) for m, meta in messages if meta.get("langgraph_node") in NODES]
    assert len(model_messages) == calls == len(fake_small.requests) + len(fake_large.requests)
    assert all(isinstance(m, AIMessage) and m.content for m, _ in model_messages)
    assert not any(b.get("stream") for b in fake_small.requests + fake_large.requests)
    assert [meta["langgraph_node"] for _, meta in model_messages].count("final_answer") == 1


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
    assert (
        sum(meta.get("langgraph_node") in NODES for _, meta in messages)
        == len(fake_small.requests) // 2 + len(fake_large.requests) // 2
    )
