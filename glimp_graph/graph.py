"""The factory: the only place where the graph's nodes and edges are declared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from glimp_graph.config import GlimpConfig, GlimpContext
from glimp_graph.endpoints import Endpoint, ModelClient
from glimp_graph.nodes import Router, final_answer, large_step, node, prepare_node, probe, route, small_step
from glimp_graph.state import GlimpInput, GlimpOutput, GlimpState


def _after_step(state: GlimpState) -> Literal["probe", "final_answer"]:
    return "final_answer" if state.get("glimp_stop") else "probe"


def create_glimp_graph(
    small: Endpoint | Mapping[str, Any],
    large: Endpoint | Mapping[str, Any],
    *,
    config: GlimpConfig | Mapping[str, Any] | None = None,
    checkpointer: Checkpointer = None,
    name: str = "glimp_router",
) -> CompiledStateGraph:
    """Build the GlimpRouter graph: the small model glimps one token per step, its entropy routes the step.

    The graph runs ``prepare -> probe -> route -> small_step | large_step -> probe ... -> final_answer``.
    Its input is ``{"question": str}`` or ``{"messages": [...]}`` (the last human message is the question; tool
    calls and tool results after it are read too), optionally with ``"glimp_tau"`` to override the threshold for
    one run; its output is ``glimp_answer``, ``glimp_steps`` (a :class:`~glimp_graph.state.Step` each),
    ``glimp_stats`` (:class:`~glimp_graph.state.RunStats`) and ``glimp_tool_calls`` /
    ``glimp_invalid_tool_calls``, plus the answer as an AI message in ``messages`` when the question came from
    ``messages``. Settings for one run (tau, budgets, prompt, tools) go in the runtime context:
    ``graph.invoke(inputs, context={"tau": 0.5})`` (:class:`~glimp_graph.config.GlimpContext`), so one compiled
    graph serves every setting. The compiled graph can be added as a node of a host graph as it is.

    Args:
        small: The small model's endpoint (it probes every step and writes the routine ones).
        large: The large model's endpoint (it writes the hard steps and the final answer).
        config: Router settings (:class:`~glimp_graph.config.GlimpConfig` or a mapping of its fields).
        checkpointer: A LangGraph checkpointer, for runs that survive a crash (resume with the same thread_id).
        name: The compiled graph's name (its run name in traces).

    Returns:
        The compiled graph, with ``invoke`` / ``ainvoke`` / ``stream`` / ``astream`` / ``batch``.

    Raises:
        pydantic.ValidationError: A setting is invalid; the message names it and the allowed values.

    Example:
        >>> from glimp_graph import Endpoint, create_glimp_graph
        >>> graph = create_glimp_graph(
        ...     small=Endpoint(base_url="http://127.0.0.1:8001/v1", model="qwen2.5-coder-0.5b"),
        ...     large=Endpoint(base_url="http://127.0.0.1:8002/v1", model="qwen2.5-coder-1.5b"),
        ...     config={"tau": 1.0},
        ... )
        >>> result = graph.invoke({"question": "What is 17 * 3?"})  # doctest: +SKIP
        >>> print(result["glimp_answer"])  # doctest: +SKIP
        >>> for step in result["glimp_steps"]:  # doctest: +SKIP
        ...     print(step.model, round(step.h_init, 2), step.text)

    """
    settings = config if isinstance(config, GlimpConfig) else GlimpConfig.model_validate(dict(config or {}))
    router = Router(
        config=settings,
        small=ModelClient(small if isinstance(small, Endpoint) else Endpoint.model_validate(dict(small)), "small"),
        large=ModelClient(large if isinstance(large, Endpoint) else Endpoint.model_validate(dict(large)), "large"),
        scorer=settings.make_scorer(),
    )

    builder = StateGraph(GlimpState, context_schema=GlimpContext, input_schema=GlimpInput, output_schema=GlimpOutput)
    builder.add_node(prepare_node(router))
    builder.add_node(node(router, probe))
    builder.add_node(route, destinations=("small_step", "large_step"))
    builder.add_node(node(router, small_step))
    builder.add_node(node(router, large_step))
    builder.add_node(node(router, final_answer))

    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "probe")
    builder.add_edge("probe", "route")
    builder.add_conditional_edges("small_step", _after_step, ["probe", "final_answer"])
    builder.add_conditional_edges("large_step", _after_step, ["probe", "final_answer"])
    builder.add_edge("final_answer", END)
    return builder.compile(checkpointer=checkpointer, name=name)
