"""GlimpTurnRouter: routing per agent turn in a real ``create_agent`` loop, on the fake OpenAI server."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import sys
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from glimp_graph.errors import EndpointUnavailableError
from glimp_graph.middleware import GlimpTurnRouter, chat_openai
from glimp_graph.scorers import Fixed, SpecReason
from tests.helpers import CallRecorder
from tests.unit.conftest import FakeServer, endpoint, is_probe, logprobs_for_entropy, max_tokens_of, unused_port

SYSTEM = "You are a calculator agent. Use the calculator tool for arithmetic."
QUESTION = "What is 6 * 7?"


def tool_call_response(name: str, args: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    """An OpenAI chat completion whose message is one tool call."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }


class AgentScript:
    """Both fake servers as one agent run: turn 0 calls the calculator, turn 1 answers with its result.

    The turn is read from the request (the number of tool results in it); ``entropies[turn]`` is the small
    model's first-token entropy on that turn. Either server answers a turn it is sent; a probe sent to the large
    server is recorded as an error.
    """

    def __init__(self, small: FakeServer, large: FakeServer, entropies: list[float]) -> None:
        self.entropies = entropies
        self.errors: list[str] = []
        small.handler = lambda body: self.respond(small, "small", body)
        large.handler = lambda body: self.respond(large, "large", body)

    def respond(self, server: FakeServer, role: str, body: dict[str, Any]) -> Any:
        turn = sum(m.get("role") == "tool" for m in body.get("messages") or [])
        if is_probe(body):
            if role != "small":
                self.errors.append(f"probe sent to the {role} server")
                return 500, "probe sent to the large server"
            token = "I" if turn == 0 else "The"
            return server.chat(
                token, body, finish_reason="length", top_logprobs=logprobs_for_entropy(self.entropies[turn], token)
            )
        if turn == 0:
            return tool_call_response("calculator", {"expression": "6*7"})
        return server.chat(f"The answer is 42 ({role}).", body, completion_tokens=6)


ran: list[str] = []


@tool
def calculator(expression: str) -> str:
    """Evaluate a product of two integers such as '6*7'."""
    ran.append(expression)
    a, b = expression.split("*")
    return str(int(a) * int(b))


def make_agent(fake_small: FakeServer, fake_large: FakeServer, **settings: Any) -> tuple[Any, GlimpTurnRouter]:
    router = GlimpTurnRouter(endpoint(fake_small), endpoint(fake_large), **settings)
    return create_agent(router.large_model, tools=[calculator], system_prompt=SYSTEM, middleware=[router]), router


def decisions(messages: list[Any]) -> list[dict[str, Any]]:
    return [m.response_metadata["glimp_decision"] for m in messages if isinstance(m, AIMessage)]


def answered(server: FakeServer) -> list[dict[str, Any]]:
    return [b for b in server.chat_requests() if not is_probe(b)]


def probes(server: FakeServer) -> list[dict[str, Any]]:
    return [b for b in server.chat_requests() if is_probe(b)]


@pytest.fixture(autouse=True)
def _forget_tool_runs() -> None:
    ran.clear()


# --------------------------------------------------------------------------- routing in the agent loop


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_turn_goes_to_the_model_its_glimpse_chose(fake_small, fake_large, mode):
    script = AgentScript(fake_small, fake_large, entropies=[0.2, 2.5])
    agent, _ = make_agent(fake_small, fake_large, tau=1.0)
    recorder = CallRecorder()
    inputs = {"messages": [HumanMessage(QUESTION)]}
    config = {"callbacks": [recorder]}
    result = agent.invoke(inputs, config) if mode == "sync" else asyncio.run(agent.ainvoke(inputs, config))

    messages = result["messages"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert ran == ["6*7"] and messages[2].content == "42"  # the tool really ran on the small model's call
    assert messages[-1].content == "The answer is 42 (large)."
    first, second = decisions(messages)
    assert first["model"] == "small" and second["model"] == "large"
    assert first["index"] == 0 and second["index"] == 1
    assert first["h_init"] == pytest.approx(0.2, abs=1e-6) and second["h_init"] == pytest.approx(2.5, abs=1e-6)
    assert first["score"] == first["h_init"] and first["tau"] == 1.0 and first["scorer"] == "glimp"
    assert first["probe_token"] == "I"
    assert not script.errors and not fake_small.errors and not fake_large.errors

    # the small server: probe 0, its answer to turn 0, probe 1; the large server: its answer to turn 1, no probe
    assert len(probes(fake_small)) == 2 and len(answered(fake_small)) == 1
    assert len(answered(fake_large)) == 1 and not probes(fake_large)


def test_the_probe_is_the_turns_request_capped_at_one_token(fake_small, fake_large):
    AgentScript(fake_small, fake_large, entropies=[0.2, 0.2])
    agent, _ = make_agent(fake_small, fake_large, tau=1.0, top_k=7)
    agent.invoke({"messages": [HumanMessage(QUESTION)]})

    probe0, probe1 = probes(fake_small)
    assert max_tokens_of(probe0) == 1 and probe0["temperature"] == 0.0 and probe0["top_logprobs"] == 7
    assert probe0["logprobs"] is True and not probe0.get("continue_final_message")
    assert [m["role"] for m in probe0["messages"]] == ["system", "user"]
    assert probe0["messages"][0]["content"] == SYSTEM
    # turn 1 glimpses the conversation with the tool call and its result, as the reply will see it
    assert [m["role"] for m in probe1["messages"]] == ["system", "user", "assistant", "tool"]
    assert probe1["messages"][2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert probe1["messages"][3]["content"] == "42"
    # the probe carries the agent's tools (the chat template renders them into the prompt)
    assert [t["function"]["name"] for t in probe0["tools"]] == ["calculator"]
    turn1 = answered(fake_small)[1]  # the reply that followed: the same conversation
    assert [m["role"] for m in turn1["messages"]] == [m["role"] for m in probe1["messages"]]


@pytest.mark.parametrize(("entropies", "model"), [([0.2, 2.5], "small"), ([2.5, 0.2], "large")])
def test_tools_reach_whichever_model_answers(fake_small, fake_large, entropies, model):
    AgentScript(fake_small, fake_large, entropies=entropies)
    agent, _ = make_agent(fake_small, fake_large, tau=1.0)
    agent.invoke({"messages": [HumanMessage(QUESTION)]})
    small_turns, large_turns = answered(fake_small), answered(fake_large)
    assert len(small_turns) == 1 and len(large_turns) == 1
    for body in small_turns + large_turns:
        assert [t["function"]["name"] for t in body["tools"]] == ["calculator"]
        assert "logprobs" not in body or not body["logprobs"]  # the answer is an ordinary call
    first = small_turns[0] if model == "small" else large_turns[0]
    assert sum(m["role"] == "tool" for m in first["messages"]) == 0  # turn 0 went to ``model``


def test_a_tool_choice_set_by_an_outer_middleware_reaches_the_probe_and_the_answer(fake_small, fake_large):
    AgentScript(fake_small, fake_large, entropies=[0.2, 0.2])

    @wrap_model_call
    def calculator_first(request, handler):
        calls = sum(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="calculator" if calls == 0 else "none"))

    router = GlimpTurnRouter(endpoint(fake_small), endpoint(fake_large), tau=1.0)
    agent = create_agent(router.large_model, tools=[calculator], middleware=[calculator_first, router])
    agent.invoke({"messages": [HumanMessage(QUESTION)]})
    named = {"type": "function", "function": {"name": "calculator"}}
    assert [p["tool_choice"] for p in probes(fake_small)] == [named, "none"]
    assert [a["tool_choice"] for a in answered(fake_small)] == [named, "none"]


@pytest.mark.parametrize(("tau", "model"), [(math.inf, "small"), (-math.inf, "large")])
def test_infinite_thresholds_send_every_turn_to_one_model(fake_small, fake_large, tau, model):
    AgentScript(fake_small, fake_large, entropies=[4.0, 0.0])
    agent, _ = make_agent(fake_small, fake_large, tau=tau)
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    assert [d["model"] for d in decisions(result["messages"])] == [model, model]
    other = fake_large if model == "small" else fake_small
    assert not answered(other)


def test_the_decision_is_on_the_answering_model_run(fake_small, fake_large):
    AgentScript(fake_small, fake_large, entropies=[0.2, 2.5])
    agent, _ = make_agent(fake_small, fake_large, tau=1.0)
    recorder = CallRecorder()
    agent.invoke({"messages": [HumanMessage(QUESTION)]}, {"callbacks": [recorder]})

    probe_runs = [c for c in recorder.calls if c["name"] == "probe"]
    turns = [c for c in recorder.calls if c["name"] != "probe"]
    assert [c["metadata"]["glimp_turn"] for c in probe_runs] == [0, 1]
    assert all("glimp:small" in c["tags"] and c["metadata"]["glimp_scorer"] == "glimp" for c in probe_runs)
    assert [c["metadata"]["glimp_model"] for c in turns] == ["small", "large"]
    assert [f"glimp:{m}" in c["tags"] for c, m in zip(turns, ["small", "large"], strict=True)] == [True, True]
    for c, h in zip(turns, [0.2, 2.5], strict=True):
        meta = c["metadata"]
        assert meta["glimp_h_init"] == pytest.approx(h, abs=1e-6) and meta["glimp_score"] == meta["glimp_h_init"]
        assert meta["glimp_tau"] == 1.0 and meta["glimp_scorer"] == "glimp"
    # each answering run is the chat model of its server
    assert turns[0]["metadata"]["ls_model_name"] == "fake"


def test_scorers_without_a_model_call_send_no_probe(fake_small, fake_large):
    AgentScript(fake_small, fake_large, entropies=[0.0, 0.0])
    agent, _ = make_agent(fake_small, fake_large, tau=0.5, scorer=Fixed())
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    assert [d["model"] for d in decisions(result["messages"])] == ["small", "small"]
    assert [d["scorer"] for d in decisions(result["messages"])] == ["fixed", "fixed"]
    assert decisions(result["messages"])[0]["h_init"] is None
    assert not probes(fake_small) and not probes(fake_large)


def test_random_scorer_draws_per_question_and_turn(fake_small, fake_large):
    AgentScript(fake_small, fake_large, entropies=[0.0, 0.0])
    agent, _ = make_agent(fake_small, fake_large, tau=0.5, scorer="random")
    first = decisions(agent.invoke({"messages": [HumanMessage(QUESTION)]})["messages"])
    again = decisions(agent.invoke({"messages": [HumanMessage(QUESTION)]})["messages"])
    assert [d["score"] for d in first] == [d["score"] for d in again]  # reproducible
    assert first[0]["score"] != first[1]["score"]  # a new draw per turn
    assert all(d["model"] == ("small" if d["score"] <= 0.5 else "large") for d in first)
    assert not probes(fake_small)


def test_chat_models_given_directly_probe_the_small_models_server(fake_small, fake_large):
    AgentScript(fake_small, fake_large, entropies=[2.5, 0.2])
    small = chat_openai(endpoint(fake_small), max_tokens=64)
    large = chat_openai(endpoint(fake_large), max_tokens=64)
    router = GlimpTurnRouter(small, large, tau=1.0)
    assert router.small_model is small and router.large_model is large
    agent = create_agent(large, tools=[calculator], middleware=[router])
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    assert [d["model"] for d in decisions(result["messages"])] == ["large", "small"]
    assert len(probes(fake_small)) == 2 and max_tokens_of(answered(fake_small)[0]) == 64


def test_an_explicit_probe_endpoint_serves_any_small_chat_model(fake_small, fake_large):
    AgentScript(fake_small, fake_large, entropies=[0.2, 0.2])
    scripted = GenericFakeChatModel(messages=iter([AIMessage("from the small chat model")]))
    router = GlimpTurnRouter(scripted, endpoint(fake_large), tau=1.0, probe=endpoint(fake_small))
    agent = create_agent(router.large_model, middleware=[router])
    result = agent.invoke({"messages": [HumanMessage("Say hi.")]})
    assert result["messages"][-1].content == "from the small chat model"
    assert decisions(result["messages"])[0]["model"] == "small"
    assert len(probes(fake_small)) == 1 and not answered(fake_large)


# --------------------------------------------------------------------------- the small model's server fails


def test_a_dead_small_server_hands_the_turn_to_the_large_model(fake_large):
    dead = endpoint(fake_large).model_copy(update={"base_url": f"http://127.0.0.1:{unused_port()}/v1"})
    fake_large.handler = lambda body: fake_large.chat("hello from large", body)
    router = GlimpTurnRouter(dead, endpoint(fake_large), tau=math.inf)
    agent = create_agent(router.large_model, middleware=[router])
    result = agent.invoke({"messages": [HumanMessage("Say hi.")]})
    decision = decisions(result["messages"])[0]
    assert decision["model"] == "large" and decision["score"] == math.inf
    assert "small model unavailable" in decision["note"]
    assert result["messages"][-1].content == "hello from large"


def test_a_dead_small_server_raises_when_asked_to(fake_large):
    dead = endpoint(fake_large).model_copy(update={"base_url": f"http://127.0.0.1:{unused_port()}/v1"})
    router = GlimpTurnRouter(dead, endpoint(fake_large), on_small_failure="raise")
    agent = create_agent(router.large_model, middleware=[router])
    with pytest.raises(EndpointUnavailableError, match="small model at"):
        agent.invoke({"messages": [HumanMessage("Say hi.")]})
    assert not fake_large.chat_requests()


# --------------------------------------------------------------------------- bad settings, at construction


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tau": math.nan}, "tau must be a number of nats or \\+/-inf, got nan"),
        ({"tau": "0.5"}, "tau must be a number of nats or \\+/-inf, got '0.5'"),
        ({"tau": True}, "tau must be a number"),
        ({"scorer": "entropy"}, "unknown scorer 'entropy'; choose one of"),
        ({"estimator": "shannon"}, "unknown estimator 'shannon'"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"max_step_tokens": 0}, "max_step_tokens"),
        ({"on_small_failure": "retry"}, "on_small_failure"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_value(fake_small, fake_large, settings, message):
    with pytest.raises(ValueError, match=f"^GlimpTurnRouter: .*{message}"):
        GlimpTurnRouter(endpoint(fake_small), endpoint(fake_large), **settings)


def test_models_of_the_wrong_kind_are_named(fake_small, fake_large):
    with pytest.raises(TypeError, match=r"small must be an Endpoint or a LangChain chat model.*str"):
        GlimpTurnRouter("http://127.0.0.1:8000/v1", endpoint(fake_large))  # type: ignore[arg-type]
    scripted = GenericFakeChatModel(messages=iter([]))
    with pytest.raises(ValueError, match="probe=Endpoint"):
        GlimpTurnRouter(scripted, endpoint(fake_large))
    with pytest.raises(ValueError, match="'specreason' asks the large model"):
        GlimpTurnRouter(endpoint(fake_small), scripted, scorer=SpecReason())
    with pytest.raises(TypeError, match="probe must be an Endpoint"):
        GlimpTurnRouter(scripted, endpoint(fake_large), probe="http://x")  # type: ignore[arg-type]


def test_without_langchain_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "langchain.agents.middleware", None)  # as if langchain were not installed
    monkeypatch.delitem(sys.modules, "glimp_graph.middleware")
    with pytest.raises(ImportError, match=r'pip install "glimp-graph\[agents\]"'):
        importlib.import_module("glimp_graph.middleware")
