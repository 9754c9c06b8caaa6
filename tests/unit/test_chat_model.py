"""``ChatGlimpRouter`` (the graph as a LangChain chat model) against the fake servers playing a scripted model.

Covers what a call returns (answer, reasoning blocks, usage, statistics), streaming (steps as they are written,
the answer token by token, chunks that add up to ``invoke``), the run tree, tools (``bind_tools``, tool calls,
invalid ones, the next turn with the tool results, ``with_structured_output``), ``create_agent`` and a ToolNode
loop, run settings, and bad input.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from pydantic import BaseModel, ValidationError

from glimp_graph import create_glimp_graph
from glimp_graph.chat_model import MODEL_PROVIDER, ChatGlimpRouter
from glimp_graph.errors import ContextLengthError, EndpointError, InputError
from tests.unit.conftest import DELIMITER, FakeServer, Reply, ScriptedModel, ScriptStep, is_probe
from tests.unit.conftest import endpoint as endpoint_of

Scripted = Callable[..., ScriptedModel]

# small (0.2), large (2.0), small (0.2); the last step ends the reasoning
STEPS = [
    ScriptStep(0.2, "First, 23 boxes of 17 pens.", tokens=7),
    ScriptStep(2.0, "That is 23 * 17.", tokens=6),
    ScriptStep(0.2, "So the answer is \\boxed{391}.", tokens=8),
]
ANSWER = "There are 391 pens in all."
QUESTION = "A shop sells 23 boxes of 17 pens. How many pens is that?"


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as "23 * 17"."""
    left, right = expression.split("*")
    return str(int(left) * int(right))


def kind(body: dict[str, Any]) -> str:
    if is_probe(body):
        return "probe"
    return "step" if body.get("stop") else "final"


def finals(server: FakeServer) -> list[dict[str, Any]]:
    return [b for b in server.chat_requests() if kind(b) == "final"]


def model_of(small: FakeServer, large: FakeServer, **fields: Any) -> ChatGlimpRouter:
    return ChatGlimpRouter(small=endpoint_of(small), large=endpoint_of(large), **{"tau": 1.0, **fields})


@pytest.fixture
def pair(fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted) -> tuple[FakeServer, FakeServer]:
    scripted(STEPS, answer=ANSWER)
    return fake_small, fake_large


def call_reply(calls: list[tuple[str, str]], content: str = "") -> dict[str, Any]:
    """A chat completion whose message calls tools: ``(name, arguments as JSON text)`` each."""
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
        for i, (name, args) in enumerate(calls)
    ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "tool_calls": tool_calls},
                "finish_reason": "tool_calls",
                "stop_reason": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19},
    }


def calls_tools(large: FakeServer, calls: list[tuple[str, str]], *, then: str | None = None) -> None:
    """The large server answers the final call with ``calls``; once a tool result is in the conversation, ``then``."""
    plain = large.handler

    def handler(body: dict[str, Any]) -> Reply:
        if kind(body) != "final" or not body.get("tools"):
            return plain(body)
        if then is not None and any(m.get("role") == "tool" for m in body["messages"]):
            return large.chat(" " + then, body, completion_tokens=5)
        return call_reply(calls)

    large.handler = handler


def total(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    out = chunks[0]
    for chunk in chunks[1:]:
        out = out + chunk
    return out


# --------------------------------------------------------------------------- invoke


def test_invoke_returns_the_answer_the_steps_as_reasoning_blocks_and_usage(pair) -> None:
    small, large = pair
    reply = model_of(small, large).invoke([HumanMessage(QUESTION)])

    assert isinstance(reply, AIMessage)
    assert reply.content == ANSWER and reply.text == ANSWER
    assert reply.additional_kwargs["reasoning_content"] == DELIMITER.join(s.text for s in STEPS)
    blocks = reply.content_blocks
    reasoning = [b for b in blocks if b["type"] == "reasoning"]
    assert [b["reasoning"] for b in reasoning] == [s.text for s in STEPS]
    assert [b["extras"]["model"] for b in reasoning] == ["small", "large", "small"]
    assert [b["extras"]["step"] for b in reasoning] == [0, 1, 2]
    assert [round(b["extras"]["h_init"], 6) for b in reasoning] == [0.2, 2.0, 0.2]
    assert all(b["extras"]["tau"] == 1.0 for b in reasoning)
    assert blocks[-1] == {"type": "text", "text": ANSWER} and len(blocks) == 4

    stats = reply.response_metadata["glimp_stats"]
    assert reply.response_metadata["model_provider"] == MODEL_PROVIDER
    assert reply.response_metadata["model_name"] == "glimp-router"
    assert (stats["steps"], stats["small_steps"], stats["large_steps"]) == (3, 2, 1)
    # every request reports 10 prompt tokens: input = 10 per request of both servers
    usage = reply.usage_metadata
    assert usage["input_tokens"] == 10 * (len(small.chat_requests()) + len(large.chat_requests()))
    assert usage["input_token_details"] == {"small": 10 * len(small.chat_requests()), "large": 20}
    assert usage["output_tokens"] == stats["small_tokens"] + stats["large_tokens"] > 0
    assert usage["output_token_details"]["reasoning"] == usage["output_tokens"] - stats["final_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_invoke_gives_what_the_graph_gives(pair) -> None:
    small, large = pair
    graph = create_glimp_graph(endpoint_of(small), endpoint_of(large), config={"tau": 1.0})
    direct = graph.invoke({"messages": [HumanMessage(QUESTION)]})
    reply = ChatGlimpRouter(graph=graph).invoke(QUESTION)
    assert reply.content == direct["glimp_answer"]
    assert [r["text"] for r in reply.additional_kwargs["glimp_steps"]] == [s.text for s in direct["glimp_steps"]]
    assert reply.additional_kwargs["reasoning_content"] == direct["messages"][-1].additional_kwargs["reasoning_content"]


def test_output_version_v1_puts_the_blocks_in_the_content(pair) -> None:
    small, large = pair
    reply = model_of(small, large, output_version="v1").invoke(QUESTION)
    assert [b["type"] for b in reply.content] == ["reasoning", "reasoning", "reasoning", "text"]
    assert reply.text == ANSWER


def test_ainvoke_batch_and_abatch(pair) -> None:
    small, large = pair
    model = model_of(small, large)
    assert asyncio.run(model.ainvoke(QUESTION)).content == ANSWER
    assert [r.content for r in model.batch([QUESTION, QUESTION])] == [ANSWER, ANSWER]

    async def both() -> list[Any]:
        return await model.abatch([QUESTION, QUESTION])

    assert [r.content for r in asyncio.run(both())] == [ANSWER, ANSWER]


# --------------------------------------------------------------------------- streaming


def test_stream_yields_each_step_before_the_answer_then_the_answer_token_by_token(pair) -> None:
    small, large = pair
    model = model_of(small, large)
    chunks, finals_seen = [], []
    for chunk in model.stream(QUESTION):
        chunks.append(chunk)
        finals_seen.append(len(finals(large)))

    steps = [c for c in chunks if c.additional_kwargs.get("glimp_steps")]
    texts = [c for c in chunks if c.content]
    assert [c.additional_kwargs["glimp_steps"][0]["text"] for c in steps] == [s.text for s in STEPS]
    # each step arrived while the final answer had not been asked for yet: streamed as written, not at the end
    assert all(seen == 0 for c, seen in zip(chunks, finals_seen, strict=True) if c in steps)
    assert chunks.index(steps[-1]) < chunks.index(texts[0])
    assert len(texts) > 1 and "".join(c.content for c in texts) == ANSWER
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata

    whole, reply = total(chunks), model.invoke(QUESTION)
    assert whole.content == reply.content
    assert whole.additional_kwargs["reasoning_content"] == reply.additional_kwargs["reasoning_content"]
    assert [b["type"] for b in whole.content_blocks] == [b["type"] for b in reply.content_blocks]
    assert [b.get("reasoning") for b in whole.content_blocks] == [b.get("reasoning") for b in reply.content_blocks]
    assert whole.usage_metadata == reply.usage_metadata
    assert whole.response_metadata["model_name"] == "glimp-router"


def test_astream_and_v1_streaming(pair) -> None:
    small, large = pair
    model = model_of(small, large, output_version="v1")

    async def collect() -> list[AIMessageChunk]:
        return [c async for c in model.astream(QUESTION)]

    whole = total(asyncio.run(collect()))
    assert [b["type"] for b in whole.content] == ["reasoning", "reasoning", "reasoning", "text"]
    assert [b["reasoning"] for b in whole.content[:3]] == [s.text for s in STEPS]
    assert whole.text == ANSWER


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_invoke_under_a_streaming_handler_streams_and_gives_the_same_message(pair, mode: str) -> None:
    """LangGraph's "messages" mode attaches a streaming handler: invoke goes through ``_stream``."""
    small, large = pair
    model = model_of(small, large)

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def anode(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    host = StateGraph(MessagesState)
    host.add_node("model", node if mode == "sync" else anode)
    host.add_edge(START, "model")
    host.add_edge("model", END)
    tree = RunTree()
    args = ({"messages": [HumanMessage(QUESTION)]}, {"callbacks": [tree]})
    if mode == "sync":
        streamed = list(host.compile().stream(*args, stream_mode="messages"))
    else:

        async def collect() -> list[Any]:
            return [item async for item in host.compile().astream(*args, stream_mode="messages")]

        streamed = asyncio.run(collect())
    # the run tree: host -> model node -> ChatGlimpRouter -> glimp_router -> the graph's nodes
    (chat,) = tree.ids("ChatGlimpRouter")
    (graph,) = tree.ids("glimp_router")
    assert tree.runs[graph][0] == chat and tree.runs[tree.runs[chat][0]][1] == "model"
    # the chat model's own chunks only: the graph's inner model calls stay in their subgraph's namespace
    assert {meta["langgraph_node"] for _, meta in streamed} == {"model"}
    pieces = [m for m, _ in streamed if isinstance(m, AIMessageChunk)]
    assert "".join(m.content for m in pieces) == ANSWER
    assert sum(1 for m in pieces if m.additional_kwargs.get("glimp_steps")) == len(STEPS)
    assert all(m.response_metadata.get("model_provider") == MODEL_PROVIDER for m in pieces if m.content)


# --------------------------------------------------------------------------- the run tree


class RunTree(BaseCallbackHandler):
    """Records every run: id, parent id, name."""

    def __init__(self) -> None:
        self.runs: dict[UUID, tuple[UUID | None, str]] = {}

    def _add(self, run_id: UUID, parent_run_id: UUID | None, name: str | None) -> None:
        self.runs[run_id] = (parent_run_id, name or "?")

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, name=None, **kw) -> None:
        self._add(run_id, parent_run_id, name or (serialized or {}).get("name"))

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, name=None, **kw) -> None:
        self._add(run_id, parent_run_id, name or (serialized or {}).get("name"))

    def ids(self, name: str) -> list[UUID]:
        return [run for run, (_, n) in self.runs.items() if n == name]

    def ancestors(self, run_id: UUID) -> list[str]:
        names, parent = [], self.runs[run_id][0]
        while parent is not None:
            names.append(self.runs[parent][1])
            parent = self.runs[parent][0]
        return names


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
def test_the_graph_runs_under_the_chat_model_run(pair, how: str) -> None:
    small, large = pair
    model = model_of(small, large)
    tree = RunTree()
    config = {"callbacks": [tree]}
    if how == "invoke":
        model.invoke(QUESTION, config)
    elif how == "stream":
        list(model.stream(QUESTION, config))
    elif how == "ainvoke":
        asyncio.run(model.ainvoke(QUESTION, config))
    else:

        async def drain() -> None:
            async for _ in model.astream(QUESTION, config):
                pass

        asyncio.run(drain())

    (chat,) = tree.ids("ChatGlimpRouter")
    assert tree.runs[chat][0] is None
    (graph,) = tree.ids("glimp_router")
    assert tree.runs[graph][0] == chat
    inner = [r for name in ("probe", "small_step", "large_step", "final_answer") for r in tree.ids(name)]
    assert len(inner) > len(STEPS)
    assert all(tree.ancestors(r)[-1] == "ChatGlimpRouter" and "glimp_router" in tree.ancestors(r) for r in inner)


# --------------------------------------------------------------------------- tools


def test_bound_tools_go_only_to_the_final_call_and_a_call_comes_back(pair) -> None:
    small, large = pair
    calls_tools(large, [("calculator", '{"expression": "23 * 17"}')])
    reply = model_of(small, large).bind_tools([calculator], tool_choice="any").invoke(QUESTION)

    assert reply.tool_calls == [
        {"name": "calculator", "args": {"expression": "23 * 17"}, "id": "call_0", "type": "tool_call"}
    ]
    assert reply.content == "" and not reply.invalid_tool_calls
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    assert reply.content_blocks[-1] == {
        "type": "tool_call",
        "name": "calculator",
        "args": {"expression": "23 * 17"},
        "id": "call_0",
    }
    (final,) = finals(large)
    assert [t["function"]["name"] for t in final["tools"]] == ["calculator"]
    assert final["tool_choice"] == "required"  # "any" as LangChain spells it
    steps = [b for b in small.chat_requests() + large.chat_requests() if kind(b) != "final"]
    assert steps and not any("tools" in b for b in steps)


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("required", "required"),
        (True, "required"),
        ("calculator", {"type": "function", "function": {"name": "calculator"}}),
        (
            {"type": "function", "function": {"name": "calculator"}},
            {"type": "function", "function": {"name": "calculator"}},
        ),
    ],
)
def test_tool_choice_spellings(pair, choice: Any, sent: Any) -> None:
    small, large = pair
    calls_tools(large, [("calculator", '{"expression": "2 * 3"}')])
    model_of(small, large).bind_tools([calculator], tool_choice=choice).invoke(QUESTION)
    assert finals(large)[0]["tool_choice"] == sent


def test_stream_with_a_tool_call_adds_up_to_the_call(pair) -> None:
    small, large = pair
    calls_tools(large, [("calculator", '{"expression": "23 * 17"}')])
    chunks = list(model_of(small, large).bind_tools([calculator]).stream(QUESTION))
    whole = total(chunks)
    assert whole.tool_calls == [
        {"name": "calculator", "args": {"expression": "23 * 17"}, "id": "call_0", "type": "tool_call"}
    ]
    assert whole.content == "" and whole.response_metadata["finish_reason"] == "tool_calls"


def test_a_tool_call_written_as_text_is_never_streamed_as_text(pair) -> None:
    """With tools bound, text that may be a call (here a bare JSON object) waits for the graph's reading."""
    small, large = pair
    plain = large.handler

    def handler(body: dict[str, Any]) -> Reply:
        if kind(body) == "final":
            text = ' {"name": "calculator", "arguments": {"expression": "23 * 17"}}'
            return large.chat(text, body, completion_tokens=12)
        return plain(body)

    large.handler = handler
    chunks = list(model_of(small, large).bind_tools([calculator]).stream(QUESTION))
    assert all("calculator" not in c.content for c in chunks)
    whole = total(chunks)
    assert whole.content == "" and [c["args"] for c in whole.tool_calls] == [{"expression": "23 * 17"}]


@pytest.mark.parametrize("arguments", ['{"expression": "23 *', "expression=23*17"])
def test_bad_json_arguments_and_an_unknown_tool_are_invalid_tool_calls(pair, arguments: str) -> None:
    small, large = pair
    calls_tools(large, [("calculator", arguments), ("weather", '{"city": "Oslo"}')])
    reply = model_of(small, large).bind_tools([calculator]).invoke(QUESTION)
    assert reply.tool_calls == []
    bad = {c["name"]: c for c in reply.invalid_tool_calls}
    assert set(bad) == {"calculator", "weather"}
    assert bad["calculator"]["args"] == arguments and "JSON" in bad["calculator"]["error"]
    assert "unknown tool" in bad["weather"]["error"]
    assert {b["type"] for b in reply.content_blocks} >= {"invalid_tool_call"}
    assert reply.response_metadata["glimp_invalid_tool_calls"] == reply.invalid_tool_calls

    # streamed: LangChain re-parses arguments leniently when it adds chunks up; the calls must stay invalid
    whole = total(list(model_of(small, large).bind_tools([calculator]).stream(QUESTION)))
    assert whole.tool_calls == [] and len(whole.invalid_tool_calls) == 2
    assert {json.loads(c["args"]) for c in whole.invalid_tool_calls} == {arguments, '{"city": "Oslo"}'}
    assert whole.response_metadata["glimp_invalid_tool_calls"] == reply.response_metadata["glimp_invalid_tool_calls"]


def test_the_next_turn_reasons_over_the_tool_results(pair) -> None:
    small, large = pair
    calls_tools(large, [("calculator", '{"expression": "23 * 17"}')], then="The calculator says 391 pens.")
    model = model_of(small, large).bind_tools([calculator])
    history = [SystemMessage("Use the calculator."), HumanMessage(QUESTION)]
    first = model.invoke(history)
    result = ToolMessage(calculator.invoke(first.tool_calls[0]["args"]), tool_call_id=first.tool_calls[0]["id"])
    small.reset()
    large.reset()
    second = model.invoke([*history, first, result])

    assert second.content == "The calculator says 391 pens." and not second.tool_calls
    # every step request and the final one read the tool call and its result after the question
    for body in small.chat_requests() + large.chat_requests():
        roles = [m["role"] for m in body["messages"]]
        user = roles.index("user")
        assert roles[user : user + 3] == ["user", "assistant", "tool"], roles
        assert body["messages"][user + 2]["content"] == "391"
        assert body["messages"][user + 1]["tool_calls"][0]["function"]["name"] == "calculator"


class Count(BaseModel):
    """How many items there are."""

    items: int
    unit: str


def test_with_structured_output_returns_the_schema(pair) -> None:
    small, large = pair
    calls_tools(large, [("Count", '{"items": 391, "unit": "pens"}')])
    out = model_of(small, large).with_structured_output(Count).invoke(QUESTION)
    assert out == Count(items=391, unit="pens")
    assert finals(large)[0]["tool_choice"] == "required"


def test_create_agent_runs_the_tool_and_answers_with_its_result(pair) -> None:
    create_agent = pytest.importorskip("langchain.agents").create_agent
    small, large = pair
    calls_tools(large, [("calculator", '{"expression": "23 * 17"}')], then="That is 391 pens.")
    agent = create_agent(model=model_of(small, large), tools=[calculator], system_prompt="Use the calculator.")
    out = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    kinds = [type(m).__name__ for m in out["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert out["messages"][2].content == "391"
    assert out["messages"][-1].content == "That is 391 pens."
    assert out["messages"][-1].additional_kwargs["reasoning_content"]


def test_a_tool_node_loop(pair) -> None:
    small, large = pair
    calls_tools(large, [("calculator", '{"expression": "23 * 17"}')], then="391 pens.")
    model = model_of(small, large).bind_tools([calculator])

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    loop = StateGraph(MessagesState)
    loop.add_node("agent", agent)
    loop.add_node("tools", ToolNode([calculator]))
    loop.add_edge(START, "agent")
    loop.add_conditional_edges("agent", tools_condition)
    loop.add_edge("tools", "agent")
    out = loop.compile().invoke({"messages": [HumanMessage(QUESTION)]})
    assert [m.type for m in out["messages"]] == ["human", "ai", "tool", "ai"]
    assert out["messages"][-1].content == "391 pens."


# --------------------------------------------------------------------------- settings


def test_one_shared_graph_serves_chat_models_with_different_thresholds(pair) -> None:
    small, large = pair
    graph = create_glimp_graph(endpoint_of(small), endpoint_of(large))
    low = ChatGlimpRouter(graph=graph, tau=-math.inf).invoke(QUESTION)
    high = ChatGlimpRouter(graph=graph, tau=math.inf).invoke(QUESTION)
    per_call = ChatGlimpRouter(graph=graph, tau=math.inf).invoke(QUESTION, tau=-math.inf)
    assert {r["model"] for r in low.additional_kwargs["glimp_steps"]} == {"large"}
    assert {r["model"] for r in high.additional_kwargs["glimp_steps"]} == {"small"}
    assert {r["model"] for r in per_call.additional_kwargs["glimp_steps"]} == {"large"}


def test_final_max_tokens_reaches_the_final_call(pair) -> None:
    small, large = pair
    model_of(small, large, final_max_tokens=33).invoke(QUESTION)
    (final,) = finals(large)
    assert final.get("max_completion_tokens", final.get("max_tokens")) == 33


def test_a_host_context_and_recursion_limit_do_not_reach_the_graph(pair) -> None:
    """The graph runs inside a host graph that has a runtime context of its own."""
    small, large = pair
    model = ChatGlimpRouter(small=endpoint_of(small), large=endpoint_of(large), config={"tau": 1.0})  # no run setting

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    host = StateGraph(MessagesState, context_schema=dict)
    host.add_node("model", node)
    host.add_edge(START, "model")
    host.add_edge("model", END)
    out = host.compile().invoke({"messages": [HumanMessage(QUESTION)]}, context={"user_id": "u1"})
    assert out["messages"][-1].content == ANSWER
    # nor does its recursion limit (3 host steps at most; the graph's 3 reasoning steps take 11)
    out = host.compile().invoke({"messages": [HumanMessage(QUESTION)]}, {"recursion_limit": 3}, context={"a": 1})
    assert out["messages"][-1].content == ANSWER


# --------------------------------------------------------------------------- bad input


def test_the_callers_messages_are_left_as_they_were(pair) -> None:
    small, large = pair
    calls_tools(large, [("calculator", '{"expression": "23 * 17"}')], then="391.")
    messages = [
        SystemMessage("Use the calculator."),
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[{"name": "calculator", "args": {"expression": "23 * 17"}, "id": "c1"}]),
        ToolMessage("391", tool_call_id="c1"),
    ]
    before = copy.deepcopy(messages)
    model_of(small, large).bind_tools([calculator]).invoke(messages)
    list(model_of(small, large).stream(messages))
    assert len(messages) == 4
    assert [m.model_dump() for m in messages] == [m.model_dump() for m in before]
    assert all(m.id is None for m in messages)


def test_no_human_message_is_a_clear_error(pair) -> None:
    small, large = pair
    with pytest.raises(InputError, match=r"\(SystemMessage, AIMessage\) contain no human message"):
        model_of(small, large).invoke([SystemMessage("Be brief."), AIMessage("Hello.")])
    assert small.chat_requests() == [] and large.chat_requests() == []


def test_stop_sequences_and_unknown_options_are_refused(pair) -> None:
    small, large = pair
    model = model_of(small, large)
    with pytest.raises(InputError, match=r"stop sequences.*\['\\n'\]"):
        model.invoke(QUESTION, stop=["\n"])
    with pytest.raises(InputError, match=r"unknown call option\(s\) 'temperature'"):
        model.invoke(QUESTION, temperature=0.2)
    with pytest.raises(InputError, match="tau"):
        model.invoke(QUESTION, tau="high")


def test_required_tool_choice_without_tools_and_unknown_names_are_refused_at_bind(pair) -> None:
    small, large = pair
    model = model_of(small, large)
    with pytest.raises(ValueError, match="no tools are given"):
        model.bind_tools([], tool_choice="required")
    with pytest.raises(ValueError, match=r"unknown tool_choice 'weather'.*calculator"):
        model.bind_tools([calculator], tool_choice="weather")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'parallel_tool_calls'"):
        model.bind_tools([calculator], parallel_tool_calls=False)


def test_a_conversation_longer_than_the_context_names_the_limit(pair) -> None:
    small, large = pair
    small.model_extra = large.model_extra = {"max_model_len": 64}
    with pytest.raises(ContextLengthError, match="context"):
        model_of(small, large).invoke([HumanMessage("word " * 400)])


def test_a_tool_schema_the_server_rejects_is_named(pair) -> None:
    small, large = pair
    plain = large.handler

    def handler(body: dict[str, Any]) -> Reply:
        if body.get("tools"):
            return 400, json.dumps({"error": {"message": "tools[0].function.parameters: unsupported schema"}})
        return plain(body)

    large.handler = handler
    with pytest.raises(EndpointError, match=r"large model at .*HTTP 400.*unsupported schema"):
        model_of(small, large).bind_tools([calculator]).invoke(QUESTION)


def test_a_dead_large_server_is_named(pair) -> None:
    small, large = pair
    large.close()
    with pytest.raises(EndpointError, match="large model"):
        list(model_of(small, large).stream(QUESTION))


def test_construction_errors_name_the_problem(fake_small: FakeServer, fake_large: FakeServer) -> None:
    small, large = endpoint_of(fake_small), endpoint_of(fake_large)
    with pytest.raises(ValidationError, match="missing large"):
        ChatGlimpRouter(small=small)
    graph = create_glimp_graph(small, large)
    with pytest.raises(ValidationError, match=r"either graph= .* not both"):
        ChatGlimpRouter(graph=graph, small=small)
    with pytest.raises(ValidationError, match="tau"):
        ChatGlimpRouter(small=small, large=large, tau=math.nan)
    with pytest.raises(ValidationError, match="max_step_tokens"):
        ChatGlimpRouter(small=small, large=large, max_step_tokens=900, max_thinking_tokens=100)
    with pytest.raises(ValidationError, match="taau"):
        ChatGlimpRouter(small=small, large=large, taau=1.0)
    # mappings are accepted for the endpoints and the settings
    model = ChatGlimpRouter(small=small.model_dump(), large=dict(large), config={"delimiter": "\n"}, model="g")
    assert model.config.delimiter == "\n" and model.model_name == "g"


def test_exported_lazily_from_the_package() -> None:
    import glimp_graph

    assert glimp_graph.ChatGlimpRouter is ChatGlimpRouter
    assert "ChatGlimpRouter" in glimp_graph.__all__


def test_usage_is_json_serialisable(pair) -> None:
    small, large = pair
    reply = model_of(small, large).invoke(QUESTION)
    json.dumps({"usage": reply.usage_metadata, "meta": reply.response_metadata, **reply.additional_kwargs})
