"""A LangChain agent (``create_agent``) whose model is GlimpRouter (``ChatGlimpRouter``) and whose tool is a calculator.

The agent loop is LangChain's own: each model call is a GlimpRouter run (the small and the large model reason in
steps, the large one answers or calls a tool), LangGraph's ``ToolNode`` runs the calculator, and the next model
call reasons over the conversation with the tool's result in it.

Small local models cannot be relied on to call a tool by themselves (Qwen2.5-Coder-1.5B on llama.cpp writes the
call as a code block that the server does not parse), so the ``calculator_first`` middleware forces it:
the first model call gets ``tool_choice="calculator"`` (llama.cpp: a grammar that admits only that call; vLLM:
guided decoding), and once the result is in, ``tool_choice="none"`` makes the model answer. With a model that
calls tools well, drop the middleware and the model chooses (``tool_choice="auto"``).

Run (starts the local default models, or uses GLIMP_SMALL_URL / GLIMP_LARGE_URL when set)::

    python examples/agent_with_tools.py "A shop sells 23 boxes of 17 pens. How many pens is that?"
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import re
from collections.abc import Callable
from typing import Any

from _common import endpoints, router_config, router_options
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from glimp_graph import ChatGlimpRouter

_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        right = _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](_eval(node.left), right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"not plain arithmetic: {ast.unparse(node)[:60]}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses, e.g. "23 * 17"."""
    # small models write "16 - 3 - 4 = 9" or "$1,000 x 2": the left side, without units and separators
    text = expression.split("=")[0].replace("^", "**").replace("\u00d7", "*").replace("$", "").replace(",", "")
    text = re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", " * ", text)
    try:
        value = _eval(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        return f"error: {exc}"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


@wrap_model_call
def calculator_first(request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
    """Force the calculator call on the first model call; after a tool result, ask for the answer."""
    has_result = any(isinstance(m, ToolMessage) for m in request.messages)
    return handler(request.override(tool_choice="none" if has_result else "calculator"))


SYSTEM = (
    "You solve word problems. Use the calculator tool for the arithmetic, then answer with the number and a "
    "short sentence."
)


def build_agent(model: ChatGlimpRouter) -> Any:
    """The agent: LangChain's ``create_agent`` with GlimpRouter as the model and the calculator as the tool."""
    return create_agent(model=model, tools=[calculator], system_prompt=SYSTEM, middleware=[calculator_first])


def main() -> None:
    parser = router_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("question", nargs="?", default="A shop sells 23 boxes of 17 pens. How many pens is that?")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()

    with endpoints() as (small, large):
        model = ChatGlimpRouter(small=small, large=large, config=router_config(args))
        result = build_agent(model).invoke({"messages": [HumanMessage(args.question)]})

    messages = result["messages"]
    calls = [{"name": c["name"], "args": c["args"]} for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    invalid = [dict(c) for m in messages if isinstance(m, AIMessage) for c in m.invalid_tool_calls]
    tool_results = [str(m.content) for m in messages if isinstance(m, ToolMessage)]
    answer = messages[-1].text if isinstance(messages[-1], AIMessage) else ""
    turns = [m for m in messages if isinstance(m, AIMessage)]
    if args.json:
        out = {
            "answer": answer,
            "tool_calls": calls,
            "invalid_tool_calls": invalid,
            "tool_results": tool_results,
            "messages": [[m.type, str(m.content)] for m in messages],
            "turns": [
                {
                    "steps": [
                        (b["extras"]["model"], b["reasoning"]) for b in m.content_blocks if b["type"] == "reasoning"
                    ],
                    "usage": m.usage_metadata,
                }
                for m in turns
            ],
        }
        print(json.dumps(out))
        return
    for i, turn in enumerate(turns):
        steps = [b["extras"]["model"] for b in turn.content_blocks if b["type"] == "reasoning"]
        did = f"calls {turn.tool_calls[0]['name']}({turn.tool_calls[0]['args']})" if turn.tool_calls else "answers"
        print(f"turn {i}: {len(steps)} steps ({steps.count('large')} by the large model), {did}")
    for call in invalid:
        print(f"a tool call that could not be run: {call['name']}({call['args']}): {call['error']}")
    print(f"calculator returned: {tool_results}")
    print(f"answer: {answer}")


if __name__ == "__main__":
    main()
