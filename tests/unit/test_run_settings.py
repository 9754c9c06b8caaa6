"""Run-scoped settings: one compiled graph, each run's tau, budgets, prompt and tools from its runtime context."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from glimp_graph import GlimpConfig, InputError, create_glimp_graph
from glimp_graph.config import RUN_SETTINGS, GlimpContext
from glimp_graph.endpoints import ModelClient
from glimp_graph.nodes.common import RUN_CACHE_SIZE, Router
from tests.unit.conftest import FakeServer, ScriptedModel, max_tokens_of
from tests.unit.conftest import endpoint as endpoint_of
from tests.unit.test_graph import QUESTION, THREE, build, kind, models, no_errors

Scripted = Callable[..., ScriptedModel]


def test_context_keys_are_the_run_settings() -> None:
    assert set(GlimpContext.__annotations__) == RUN_SETTINGS
    assert set(GlimpConfig.model_fields) >= RUN_SETTINGS


def test_one_graph_serves_every_tau(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    model = scripted(THREE, answer="51")
    graph = build(fake_small, fake_large)  # tau 1.0: small, large, small
    default = graph.invoke({"question": QUESTION})
    all_small = graph.invoke({"question": QUESTION}, context={"tau": 5.0})
    all_large = graph.invoke({"question": QUESTION}, context={"tau": 0.0})
    no_errors(fake_small, fake_large, model=model)
    assert models(default["glimp_steps"]) == ["small", "large", "small"]
    assert models(all_small["glimp_steps"]) == ["small"] * 3
    assert models(all_large["glimp_steps"]) == ["large"] * 3
    assert [s.tau for s in all_small["glimp_steps"]] == [5.0] * 3
    assert (default["glimp_stats"].tau, all_small["glimp_stats"].tau, all_large["glimp_stats"].tau) == (1.0, 5.0, 0.0)


def test_glimp_tau_in_the_input_still_works_and_wins(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE)
    graph = build(fake_small, fake_large)
    out = graph.invoke({"question": QUESTION, "glimp_tau": 5.0}, context={"tau": 0.0})
    assert models(out["glimp_steps"]) == ["small"] * 3
    assert out["glimp_stats"].tau == 5.0


def test_budgets_and_top_k_per_run(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    graph = build(fake_small, fake_large)
    graph.invoke({"question": QUESTION}, context={"top_k": 7, "final_max_tokens": 9, "max_step_tokens": 5})
    probes = [b for b in fake_small.requests if kind(b) == "probe"]
    assert {b["top_logprobs"] for b in probes} == {7}
    assert [max_tokens_of(b) for b in fake_large.requests if kind(b) == "final"] == [9]
    assert {max_tokens_of(b) for b in fake_large.requests if kind(b) == "step"} == {5}
    fake_small.reset()
    fake_large.reset()
    graph.invoke({"question": QUESTION})  # the next run is back to the graph's settings
    assert {b["top_logprobs"] for b in fake_small.requests if kind(b) == "probe"} == {20}
    assert [max_tokens_of(b) for b in fake_large.requests if kind(b) == "final"] == [2048]


def test_max_steps_per_run(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    out = build(fake_small, fake_large).invoke({"question": QUESTION}, context={"max_steps": 1})
    assert len(out["glimp_steps"]) == 1
    assert out["glimp_stats"].stop_reason == "step_budget"


def test_prompt_preset_per_run(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE, think_prefix="<think>\n")
    out = build(fake_small, fake_large).invoke({"question": QUESTION}, context={"prompt": "r1", "max_steps": 3})
    assert len(out["glimp_steps"]) == 3
    final = next(b for b in fake_large.requests if kind(b) == "final")
    assert final["messages"][-1]["content"].startswith("<think>\n")
    assert final["messages"][-1]["content"].endswith("\n</think>\n\n")


@pytest.mark.parametrize(
    ("context", "named"),
    [
        ({"tau": "high"}, "tau"),
        ({"tau": float("nan")}, "tau"),
        ({"top_k": 0}, "top_k"),
        ({"final_max_tokens": -3}, "final_max_tokens"),
        ({"prompt": "chatty"}, "chatty"),
        ({"max_step_tokens": 100_000}, "max_step_tokens"),
        ({"temperature": 0.1}, "'temperature' cannot be set per run"),
        ({"delimiter": "\n"}, "'delimiter' cannot be set per run"),
        ({"tau": 0.5, "delimiter": "\n"}, "'delimiter'"),
        ({"tool_choice": "required"}, "tool"),
    ],
)
def test_a_bad_run_setting_is_named_before_any_call(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, context: dict[str, Any], named: str
) -> None:
    scripted(THREE)
    graph = build(fake_small, fake_large)
    with pytest.raises(InputError, match=r"run setting|per run") as info:
        graph.invoke({"question": QUESTION}, context=context)
    assert named in str(info.value)
    assert fake_small.requests == [] and fake_large.requests == []


def test_a_bad_setting_leaves_the_thread_as_it_was(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE)
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large), checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t"}}
    first = graph.invoke({"question": QUESTION}, thread)
    with pytest.raises(InputError):
        graph.invoke({"question": "another"}, thread, context={"top_k": -5})
    assert graph.get_state(thread).values["glimp_answer"] == first["glimp_answer"]
    assert graph.get_state(thread).values["glimp_steps"] == first["glimp_steps"]


def test_async_runs_read_their_own_context(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    graph = build(fake_small, fake_large)

    async def both() -> list[dict[str, Any]]:
        return await asyncio.gather(
            graph.ainvoke({"question": QUESTION}, context={"tau": 5.0}),
            graph.ainvoke({"question": QUESTION}, context={"tau": 0.0}),
        )

    small, large = asyncio.run(both())
    assert models(small["glimp_steps"]) == ["small"] * 3
    assert models(large["glimp_steps"]) == ["large"] * 3


def test_prompt_tokens_are_summed_per_model(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> None:
    scripted(THREE)
    stats = build(fake_small, fake_large).invoke({"question": QUESTION})["glimp_stats"]
    # every fake response reports 10 prompt tokens
    assert stats.small_prompt_tokens == 10 * len(fake_small.requests) == 50
    assert stats.large_prompt_tokens == 10 * len(fake_large.requests) == 20


def test_routers_per_setting_are_kept_and_bounded(fake_small: FakeServer, fake_large: FakeServer) -> None:
    config = GlimpConfig()
    small = ModelClient(endpoint_of(fake_small), "small")
    router = Router(
        config=config, small=small, large=ModelClient(endpoint_of(fake_large), "large"), scorer=config.make_scorer()
    )
    assert router.for_run({}) is router
    first = router.for_run({"tau": 0.5})
    assert router.for_run({"tau": 0.5}) is first
    assert first.small is router.small and first.scorer is router.scorer
    for n in range(RUN_CACHE_SIZE + 5):
        router.for_run({"final_max_tokens": n + 1})
    assert len(router._runs) == RUN_CACHE_SIZE


def test_a_host_graph_context_is_not_taken_for_settings(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    """A nested graph given no context inherits its host's (create_agent's): that one is not ours."""
    from dataclasses import dataclass

    from langgraph.graph import START, MessagesState, StateGraph

    @dataclass
    class HostContext:
        user_id: str

    scripted(THREE)
    glimp = build(fake_small, fake_large)
    for schema, context in ((dict, {"user_id": "u1", "locale": "de"}), (HostContext, HostContext("u1"))):
        host = StateGraph(MessagesState, context_schema=schema)
        host.add_node("glimp", glimp)
        host.add_edge(START, "glimp")
        out = host.compile().invoke({"messages": [("user", QUESTION)]}, context=context)
        assert out["messages"][-1].content == "42"


def test_a_misspelt_setting_is_not_taken_for_a_host_context(fake_small: FakeServer, fake_large: FakeServer) -> None:
    with pytest.raises(InputError, match=r"'tua'.*did you mean 'tau'"):
        build(fake_small, fake_large).invoke({"question": QUESTION}, context={"tua": 0.5})
