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
    """One run of a node function: the model call it waits for, then the state update it returned.

    It also counts the prompt tokens of the calls it made (per model), the one place they are summed for
    :class:`~glimp_graph.state.RunStats`.
    """

    def __init__(self, function: NodeFunction, state: GlimpState, router: Router) -> None:
        self._state = state
        self._logic = function(state, router.for_run(state.get("glimp_settings")))
        self._prompt_tokens = {"small": 0, "large": 0}
        self.call: Call | None = None
        self.update: GlimpState = {}
        self.resume(None)

    def resume(self, outcome: Completion | GlimpError | None) -> None:
        """Hand ``outcome`` back at the ``yield`` (a result is sent, an error raised there) and take the next call."""
        if isinstance(outcome, Completion) and self.call is not None:
            self._prompt_tokens[self.call[0].role] += outcome.prompt_tokens
        try:
            if isinstance(outcome, GlimpError):
                self.call = self._logic.throw(outcome)
            else:
                self.call = self._logic.send(outcome)  # None starts the generator
        except StopIteration as done:
            self.call, self.update = None, dict(done.value)
            for role, tokens in self._prompt_tokens.items():
                if tokens:
                    key = f"glimp_{role}_prompt_tokens"
                    self.update[key] = int(self._state.get(key, 0)) + tokens  # type: ignore[literal-required]


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
        The function gets the run's router (:meth:`Router.for_run` with the run's ``glimp_settings``).

    """
    name = function.__name__

    def run(state: GlimpState) -> GlimpState:
        this = _Run(function, state, router)
        while this.call is not None:
            client, request = this.call
            this.resume(_outcome(client.complete, request))
        return this.update

    async def arun(state: GlimpState) -> GlimpState:
        this = _Run(function, state, router)
        while this.call is not None:
            client, request = this.call
            this.resume(await _aoutcome(client.acomplete, request))
        return this.update

    run.__name__ = arun.__name__ = name
    return RunnableLambda(run, afunc=arun, name=name)
