"""Routing per agent turn: a ``create_agent`` agent whose model calls go to the small or the large model by a glimpse.

The agent's model calls are short turns (answer a question, call a tool, read its result). Before each one,
``GlimpTurnRouter`` asks the small model for the first token of its reply (one token, temperature 0, with
log-probabilities); when that token's entropy H_init is ``<= tau`` the small model answers the turn, else the
large one. The conversation runs in one thread (an in-memory checkpointer), one turn per question, and each
answer carries its routing decision in ``response_metadata["glimp_decision"]``.

A ``calculator`` tool is bound, and the chosen model gets it. vLLM with ``--enable-auto-tool-choice
--tool-call-parser hermes`` returns Qwen2.5's ``<tool_call>`` blocks as tool calls; llama.cpp's server returns
the Qwen2.5-Coder models' calls as text (a JSON object, a ```json block), so a second middleware,
``text_tool_calls``, reads such a call with ``glimp_graph.tool_calls.tool_calls_from`` (the reader the router's
own final answer uses) on a turn that has no tool result yet, and takes the tools away once the result is in
(else the small models write the call again instead of answering). It sits outside the router, so the glimpse
sees the request the answer gets.

Run (starts the local default models, or uses GLIMP_SMALL_URL / GLIMP_LARGE_URL when set)::

    python examples/turn_routing.py "What is 17 * 3?" "And what is that plus 9?" --tau 1.0
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import operator
import sys
import uuid
from collections.abc import Callable
from typing import Any

from _common import endpoints
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from glimp_graph.middleware import GlimpTurnRouter, chat_openai
from glimp_graph.tool_calls import check_tools, tool_calls_from

QUESTIONS = ["What is 17 * 3?", "And what is that plus 9?", "Name the capital of France in one word."]
SYSTEM = (
    "You are a concise assistant. For arithmetic, call the calculator tool. Once you have its result, reply with "
    "one short sentence that states the result in words and digits."
)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    raise ValueError("only numbers with + - * / are allowed")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses, e.g. '17 * 3 + 9'."""
    try:
        value = _eval(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


@wrap_model_call
def text_tool_calls(request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
    """Before a tool result: a call the model wrote as text becomes a tool call. After it: no tools, answer."""
    if isinstance(request.messages[-1], ToolMessage):
        return handler(request.override(tools=[], tool_choice=None))
    response = handler(request)
    message = response.result[-1]
    if not request.tools or not isinstance(message, AIMessage) or message.tool_calls:
        return response
    tools, choice = check_tools(request.tools, request.tool_choice)
    text, calls, invalid = tool_calls_from("llama.cpp", message.text, [], [], tools, choice)
    if not calls and not invalid:
        return response
    read = message.model_copy(update={"content": text, "tool_calls": calls, "invalid_tool_calls": invalid})
    return ModelResponse(result=[*response.result[:-1], read], structured_response=response.structured_response)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", default=QUESTIONS, help="one turn each, in one conversation")
    parser.add_argument("--tau", type=float, default=1.0, help="entropy threshold in nats (inf, -inf ok)")
    parser.add_argument("--scorer", default="glimp", help="glimp, random, fixed, step-entropy, ...")
    parser.add_argument("--max-tokens", type=int, default=128, help="token cap of one turn's reply")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    if math.isnan(args.tau):
        sys.exit("--tau must not be nan")

    with endpoints() as (small, large):
        # the minimum is GlimpTurnRouter(small, large, tau=...); chat_openai() caps the turns for a CPU run
        router = GlimpTurnRouter(
            chat_openai(small, max_tokens=args.max_tokens),
            chat_openai(large, max_tokens=args.max_tokens),
            tau=args.tau,
            scorer=args.scorer,
        )
        agent = create_agent(
            router.large_model,
            tools=[calculator],
            system_prompt=SYSTEM,
            middleware=[text_tool_calls, router],  # the first is the outermost
            checkpointer=InMemorySaver(),
        )
        thread = {"configurable": {"thread_id": str(uuid.uuid4())}}
        turns: list[dict[str, Any]] = []
        for question in args.questions:
            result = agent.invoke({"messages": [HumanMessage(question)]}, thread)
            messages = result["messages"]
            start = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
            new = messages[start + 1 :]
            calls = [m for m in new if isinstance(m, AIMessage)]
            turns.append(
                {
                    "question": question,
                    "answer": messages[-1].text,
                    "decisions": [m.response_metadata.get("glimp_decision") for m in calls],
                    "tool_calls": [c["name"] for m in calls for c in m.tool_calls],
                    "tool_results": [m.text for m in new if isinstance(m, ToolMessage)],
                }
            )

    decisions = [d for t in turns for d in t["decisions"]]
    small_share = sum(d["model"] == "small" for d in decisions) / len(decisions) if decisions else 0.0
    if args.json:
        print(json.dumps({"turns": turns, "small_share": small_share, "tau": args.tau}, default=str))
        return
    for t in turns:
        print(f"\n> {t['question']}")
        for d in t["decisions"]:
            h = "  -  " if d["h_init"] is None else f"{d['h_init']:5.2f}"
            print(f"  model call {d['index']}: {d['model']:<5} H_init={h} tau={d['tau']:g}")
        if t["tool_calls"]:
            print(f"  tools: {t['tool_calls']} -> {t['tool_results']}")
        print(f"  {t['answer'].strip()[:300]}")
    print(f"\n{len(decisions)} model calls, {small_share:.0%} answered by the small model")


if __name__ == "__main__":
    main()
