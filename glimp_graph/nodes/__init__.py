"""The graph's nodes, one concern each: prepare, probe, route, small_step, large_step, final_answer.

A node function takes the state (:class:`~glimp_graph.state.GlimpState`) and the :class:`Router` (the settings,
the two model clients, the scorer) and is a generator, so that its logic is written once for ``invoke`` and
``ainvoke``:

* a model call is a ``yield``: the function yields ``(client, request)``
  (:data:`~glimp_graph.endpoints.Call`) and does not call the client itself;
* the call's result comes back at the ``yield``: ``done = yield client, request`` receives the
  :class:`~glimp_graph.endpoints.Completion`;
* a call that fails raises its :class:`~glimp_graph.errors.GlimpError` at the same ``yield``, so the function
  catches it to fall back (the small model's server died: the large model writes the step) or lets it propagate;
* the function returns the state update (``return {...}``).

:func:`node` binds the router and names the node after the function (``builder.add_node(node(router, probe))``);
its driver sends each call to ``client.complete`` under ``invoke`` and awaits ``client.acomplete`` under
``ainvoke``. A scorer's ``glimpse`` follows the same contract (``yield from router.scorer.glimpse(ctx)``);
:func:`drive` / :func:`adrive` run any such generator outside the graph (the per-turn middleware uses them)::

    def probe(state: GlimpState, router: Router) -> NodeLogic:
        done = yield router.small, Request(...)  # the driver calls the model here
        return {"glimp_probe": ...}

``route`` calls no model and is a plain function; :func:`prepare_node` builds the ``prepare`` node, which checks
both endpoints at once (in threads, or with ``asyncio.gather``) before any model call.
"""

from glimp_graph.nodes._driver import NodeFunction, adrive, drive, node
from glimp_graph.nodes.common import NodeLogic, Router
from glimp_graph.nodes.final import final_answer
from glimp_graph.nodes.prepare import prepare, prepare_node
from glimp_graph.nodes.probe import probe
from glimp_graph.nodes.route import route
from glimp_graph.nodes.step import large_step, small_step

__all__ = [
    "NodeFunction",
    "NodeLogic",
    "Router",
    "adrive",
    "drive",
    "final_answer",
    "large_step",
    "node",
    "prepare",
    "prepare_node",
    "probe",
    "route",
    "small_step",
]
