"""The router graph end to end against two fake servers (small and large) playing a scripted model."""

from __future__ import annotations

import asyncio
import math
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from typing_extensions import TypedDict

from glimp_graph import InputError, RunStats, Step, create_glimp_graph
from tests.unit.conftest import (
    DELIMITER,
    FakeServer,
    ScriptedModel,
    ScriptStep,
    chat_response,
    is_probe,
    max_tokens_of,
    prefix_of,
)
from tests.unit.conftest import endpoint as endpoint_of

Scripted = Callable[..., ScriptedModel]
QUESTION = "What is 17 * 3?"
SNAPSHOT = Path(__file__).with_name("graph.mmd")

# small (0.2), large (2.0), small (0.2); the last step gives the answer
THREE = [
    ScriptStep(0.2, "First, write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(2.0, "That is 30 + 21."),
    ScriptStep(0.2, "So the answer is \\boxed{51}."),
]


def build(small: FakeServer, large: FakeServer, **config: Any) -> Any:
    return create_glimp_graph(endpoint_of(small), endpoint_of(large), config={"tau": 1.0, **config})


def texts(steps: list[Step]) -> list[str]:
    return [s.text for s in steps]


def models(steps: list[Step]) -> list[str]:
    return [s.model for s in steps]


def kind(body: dict[str, Any]) -> str:
    """What a recorded request is: probe, step or final."""
    if is_probe(body):
        return "probe"
    return "step" if body.get("stop") else "final"


def no_errors(*servers: FakeServer, model: ScriptedModel | None = None) -> None:
    for server in servers:
        assert server.errors == []
    if model is not None:
        assert model.errors == []


# --------------------------------------------------------------------------- routing


def test_routes_each_step_by_its_entropy(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    model = scripted(THREE, answer="51")
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    no_errors(fake_small, fake_large, model=model)

    steps = out["glimp_steps"]
    assert models(steps) == ["small", "large", "small"]
    assert texts(steps) == [s.text for s in THREE]
    assert [s.index for s in steps] == [0, 1, 2]
    for step, scripted_step in zip(steps, THREE, strict=True):
        assert step.h_init == pytest.approx(scripted_step.h, abs=1e-6)
        assert step.tau == 1.0
        assert step.probe_token == scripted_step.probe_token
    assert out["glimp_answer"] == "51"

    stats: RunStats = out["glimp_stats"]
    assert stats.large_share == pytest.approx(1 / 3)
    assert (stats.steps, stats.small_steps, stats.large_steps, stats.probes) == (3, 2, 1, 3)
    assert stats.stop_reason == "answer_marker"
    assert stats.tau == 1.0
    assert stats.estimator == "renormalized"
    assert stats.final_tokens == 2
    # small: 2 reused probes + 2 continuations of 3 tokens + 1 probe for the large step
    assert stats.small_tokens == 2 * 3 + 3
    assert stats.large_tokens == 3 + 2
    assert stats.thinking_tokens == 4 + 3 + 4
    assert set(out) - {"messages"} == {
        "glimp_answer",
        "glimp_steps",
        "glimp_stats",
        "glimp_tool_calls",
        "glimp_invalid_tool_calls",
    }
    assert out["glimp_tool_calls"] == out["glimp_invalid_tool_calls"] == []
    assert not out.get("messages")  # no AI message when the question did not come from messages


def test_tau_at_the_entropy_routes_small(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted([ScriptStep(0.0, "Certain \\boxed{1}.")])
    out = build(fake_small, fake_large, tau=0.0).invoke({"question": QUESTION})
    assert models(out["glimp_steps"]) == ["small"]


@pytest.mark.parametrize(("tau", "expected"), [(math.inf, "small"), (-math.inf, "large")])
def test_infinite_tau_sends_every_step_one_way(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, tau: float, expected: str
) -> None:
    model = scripted(THREE)
    out = build(fake_small, fake_large, tau=tau).invoke({"question": QUESTION})
    no_errors(fake_small, fake_large, model=model)
    assert models(out["glimp_steps"]) == [expected] * 3
    assert texts(out["glimp_steps"]) == [s.text for s in THREE]
    assert out["glimp_stats"].large_share == (1.0 if expected == "large" else 0.0)
    assert all(s.tau == tau for s in out["glimp_steps"])
    # the small model probes every step either way
    assert [kind(b) for b in fake_small.requests].count("probe") == 3


@pytest.mark.parametrize(("override", "expected"), [(math.inf, "small"), (-math.inf, "large"), (5, "small")])
def test_per_run_tau_overrides_the_config(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, override: float, expected: str
) -> None:
    scripted(THREE)
    graph = build(fake_small, fake_large, tau=1.0)
    out = graph.invoke({"question": QUESTION, "glimp_tau": override})
    assert models(out["glimp_steps"]) == [expected] * 3
    assert out["glimp_stats"].tau == float(override)
    # the override is per run: the next run uses the config's tau again
    out = graph.invoke({"question": QUESTION})
    assert models(out["glimp_steps"]) == ["small", "large", "small"]


# --------------------------------------------------------------------------- the requests


@pytest.mark.parametrize("tau", [1.0, math.inf])
def test_final_answer_always_comes_from_the_large_server(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, tau: float
) -> None:
    scripted(THREE)
    out = build(fake_small, fake_large, tau=tau).invoke({"question": QUESTION})
    assert out["glimp_answer"] == "42"
    assert "final" not in [kind(b) for b in fake_small.requests]
    assert [kind(b) for b in fake_large.requests][-1] == "final"
    assert [kind(b) for b in fake_large.requests].count("final") == 1


def test_the_exact_requests(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    config = {"top_k": 10, "max_step_tokens": 8, "max_thinking_tokens": 100, "final_max_tokens": 33}
    build(fake_small, fake_large, **config).invoke({"question": QUESTION})
    s0, s1, s2 = (s.text for s in THREE)
    t0, t2 = THREE[0].probe_token, THREE[2].probe_token

    small, large = fake_small.requests, fake_large.requests
    assert [kind(b) for b in small] == ["probe", "step", "probe", "probe", "step"]
    assert [kind(b) for b in large] == ["step", "final"]

    # every request carries the same conversation: system + the user's question
    for body in small + large:
        assert body["model"] == "fake"
        assert body["messages"][0]["role"] == "system"
        assert body["messages"][1]["role"] == "user"
        assert QUESTION in body["messages"][1]["content"]
        # only the final answer streams (its text goes out token by token)
        assert bool(body.get("stream")) == (kind(body) == "final")

    probes = [b for b in small if kind(b) == "probe"]
    for body in probes:
        assert max_tokens_of(body) == 1
        assert body["temperature"] == 0
        assert body["logprobs"] is True
        assert body["top_logprobs"] == 10
        assert "stop" not in body
    assert [prefix_of(b) for b in probes] == ["", s0 + DELIMITER, s0 + DELIMITER + s1 + DELIMITER]
    # the first probe opens a fresh assistant turn, the next ones continue the trace
    assert len(probes[0]["messages"]) == 2
    assert "continue_final_message" not in probes[0]
    for body in probes[1:]:
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False

    small_steps = [b for b in small if kind(b) == "step"]
    assert [prefix_of(b) for b in small_steps] == [t0, s0 + DELIMITER + s1 + DELIMITER + t2]
    for body in small_steps:
        assert body["stop"] == [DELIMITER]
        assert max_tokens_of(body) == 8 - 1  # continues after the probe token
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
        assert body["messages"][-1]["role"] == "assistant"

    large_step, final = large
    assert large_step["stop"] == [DELIMITER]
    assert max_tokens_of(large_step) == 8
    assert prefix_of(large_step) == s0 + DELIMITER  # the trace, without the probe token
    assert large_step["continue_final_message"] is True
    assert large_step["add_generation_prompt"] is False
    assert "logprobs" not in large_step

    assert max_tokens_of(final) == 33
    assert "stop" not in final
    assert prefix_of(final) == "" + DELIMITER.join([s0, s1, s2]) + "\n\nFinal answer: "
    assert final["continue_final_message"] is True
    assert final["add_generation_prompt"] is False


def test_step_requests_are_capped_by_the_remaining_budget(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    steps = [
        ScriptStep(0.2, "Alpha beta gamma.", tokens=3),  # small: 1 + 3 = 4 tokens
        ScriptStep(2.0, "Delta epsilon.", tokens=6),  # large: 6 tokens -> 10 spent
        ScriptStep(0.2, "Zeta eta.", tokens=3),  # small: 2 left -> asks 1 -> 1 + 1 = 2 tokens
        ScriptStep(0.2, "Never written."),
    ]
    scripted(steps)
    out = build(fake_small, fake_large, max_step_tokens=8, max_thinking_tokens=12).invoke({"question": QUESTION})
    small_steps = [b for b in fake_small.requests if kind(b) == "step"]
    large_steps = [b for b in fake_large.requests if kind(b) == "step"]
    assert [max_tokens_of(b) for b in small_steps] == [7, 1]
    assert [max_tokens_of(b) for b in large_steps] == [8]
    assert [s.tokens for s in out["glimp_steps"]] == [4, 6, 2]
    assert out["glimp_stats"].stop_reason == "token_budget"
    assert out["glimp_stats"].thinking_tokens == 12


def test_last_budget_token_is_the_probe_token(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    steps = [ScriptStep(0.2, "One two three.", tokens=3), ScriptStep(0.2, "Four five.")]
    scripted(steps)
    out = build(fake_small, fake_large, max_step_tokens=5, max_thinking_tokens=5).invoke({"question": QUESTION})
    # step 0 spends 4 tokens; step 1 has 1 left: the probe token is the whole step, no continuation is asked
    assert [kind(b) for b in fake_small.requests] == ["probe", "step", "probe"]
    assert texts(out["glimp_steps"]) == ["One two three.", "Four"]
    assert out["glimp_steps"][1].end == "length"
    assert out["glimp_stats"].stop_reason == "token_budget"


def test_small_step_reuses_the_probe_token(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted([ScriptStep(0.1, "Compute \\boxed{51}.", token="Comp")])
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    (step,) = out["glimp_steps"]
    assert step.model == "small"
    assert step.probe_token == "Comp"
    assert step.text.startswith("Comp")
    assert step.text == "Compute \\boxed{51}."
    assert step.tokens == 1 + 3
    assert [kind(b) for b in fake_small.requests] == ["probe", "step"]
    assert prefix_of(fake_small.requests[1]) == "Comp"
    assert [kind(b) for b in fake_large.requests] == ["final"]


def test_probe_token_with_the_delimiter_ends_the_step(fake_small: FakeServer, fake_large: FakeServer) -> None:
    def small(body: dict[str, Any]) -> dict[str, Any]:
        assert is_probe(body)
        return chat_response("Done.\n\n", finish_reason="length", top_logprobs=[("Done.\n\n", 0.0)], stop_reason=None)

    fake_small.handler = small
    fake_large.handler = lambda body: chat_response("ok", stop_reason=None)
    out = build(fake_small, fake_large, max_steps=1).invoke({"question": QUESTION})
    assert texts(out["glimp_steps"]) == ["Done."]
    assert out["glimp_steps"][0].end == "delimiter"
    assert [kind(b) for b in fake_small.requests] == ["probe"]


def test_without_probe_reuse_the_small_model_writes_the_whole_step(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted([ScriptStep(0.1, "All \\boxed{1}.")])
    out = build(fake_small, fake_large, reuse_probe_token=False).invoke({"question": QUESTION})
    assert texts(out["glimp_steps"]) == ["All \\boxed{1}."]
    step_request = fake_small.requests[1]
    assert prefix_of(step_request) == ""
    assert max_tokens_of(step_request) == 512


# --------------------------------------------------------------------------- server kinds


@pytest.mark.parametrize("tau", [1.0, math.inf, -math.inf])
def test_vllm_and_llamacpp_give_the_same_trace(fake_small: FakeServer, fake_large: FakeServer, tau: float) -> None:
    results = []
    for owned_by in ("vllm", "llamacpp"):
        fake_small.owned_by = fake_large.owned_by = owned_by
        fake_small.reset()
        fake_large.reset()
        model = ScriptedModel(THREE, answer="51").install(fake_small, fake_large)
        out = build(fake_small, fake_large, tau=tau).invoke({"question": QUESTION})
        no_errors(fake_small, fake_large, model=model)
        results.append(out)
        # the llama.cpp replies really did include the prefix, and the router removed it
        continued = [b for b in fake_small.requests + fake_large.requests if prefix_of(b)]
        assert continued
    vllm, llamacpp = results
    assert texts(vllm["glimp_steps"]) == texts(llamacpp["glimp_steps"]) == [s.text for s in THREE]
    assert models(vllm["glimp_steps"]) == models(llamacpp["glimp_steps"])
    assert DELIMITER.join(texts(llamacpp["glimp_steps"])) == DELIMITER.join(s.text for s in THREE)
    assert vllm["glimp_answer"] == llamacpp["glimp_answer"] == "51"


def test_llamacpp_step_ends_are_ambiguous(fake_small: FakeServer, fake_large: FakeServer) -> None:
    fake_small.owned_by = fake_large.owned_by = "llamacpp"
    ScriptedModel(THREE).install(fake_small, fake_large)
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    assert [s.end for s in out["glimp_steps"]] == ["stop", "stop", "stop"]


# --------------------------------------------------------------------------- why the reasoning stops


def test_stops_at_the_answer_marker(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted([*THREE, ScriptStep(0.2, "Never written.")])
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    assert len(out["glimp_steps"]) == 3
    assert out["glimp_steps"][-1].text == THREE[-1].text  # kept whole
    assert out["glimp_stats"].stop_reason == "answer_marker"


@pytest.mark.parametrize("route", ["small", "large"])
def test_stops_at_the_end_of_thinking(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, route: str
) -> None:
    h = 0.2 if route == "small" else 2.0
    steps = [ScriptStep(0.2, "Okay, 17 * 3."), ScriptStep(h, "It is 51.</think>The answer is 51.")]
    scripted(steps, answer="**51**", think_prefix="<think>\n")
    out = build(fake_small, fake_large, prompt="r1").invoke({"question": QUESTION})
    assert texts(out["glimp_steps"]) == ["Okay, 17 * 3.", "It is 51."]
    assert models(out["glimp_steps"]) == ["small", route]
    assert out["glimp_stats"].stop_reason == "think_end"
    assert out["glimp_answer"] == "**51**"
    final = fake_large.requests[-1]
    assert kind(final) == "final"
    assert prefix_of(final) == "<think>\nOkay, 17 * 3.\n\nIt is 51.\n</think>\n\n"
    # the R1 preset has no system message
    assert final["messages"][0]["role"] == "user"
    # every probe continues the <think> prefix
    assert prefix_of(fake_small.requests[0]) == "<think>\n"


def test_end_of_sequence_at_the_probe(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted([ScriptStep(0.2, "Step one."), ScriptStep(0.0, "", probe_eos=True)])
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    assert out["glimp_stats"].stop_reason == "end_of_sequence"
    assert texts(out["glimp_steps"]) == ["Step one.", ""]
    assert out["glimp_steps"][-1].model == "small"
    assert out["glimp_steps"][-1].end == "eos"
    # no continuation was asked after the end-of-sequence probe
    assert [kind(b) for b in fake_small.requests] == ["probe", "step", "probe"]


@pytest.mark.parametrize("h", [0.2, 2.0])
def test_end_of_sequence_on_a_vllm_step(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, h: float
) -> None:
    scripted([ScriptStep(h, "Step one."), ScriptStep(h, "Final words.", eos=True), ScriptStep(h, "Never.")])
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    assert out["glimp_stats"].stop_reason == "end_of_sequence"
    assert [s.end for s in out["glimp_steps"]] == ["delimiter", "eos"]


def test_empty_large_step_is_end_of_sequence(fake_small: FakeServer, fake_large: FakeServer) -> None:
    fake_small.owned_by = fake_large.owned_by = "openai"
    fake_small.handler = lambda body: chat_response("X", finish_reason="length", top_logprobs=[("X", -1.0)] * 5)
    fake_large.handler = lambda body: chat_response("" if body.get("stop") else "done")
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    assert out["glimp_steps"][0].model == "large"
    assert out["glimp_steps"][0].end == "eos"
    assert out["glimp_stats"].stop_reason == "end_of_sequence"


def test_stops_at_a_repeated_step(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    steps = [ScriptStep(0.2, "Think again."), ScriptStep(2.0, "Think again."), ScriptStep(0.2, "Never.")]
    scripted(steps)
    out = build(fake_small, fake_large).invoke({"question": QUESTION})
    assert texts(out["glimp_steps"]) == ["Think again.", "Think again."]
    assert out["glimp_stats"].stop_reason == "repeated_step"


def test_repeats_are_allowed_when_switched_off(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    steps = [ScriptStep(0.2, "Think again."), ScriptStep(0.2, "Think again."), ScriptStep(0.2, "\\boxed{3}")]
    scripted(steps)
    out = build(fake_small, fake_large, stop_on_repeat=False).invoke({"question": QUESTION})
    assert len(out["glimp_steps"]) == 3
    assert out["glimp_stats"].stop_reason == "answer_marker"


def test_stops_at_the_token_budget(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    steps = [ScriptStep(2.0, f"Step {i}.", tokens=4) for i in range(10)]
    scripted(steps)
    out = build(fake_small, fake_large, max_step_tokens=4, max_thinking_tokens=10).invoke({"question": QUESTION})
    assert out["glimp_stats"].stop_reason == "token_budget"
    assert [s.tokens for s in out["glimp_steps"]] == [4, 4, 2]
    assert out["glimp_stats"].thinking_tokens == 10


def test_stops_at_the_step_budget(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    out = build(fake_small, fake_large, max_steps=2).invoke({"question": QUESTION})
    assert out["glimp_stats"].stop_reason == "step_budget"
    assert texts(out["glimp_steps"]) == [s.text for s in THREE[:2]]
    assert [kind(b) for b in fake_small.requests].count("probe") == 2
    assert prefix_of(fake_large.requests[-1]) == DELIMITER.join(texts(out["glimp_steps"])) + "\n\nFinal answer: "


# --------------------------------------------------------------------------- streaming and async


def test_streams_route_and_step_events_in_order(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="51")
    events = list(build(fake_small, fake_large).stream({"question": QUESTION}, stream_mode="custom"))
    assert [e["type"] for e in events if e["type"] != "answer"] == ["route", "step"] * 3 + ["final"]
    # the answer streams between the last step and the final record
    assert [e["type"] for e in events][-2:] == ["answer", "final"]
    assert "".join(e["delta"] for e in events if e["type"] == "answer").strip() == "51"
    routes = [e for e in events if e["type"] == "route"]
    steps = [e for e in events if e["type"] == "step"]
    assert [e["index"] for e in routes] == [e["index"] for e in steps] == [0, 1, 2]
    assert [e["model"] for e in routes] == [e["model"] for e in steps] == ["small", "large", "small"]
    assert [e["h_init"] for e in routes] == pytest.approx([0.2, 2.0, 0.2], abs=1e-6)
    assert [e["h_init"] for e in steps] == pytest.approx([0.2, 2.0, 0.2], abs=1e-6)
    assert [e["tau"] for e in routes] == [1.0] * 3
    assert [e["probe_token"] for e in routes] == [s.probe_token for s in THREE]
    assert [e["text"] for e in steps] == [s.text for s in THREE]
    assert [e["stop_reason"] for e in steps] == [None, None, "answer_marker"]
    assert events[-1]["answer"] == "51"
    assert events[-1]["stats"]["stop_reason"] == "answer_marker"


def test_async_run_matches_sync(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    model = scripted(THREE, answer="51")
    graph = build(fake_small, fake_large)
    sync = graph.invoke({"question": QUESTION})
    sync_requests = [(kind(b), prefix_of(b)) for b in fake_small.requests + fake_large.requests]
    fake_small.reset()
    fake_large.reset()
    result = asyncio.run(graph.ainvoke({"question": QUESTION}))
    no_errors(fake_small, fake_large, model=model)
    assert [s.model_dump(exclude={"seconds", "probe_seconds"}) for s in result["glimp_steps"]] == [
        s.model_dump(exclude={"seconds", "probe_seconds"}) for s in sync["glimp_steps"]
    ]
    assert result["glimp_answer"] == sync["glimp_answer"] == "51"
    assert [(kind(b), prefix_of(b)) for b in fake_small.requests + fake_large.requests] == sync_requests


def test_async_stream_emits_the_same_events(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    graph = build(fake_small, fake_large)

    async def collect() -> list[dict[str, Any]]:
        return [e async for e in graph.astream({"question": QUESTION}, stream_mode="custom")]

    events = asyncio.run(collect())
    assert [e["type"] for e in events] == ["route", "step"] * 3 + ["answer", "final"]
    assert events[-2]["delta"] == " 42"


def test_reruns_start_a_fresh_trace(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    graph = build(fake_small, fake_large)
    first = graph.invoke({"question": QUESTION})
    second = graph.invoke({"question": QUESTION})
    assert texts(first["glimp_steps"]) == texts(second["glimp_steps"])
    assert second["glimp_stats"].probes == 3


# --------------------------------------------------------------------------- as a subgraph


def test_messages_input_appends_the_answer(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE, answer="51")
    history = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage(QUESTION)]
    out = build(fake_small, fake_large).invoke({"messages": history})
    assert isinstance(out["messages"][-1], AIMessage)
    assert out["messages"][-1].content == "51"
    assert out["messages"][-1].additional_kwargs["reasoning_content"] == DELIMITER.join(s.text for s in THREE)
    assert len(out["messages"]) == 5
    # the earlier conversation goes before the question, after the preset's system message
    roles = [m["role"] for m in fake_large.requests[-1]["messages"]]
    assert roles == ["system", "system", "user", "assistant", "user", "assistant"]


def test_router_as_a_node_of_a_messages_host(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="51")
    router = build(fake_small, fake_large)
    seen: list[int] = []

    def before(state: MessagesState) -> dict[str, Any]:
        seen.append(len(state["messages"]))
        return {}

    builder = StateGraph(MessagesState)
    builder.add_node("before", before)
    builder.add_node("reason", router)
    builder.add_edge(START, "before")
    builder.add_edge("before", "reason")
    builder.add_edge("reason", END)
    host = builder.compile()

    out = host.invoke({"messages": [HumanMessage(QUESTION)]})
    assert seen == [1]
    assert set(out) == {"messages"}
    assert [type(m) for m in out["messages"]] == [HumanMessage, AIMessage]
    assert out["messages"][-1].content == "51"


def test_router_called_from_a_host_node(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE, answer="51")
    router = build(fake_small, fake_large)

    class HostState(TypedDict, total=False):
        question: str
        answer: str

    def reason(state: HostState) -> dict[str, Any]:
        return {"answer": router.invoke({"question": state["question"]})["glimp_answer"]}

    builder = StateGraph(HostState)
    builder.add_node("reason", reason)
    builder.add_edge(START, "reason")
    builder.add_edge("reason", END)
    out = builder.compile().invoke({"question": QUESTION})
    assert out == {"question": QUESTION, "answer": "51"}


def test_host_keys_named_like_the_outputs_are_untouched(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="51")
    router = build(fake_small, fake_large)

    class HostState(MessagesState, total=False):
        steps: Annotated[list[str], operator.add]
        answer: str

    def before(state: HostState) -> dict[str, Any]:
        return {"steps": ["host step"], "answer": "host answer"}

    builder = StateGraph(HostState)
    builder.add_node("before", before)
    builder.add_node("reason", router)
    builder.add_edge(START, "before")
    builder.add_edge("before", "reason")
    builder.add_edge("reason", END)
    out = builder.compile().invoke({"messages": [HumanMessage(QUESTION)]})
    assert out["steps"] == ["host step"]
    assert out["answer"] == "host answer"
    assert out["messages"][-1].content == "51"
    assert set(out) == {"messages", "steps", "answer"}


# --------------------------------------------------------------------------- shape


def test_graph_shape_matches_the_snapshot() -> None:
    graph = create_glimp_graph(
        {"base_url": "http://127.0.0.1:1/v1", "model": "s"}, {"base_url": "http://127.0.0.1:1/v1", "model": "l"}
    )
    mermaid = graph.get_graph().draw_mermaid()
    if os.environ.get("GLIMP_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(mermaid)
    assert mermaid == SNAPSHOT.read_text(), "graph shape changed; rerun with GLIMP_UPDATE_SNAPSHOTS=1 if intended"


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("state", "in_message"),
    [
        ({"question": ""}, "''"),
        ({"question": "   \n\t"}, repr("   \n\t")),
        ({"question": 42}, "42"),
        ({}, "no question"),
        ({"messages": [AIMessage("I am not a question")]}, "human message"),
        ({"messages": [HumanMessage("  ")]}, "'  '"),
        ({"question": QUESTION, "glimp_tau": math.nan}, "nan"),
        ({"question": QUESTION, "glimp_tau": "high"}, "'high'"),
        ({"question": QUESTION, "glimp_tau": True}, "True"),
    ],
)
def test_bad_input_fails_before_any_model_call(
    fake_small: FakeServer, fake_large: FakeServer, state: dict[str, Any], in_message: str
) -> None:
    graph = build(fake_small, fake_large)
    with pytest.raises(InputError) as info:
        graph.invoke(state)
    assert in_message in str(info.value)
    assert isinstance(info.value, ValueError)
    assert fake_small.requests == fake_large.requests == []
    assert fake_small.paths == fake_large.paths == []


def test_bad_async_input_fails_before_any_model_call(fake_small: FakeServer, fake_large: FakeServer) -> None:
    graph = build(fake_small, fake_large)
    with pytest.raises(InputError, match="nan"):
        asyncio.run(graph.ainvoke({"question": QUESTION, "glimp_tau": math.nan}))
    assert fake_small.paths == fake_large.paths == []


# --------------------------------------------------------------------------- with a checkpointer


def checkpointed(small: FakeServer, large: FakeServer) -> Any:
    from langgraph.checkpoint.memory import InMemorySaver

    return create_glimp_graph(endpoint_of(small), endpoint_of(large), config={"tau": 1.0}, checkpointer=InMemorySaver())


THREAD = {"configurable": {"thread_id": "t1"}}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_checkpointed_thread_keeps_the_conversation(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="51")
    graph = checkpointed(fake_small, fake_large)
    graph.invoke({"messages": [HumanMessage("first?")]}, THREAD)
    out = graph.invoke({"messages": [HumanMessage("second?")]}, THREAD)
    assert [m.content for m in out["messages"]] == ["first?", "51", "second?", "51"]
    user = [m for m in fake_large.requests[-1]["messages"] if m["role"] == "user"]
    assert user[-1]["content"].endswith("second?")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_per_run_tau_does_not_leak_into_the_next_run_of_a_thread(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE)
    graph = checkpointed(fake_small, fake_large)
    graph.invoke({"question": QUESTION, "glimp_tau": math.inf}, THREAD)
    out = graph.invoke({"question": QUESTION}, THREAD)
    assert out["glimp_stats"].tau == 1.0
    assert models(out["glimp_steps"]) == ["small", "large", "small"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_messages_run_after_a_question_run_answers_the_new_message(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="51")
    graph = checkpointed(fake_small, fake_large)
    graph.invoke({"question": "old question?"}, THREAD)
    out = graph.invoke({"messages": [HumanMessage("new question?")]}, THREAD)
    user = [m for m in fake_large.requests[-1]["messages"] if m["role"] == "user"]
    assert user[-1]["content"].endswith("new question?")
    assert isinstance(out["messages"][-1], AIMessage)
