"""The driver: runs a node function written once as a generator, synchronously or asynchronously.

The contract is in the package docstring (:mod:`glimp_graph.nodes`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Generic, TypeVar

from langchain_core.runnables import RunnableLambda

from glimp_graph.endpoints import Call, Completion, Request
from glimp_graph.errors import GlimpError
from glimp_graph.nodes.common import NodeLogic, Router
from glimp_graph.state import GlimpState

NodeFunction = Callable[[GlimpState, Router], NodeLogic]
"""A node function: ``(state, router)`` to a generator of model calls that returns the state update."""


T = TypeVar("T")


class _Run(Generic[T]):
    """One run of call logic: the model call it waits for, then the value it returned.

    It also counts the prompt tokens of the calls it made, per model (the one place they are summed for
    :class:`~glimp_graph.state.RunStats`).
    """

    def __init__(self, logic: Generator[Call, Completion, T]) -> None:
        self._logic = logic
        self.prompt_tokens = {"small": 0, "large": 0}
        self.call: Call | None = None
        self.value: T | None = None
        self.resume(None)

    def resume(self, outcome: Completion | GlimpError | None) -> None:
        """Hand ``outcome`` back at the ``yield`` (a result is sent, an error raised there) and take the next call."""
        if isinstance(outcome, Completion) and self.call is not None:
            self.prompt_tokens[self.call[0].role] += outcome.prompt_tokens
        try:
            if isinstance(outcome, GlimpError):
                self.call = self._logic.throw(outcome)
            else:
                self.call = self._logic.send(outcome)  # None starts the generator
        except StopIteration as done:
            self.call, self.value = None, done.value


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


def _sync(logic: Generator[Call, Completion, T]) -> _Run[T]:
    this = _Run(logic)
    while this.call is not None:
        client, request = this.call
        this.resume(_outcome(client.complete, request))
    return this


async def _async(logic: Generator[Call, Completion, T]) -> _Run[T]:
    this = _Run(logic)
    while this.call is not None:
        client, request = this.call
        this.resume(await _aoutcome(client.acomplete, request))
    return this


def drive(logic: Generator[Call, Completion, T]) -> T:
    """Run call logic (a node function's or a scorer's ``glimpse`` generator) with blocking calls.

    Each yielded ``(client, request)`` goes to ``client.complete``; its completion is sent back at the ``yield``,
    its :class:`~glimp_graph.errors.GlimpError` raised there.

    Returns:
        What the generator returned.

    """
    return _sync(logic).value  # type: ignore[return-value]


async def adrive(logic: Generator[Call, Completion, T]) -> T:
    """:func:`drive`, awaiting ``client.acomplete`` for each call."""
    return (await _async(logic)).value  # type: ignore[return-value]


def _with_prompt_tokens(state: GlimpState, this: _Run[GlimpState]) -> GlimpState:
    update = dict(this.value or {})
    for role, tokens in this.prompt_tokens.items():
        if tokens:
            key = f"glimp_{role}_prompt_tokens"
            update[key] = int(state.get(key, 0)) + tokens  # type: ignore[literal-required]
    return update  # type: ignore[return-value]


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
        run_router = router.for_run(state.get("glimp_settings"))
        return _with_prompt_tokens(state, _sync(function(state, run_router)))

    async def arun(state: GlimpState) -> GlimpState:
        run_router = router.for_run(state.get("glimp_settings"))
        return _with_prompt_tokens(state, await _async(function(state, run_router)))

    run.__name__ = arun.__name__ = name
    return RunnableLambda(run, afunc=arun, name=name)
