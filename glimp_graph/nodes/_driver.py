"""The driver: runs a node function written once as a generator, synchronously or asynchronously.

The contract is in the package docstring (:mod:`glimp_graph.nodes`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from langchain_core.runnables import RunnableLambda

from glimp_graph.endpoints import Call, Completion, Request
from glimp_graph.errors import GlimpError
from glimp_graph.nodes.common import NodeLogic, Router
from glimp_graph.state import GlimpState

NodeFunction = Callable[[GlimpState, Router], NodeLogic]
"""A node function: ``(state, router)`` to a generator of model calls that returns the state update."""


class _Run:
    """One run of a node function: the model call it waits for, then the state update it returned."""

    def __init__(self, logic: NodeLogic) -> None:
        self._logic = logic
        self.call: Call | None = None
        self.update: GlimpState = {}
        self.resume(None)

    def resume(self, outcome: Completion | GlimpError | None) -> None:
        """Hand ``outcome`` back at the ``yield`` (a result is sent, an error raised there) and take the next call."""
        try:
            if isinstance(outcome, GlimpError):
                self.call = self._logic.throw(outcome)
            else:
                self.call = self._logic.send(outcome)  # None starts the generator
        except StopIteration as done:
            self.call, self.update = None, done.value


def _outcome(complete: Callable[[Request], Completion], request: Request) -> Completion | GlimpError:
    try:
        return complete(request)
    except GlimpError as exc:
        return exc


async def _aoutcome(acomplete: Callable[[Request], Awaitable[Completion]], request: Request) -> Completion | GlimpError:
    try:
        return await acomplete(request)
    except GlimpError as exc:
        return exc


def node(router: Router, function: NodeFunction) -> RunnableLambda:
    """``function`` bound to ``router``, as a LangGraph node named after the function.

    Args:
        router: The settings, clients and scorer the node works with.
        function: A node function (the generator contract is in :mod:`glimp_graph.nodes`).

    Returns:
        A ``RunnableLambda`` named ``function.__name__`` whose sync body calls ``client.complete`` and whose
        async body awaits ``client.acomplete``, so ``invoke`` and ``ainvoke`` share every line of the function.

    """
    name = function.__name__

    def run(state: GlimpState) -> GlimpState:
        this = _Run(function(state, router))
        while this.call is not None:
            client, request = this.call
            this.resume(_outcome(client.complete, request))
        return this.update

    async def arun(state: GlimpState) -> GlimpState:
        this = _Run(function(state, router))
        while this.call is not None:
            client, request = this.call
            this.resume(await _aoutcome(client.acomplete, request))
        return this.update

    run.__name__ = arun.__name__ = name
    return RunnableLambda(run, afunc=arun, name=name)
