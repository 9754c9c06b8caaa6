"""The ``glimp`` command line: ask a question with GlimpRouter, serve the models or the router, evaluate, fetch.

This package is the only place (with the examples) that reads environment variables: ``GLIMP_SMALL_URL``,
``GLIMP_LARGE_URL``, ``GLIMP_SMALL_MODEL``, ``GLIMP_LARGE_MODEL``, ``GLIMP_API_KEY``, ``GLIMP_CACHE_DIR`` and
``GLIMP_ROUTER_TOKEN``. One module per command; :mod:`glimp_graph.cli.options` holds what they share.
"""

from __future__ import annotations

import click

from glimp_graph.cli.ask import ask
from glimp_graph.cli.eval import calibrate, eval_
from glimp_graph.cli.fetch import fetch
from glimp_graph.cli.options import GlimpGroup
from glimp_graph.cli.profile import profile
from glimp_graph.cli.project import project
from glimp_graph.cli.serve import serve
from glimp_graph.cli.serve_router import serve_router

__all__ = ["main"]


@click.group(cls=GlimpGroup)
@click.version_option(package_name="glimp-graph")
def main() -> None:
    """GlimpRouter: a small model glimps one token per reasoning step; its entropy routes the step."""


for _command in (ask, eval_, calibrate, serve, fetch, serve_router, profile, project):
    main.add_command(_command)
