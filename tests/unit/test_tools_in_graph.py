"""Tools through the graph: the final answer carries them, a tool call comes back, the next turn reads the result."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from glimp_graph import InputError
from tests.helpers import CALCULATOR
from tests.unit.conftest import FakeServer, ScriptedModel
from tests.unit.test_graph import QUESTION, THREE, build, kind, no_errors

Scripted = Callable[..., ScriptedModel]


def openai_call(arguments: str, name: str = "calculator", call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_the_final_answer_carries_the_tools_and_returns_the_call(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    model = scripted(THREE, answer="", final_tool_calls=[openai_call('{"expression": "17 * 3"}')])
    out = build(fake_small, fake_large).invoke(
        {"messages": [HumanMessage(QUESTION)]}, context={"tools": [CALCULATOR], "tool_choice": "required"}
    )
    no_errors(fake_small, fake_large, model=model)
    final = [b for b in fake_large.requests if kind(b) == "final"]
    assert len(final) == 1
    # vLLM gets the tools as strict (it then holds the arguments to the schema)
    assert final[0]["tools"] == [{**CALCULATOR, "function": {**CALCULATOR["function"], "strict": True}}]
    assert final[0]["tool_choice"] == "required"
    # the steps never carry tools
    steps = [b for b in fake_small.requests + fake_large.requests if kind(b) != "final"]
    assert steps and not any("tools" in b or "tool_choice" in b for b in steps)
    call = {"name": "calculator", "args": {"expression": "17 * 3"}, "id": "call_1", "type": "tool_call"}
    assert out["glimp_tool_calls"] == [call]
    assert out["glimp_invalid_tool_calls"] == []
    message = out["messages"][-1]
    assert isinstance(message, AIMessage)
    assert message.tool_calls == [call]
    assert message.additional_kwargs["reasoning_content"].startswith(THREE[0].text)
    assert out["glimp_stats"].tool_calls == 1


def test_bad_json_arguments_are_an_invalid_tool_call_not_a_crash(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="", final_tool_calls=[openai_call('{"expression": 17 *')])
    out = build(fake_small, fake_large).invoke({"messages": [HumanMessage(QUESTION)]}, context={"tools": [CALCULATOR]})
    assert out["glimp_tool_calls"] == []
    [invalid] = out["glimp_invalid_tool_calls"]
    assert invalid["name"] == "calculator"
    assert invalid["args"] == '{"expression": 17 *'
    assert out["messages"][-1].invalid_tool_calls == out["glimp_invalid_tool_calls"]


def test_the_next_turn_reasons_over_the_tool_result(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    model = scripted(THREE, answer="51")
    call = {"name": "calculator", "args": {"expression": "17 * 3"}, "id": "call_1", "type": "tool_call"}
    history = [
        SystemMessage("Use the calculator."),
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[call]),
        ToolMessage("51", tool_call_id="call_1"),
    ]
    before = list(history)
    out = build(fake_small, fake_large).invoke({"messages": history}, context={"tools": [CALCULATOR]})
    no_errors(fake_small, fake_large, model=model)
    assert history == before  # the caller's list is untouched
    assert out["glimp_answer"] == "51"
    assert out["messages"][-1].tool_calls == []
    for body in fake_small.requests + fake_large.requests:
        roles = [m["role"] for m in body["messages"]]
        # the router's system prompt, the user's system message, the question, the call, its result, the trace
        assert roles[:5] == ["system", "system", "user", "assistant", "tool"], roles
        assistant, tool = body["messages"][3], body["messages"][4]
        assert assistant["tool_calls"][0]["function"]["name"] == "calculator"
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"expression": "17 * 3"}
        assert (tool["tool_call_id"], tool["content"]) == ("call_1", "51")


@pytest.mark.parametrize(
    ("context", "named"),
    [
        ({"tools": [], "tool_choice": "required"}, "required"),
        ({"tools": [CALCULATOR], "tool_choice": {"type": "function", "function": {"name": "search"}}}, "search"),
    ],
)
def test_bad_tool_settings_are_named_before_any_call(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, context: dict[str, Any], named: str
) -> None:
    scripted(THREE)
    with pytest.raises(InputError, match=named):
        build(fake_small, fake_large).invoke({"messages": [HumanMessage(QUESTION)]}, context=context)
    assert fake_small.requests == [] and fake_large.requests == []


def test_messages_without_a_human_turn_are_refused_by_name(fake_small: FakeServer, fake_large: FakeServer) -> None:
    with pytest.raises(InputError, match=r"\(SystemMessage, ToolMessage\) contain no human message"):
        build(fake_small, fake_large).invoke(
            {"messages": [SystemMessage("be brief"), ToolMessage("51", tool_call_id="c")]}
        )


def test_llama_cpp_gets_a_grammar_and_the_call_json_is_never_streamed_as_answer_text(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    fake_small.owned_by = fake_large.owned_by = "llamacpp"
    call_json = '{"name": "calculator", "arguments": {"expression": "17 * 3"}}'
    model = scripted(THREE, answer=call_json)
    events = list(
        build(fake_small, fake_large).stream(
            {"messages": [HumanMessage(QUESTION)]},
            stream_mode=["custom", "values"],
            context={"tools": [CALCULATOR], "tool_choice": "required"},
        )
    )
    no_errors(fake_small, fake_large, model=model)
    [final] = [b for b in fake_large.requests if kind(b) == "final"]
    assert final["tool_choice"] == "none"  # llama.cpp accepts a grammar beside tools only so
    assert "calculator" in final["grammar"]
    assert not final.get("stream")
    custom = [e for mode, e in events if mode == "custom"]
    assert [e for e in custom if e["type"] == "answer"] == []
    out = [e for mode, e in events if mode == "values"][-1]
    assert out["glimp_answer"] == ""
    assert [c["args"] for c in out["glimp_tool_calls"]] == [{"expression": "17 * 3"}]


def test_text_answers_with_tools_still_stream_on_vllm(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="The answer is 51.")
    events = list(
        build(fake_small, fake_large).stream(
            {"messages": [HumanMessage(QUESTION)]}, stream_mode="custom", context={"tools": [CALCULATOR]}
        )
    )
    deltas = [e["delta"] for e in events if e["type"] == "answer"]
    assert len(deltas) > 1 and "".join(deltas).strip() == "The answer is 51."
    assert fake_large.requests[-1]["stream"] is True
