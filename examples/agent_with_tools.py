"""A tool-using agent where a calculator tool and GlimpRouter reasoning compose in one LangGraph graph.

``agent -> tools -> reason -> END``:

- ``agent``: the large local model (an OpenAI-compatible endpoint, through ``ChatOpenAI``) gets the question and
  a ``calculator`` tool (``bind_tools``; llama.cpp's server parses tool calls with its Jinja chat templates,
  on by default). Small local models call tools unreliably, so the tool routing has two deterministic
  fall-backs, each real (the tool really runs on what they pick): a ``CALC: <expression>`` line in the model's
  text, else the arithmetic expression found in the question. ``tool_source`` says which one was used.
- ``tools``: LangGraph's prebuilt ``ToolNode`` runs the calculator (a safe arithmetic evaluator).
- ``reason``: the GlimpRouter graph reasons about the question with the tool's result and writes the answer
  (state mapping: the agent's messages -> ``question``, ``glimp_answer`` -> an AI message).

Run::

    python examples/agent_with_tools.py "A shop sells 23 boxes of 17 pens. How many pens is that?"
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import re
import uuid
from typing import Any

from _common import endpoints, router_config, router_options
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode

from glimp_graph import Endpoint, create_glimp_graph

_OPS = {
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
    raise ValueError(f"not plain arithmetic: {ast.dump(node)[:60]}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses, e.g. "23 * 17"."""
    try:
        value = _eval(ast.parse(expression.replace("^", "**").replace("x", "*"), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


_EXPR = re.compile(r"[-(]*\d+(?:\.\d+)?(?:\s*[-+*/x^]\s*[(]*\d+(?:\.\d+)?[)]*)+")
_CALC = re.compile(r"CALC:\s*([^\n]+)")
_WORDS = {" times ": " * ", " plus ": " + ", " minus ": " - ", " divided by ": " / ", " of ": " * "}


def expression_in(question: str) -> str | None:
    """The arithmetic in a question: an explicit expression, else its numbers multiplied (e.g. "23 boxes of 17")."""
    text = question
    for word, op in _WORDS.items():
        text = text.replace(word, op)
    match = _EXPR.search(text)
    if match:
        return match.group().strip()
    numbers = re.findall(r"\d+(?:\.\d+)?", question)
    return " * ".join(numbers) if len(numbers) >= 2 else None


class AgentState(MessagesState):
    tool_source: str
    answer: str


SYSTEM = (
    "You are a careful assistant with a calculator tool. For any arithmetic, call the calculator tool. "
    "If you cannot call tools, write one line `CALC: <expression>` instead."
)


def build_agent(agent_endpoint: Endpoint, router: CompiledStateGraph) -> CompiledStateGraph:
    """The agent graph: the agent picks a calculator call, the tool runs, GlimpRouter reasons and answers."""
    llm = ChatOpenAI(
        model=agent_endpoint.model,
        base_url=agent_endpoint.base_url,
        api_key=agent_endpoint.api_key,
        temperature=0.0,
        max_tokens=64,
        max_retries=0,
        timeout=agent_endpoint.timeout,
        name="agent_model",
    )
    with_tools = llm.bind_tools([calculator])

    def agent(state: AgentState) -> dict[str, Any]:
        question = next(m for m in reversed(state["messages"]) if isinstance(m, HumanMessage))
        prompt = [SystemMessage(SYSTEM), question]
        try:
            reply = with_tools.invoke(prompt)
        except Exception:  # the server rejects tools for this model's chat template: plain text then
            reply = llm.invoke(prompt)
        calls = [c for c in reply.tool_calls if c["name"] == "calculator" and c["args"].get("expression")]
        if calls:
            return {"messages": [reply], "tool_source": "model tool call"}
        found = _CALC.search(str(reply.content))
        source = "CALC line"
        expression = found.group(1).strip() if found else None
        if expression is None or calculator.invoke({"expression": expression}).startswith("error"):
            expression, source = expression_in(str(question.content)), "expression in the question"
        if expression is None:
            return {"messages": [reply], "tool_source": "none"}
        call = {"name": "calculator", "args": {"expression": expression}, "id": f"call_{uuid.uuid4().hex[:12]}"}
        return {"messages": [AIMessage(content=str(reply.content), tool_calls=[call])], "tool_source": source}

    def after_agent(state: AgentState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else "reason"

    def reason(state: AgentState) -> dict[str, Any]:
        question = next(m for m in reversed(state["messages"]) if isinstance(m, HumanMessage)).content
        facts = [
            f"The calculator says {c['args']['expression']} = {t.content}."
            for m in state["messages"]
            if isinstance(m, AIMessage)
            for c in m.tool_calls
            for t in state["messages"]
            if isinstance(t, ToolMessage) and t.tool_call_id == c["id"]
        ]
        out = router.invoke({"question": " ".join([str(question), *facts])})
        return {"messages": [AIMessage(out["glimp_answer"], name="glimp_router")], "answer": out["glimp_answer"]}

    graph = StateGraph(AgentState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([calculator]))
    graph.add_node("reason", reason)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", after_agent, ["tools", "reason"])
    graph.add_edge("tools", "reason")
    graph.add_edge("reason", END)
    return graph.compile(name="agent_with_tools")


def main() -> None:
    parser = router_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("question", nargs="?", default="A shop sells 23 boxes of 17 pens. How many pens is that?")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()

    with endpoints() as (small, large):
        router = create_glimp_graph(small, large, config=router_config(args))
        result = build_agent(large, router).invoke({"messages": [HumanMessage(args.question)]})

    tool_results = [m.content for m in result["messages"] if isinstance(m, ToolMessage)]
    if args.json:
        out = {
            "tool_source": result.get("tool_source"),
            "tool_results": tool_results,
            "answer": result.get("answer"),
            "messages": [[m.type, str(m.content)] for m in result["messages"]],
        }
        print(json.dumps(out))
        return
    print(f"tool call from: {result.get('tool_source')}; calculator returned: {tool_results}")
    print(f"answer: {result.get('answer')}")


if __name__ == "__main__":
    main()
