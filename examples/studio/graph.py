"""The GlimpRouter graph for ``langgraph dev`` (LangGraph Studio) / LangGraph Server, built from environment variables.

Start the two models (``glimp serve`` prints the exports), then, from ``examples/studio``::

    export GLIMP_SMALL_URL=http://127.0.0.1:8001/v1 GLIMP_LARGE_URL=http://127.0.0.1:8002/v1
    langgraph dev --no-browser

Variables: ``GLIMP_SMALL_URL``, ``GLIMP_LARGE_URL`` (required), ``GLIMP_SMALL_MODEL``, ``GLIMP_LARGE_MODEL``,
``GLIMP_API_KEY``, ``GLIMP_TAU`` (default 1.0), ``GLIMP_MAX_STEP_TOKENS``, ``GLIMP_MAX_THINKING_TOKENS``,
``GLIMP_FINAL_MAX_TOKENS``. The server gives the graph its own checkpointer (threads), so none is set here.
"""

from __future__ import annotations

import os

from glimp_graph import Endpoint, create_glimp_graph


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: start the models (`glimp serve` prints the exports) and export it")
    return value


def make_graph():
    """Build the graph from the environment."""
    key = {"api_key": os.environ["GLIMP_API_KEY"]} if os.environ.get("GLIMP_API_KEY") else {}
    config: dict[str, float | int] = {"tau": float(os.environ.get("GLIMP_TAU", "1.0"))}
    for field in ("max_step_tokens", "max_thinking_tokens", "final_max_tokens"):
        value = os.environ.get(f"GLIMP_{field.upper()}")
        if value:
            config[field] = int(value)
    return create_glimp_graph(
        Endpoint(base_url=_required("GLIMP_SMALL_URL"), model=os.environ.get("GLIMP_SMALL_MODEL", "small"), **key),
        Endpoint(base_url=_required("GLIMP_LARGE_URL"), model=os.environ.get("GLIMP_LARGE_MODEL", "large"), **key),
        config=config,
    )


graph = make_graph()
