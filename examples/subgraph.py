"""GlimpRouter inside a host LangGraph graph, two ways: as a node with no glue code, and called with state mapping.

1. The host state is ``MessagesState`` (plus its own keys): the compiled router is added with ``add_node`` as
   it is. It reads the last human message as the question and appends its answer as an AI message.
2. The host state has its own keys (``task``, ``solution``): a node calls the router and maps the keys
   (``task`` -> ``question``, ``glimp_answer`` -> ``solution``).

Both run ``plan -> reason -> check``. Run::

    python examples/subgraph.py "What is 12 + 30?"
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from _common import endpoints, router_config, router_options
from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from typing_extensions import TypedDict

from glimp_graph import create_glimp_graph


def _verdict(answer: str) -> str:
    return "has a number" if re.search(r"\d", answer) else "no number in the answer"


# --------------------------------------------------------------------------- 1. no glue code


class ChatHost(MessagesState):
    plan: str
    verdict: str


def build_chat_host(router: CompiledStateGraph) -> CompiledStateGraph:
    """``plan -> reason (the compiled router, added as it is) -> check`` over ``MessagesState``."""

    def plan(state: ChatHost) -> dict[str, Any]:
        return {"plan": f"reason in short steps about: {state['messages'][-1].content}"}

    def check(state: ChatHost) -> dict[str, Any]:
        return {"verdict": _verdict(str(state["messages"][-1].content))}

    host = StateGraph(ChatHost)
    host.add_node("plan", plan)
    host.add_node("reason", router)  # no glue: the router speaks `messages`
    host.add_node("check", check)
    host.add_edge(START, "plan")
    host.add_edge("plan", "reason")
    host.add_edge("reason", "check")
    host.add_edge("check", END)
    return host.compile(name="chat_host")


# --------------------------------------------------------------------------- 2. state mapping


class TaskHost(TypedDict, total=False):
    task: str
    plan: str
    solution: str
    steps_used: int
    small_share: float
    verdict: str


def build_task_host(router: CompiledStateGraph) -> CompiledStateGraph:
    """``plan -> reason (a node that calls the router and maps the keys) -> check`` over a custom state."""

    def plan(state: TaskHost) -> dict[str, Any]:
        return {"plan": f"reason in short steps about: {state['task']}"}

    def reason(state: TaskHost) -> dict[str, Any]:
        out = router.invoke({"question": state["task"]})
        stats = out["glimp_stats"]
        return {"solution": out["glimp_answer"], "steps_used": stats.steps, "small_share": 1 - stats.large_share}

    def check(state: TaskHost) -> dict[str, Any]:
        return {"verdict": _verdict(state["solution"])}

    host = StateGraph(TaskHost)
    host.add_node("plan", plan)
    host.add_node("reason", reason)
    host.add_node("check", check)
    host.add_edge(START, "plan")
    host.add_edge("plan", "reason")
    host.add_edge("reason", "check")
    host.add_edge("check", END)
    return host.compile(name="task_host")


def main() -> None:
    parser = router_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("question", nargs="?", default="What is 12 + 30?")
    parser.add_argument("--json", action="store_true", help="print both results as one JSON object")
    args = parser.parse_args()

    with endpoints() as (small, large):
        router = create_glimp_graph(small, large, config=router_config(args))
        chat = build_chat_host(router).invoke({"messages": [HumanMessage(args.question)]})
        task = build_task_host(router).invoke({"task": args.question})

    answer = chat["messages"][-1]
    out = {
        "chat_host": {
            "messages": [[m.type, m.content] for m in chat["messages"]],
            "reasoning": answer.additional_kwargs.get("reasoning_content", ""),
            "plan": chat["plan"],
            "verdict": chat["verdict"],
        },
        "task_host": dict(task),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"1. MessagesState host: answer={answer.content!r} verdict={chat['verdict']!r}")
    print(f"2. custom-state host: solution={task['solution']!r} steps={task['steps_used']} verdict={task['verdict']!r}")


if __name__ == "__main__":
    main()
