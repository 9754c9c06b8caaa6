"""Runs node logic written once as a generator, synchronously or asynchronously.

A node's logic yields ``(client, request)`` pairs and receives the :class:`~glimp_graph.endpoints.Completion`
back (or, when the call fails, the :class:`~glimp_graph.errors.GlimpError` raised at the ``yield``, so the logic
can fall back); it returns the state update. :func:`as_node` wraps it in a ``RunnableLambda`` whose sync body calls
``client.complete`` and whose async body awaits ``client.acomplete``, so ``invoke`` and ``ainvoke`` share every
line of the logic.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableLambda

from glimp_graph.endpoints import Call, Completion
from glimp_graph.errors import GlimpError

Logic = Callable[[dict[str, Any], RunnableConfig], Generator[Call, Completion, Any]]


def as_node(logic: Logic, name: str) -> RunnableLambda:
    """Wrap generator ``logic`` as a LangGraph node with both a sync and an async body."""

    def run(state: dict[str, Any], config: RunnableConfig) -> Any:
        gen = logic(state, config)
        try:
            client, request = next(gen)
            while True:
                try:
                    result = client.complete(request)
                except GlimpError as exc:
                    client, request = gen.throw(exc)
                else:
                    client, request = gen.send(result)
        except StopIteration as done:
            return done.value

    async def arun(state: dict[str, Any], config: RunnableConfig) -> Any:
        gen = logic(state, config)
        try:
            client, request = next(gen)
            while True:
                try:
                    result = await client.acomplete(request)
                except GlimpError as exc:
                    client, request = gen.throw(exc)
                else:
                    client, request = gen.send(result)
        except StopIteration as done:
            return done.value

    run.__name__ = arun.__name__ = name
    return RunnableLambda(run, afunc=arun, name=name)
