"""The GlimpRouter graph and its OpenAI-compatible face for LangGraph's server, built from environment variables.

``deploy/langgraph.json`` serves ``graph`` as the assistant ``glimp_router`` (runs, threads, checkpoints in the
server's Postgres) and mounts ``app`` (``glimp_graph.router_server.create_app``) on the same port, so one server
offers both LangGraph's API and ``POST /v1/chat/completions`` / ``GET /v1/models``. The face's Prometheus metrics
are at ``GET /glimp/metrics`` (``METRICS_PATH``): LangGraph's server keeps ``/metrics`` for its own, and a mounted
app cannot shadow it.

Variables (the library itself reads none; this module is the deployment's one place that does):

- ``GLIMP_SMALL_URL``, ``GLIMP_LARGE_URL`` (required): the two OpenAI-compatible model servers (``.../v1``);
- ``GLIMP_SMALL_MODEL``, ``GLIMP_LARGE_MODEL``: the model names they serve (default ``small`` / ``large``);
- ``GLIMP_API_KEY``: the model servers' key, if they need one;
- ``GLIMP_TAU`` (default 1.0), ``GLIMP_PROMPT`` (``steps`` or ``r1``), ``GLIMP_MAX_STEP_TOKENS``,
  ``GLIMP_MAX_THINKING_TOKENS``, ``GLIMP_MAX_STEPS``, ``GLIMP_FINAL_MAX_TOKENS``: router settings;
- ``GLIMP_ROUTER_TOKEN``: the bearer token the OpenAI face requires (unset: no token; set it whenever the port
  is reachable from other machines), ``GLIMP_MODEL_NAME``: the model id it reports (default ``glimp-router``),
  ``GLIMP_MAX_TOKENS_LIMIT``: the largest ``max_tokens`` a request may ask (default 4096). ``GLIMP_ROUTER_TOKEN``
  also guards ``/glimp/metrics`` (unset: the metrics answer only on a loopback connection).

No checkpointer is passed: under LangGraph's server the server supplies its own (Postgres in ``compose.yaml``).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import SecretStr

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.router_server import create_app

METRICS_PATH = "/glimp/metrics"
_INT_SETTINGS = ("max_step_tokens", "max_thinking_tokens", "max_steps", "final_max_tokens")


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{name} is not set: the URL of an OpenAI-compatible model server, e.g. http://HOST:8000/v1")
    return value


def _number(name: str, kind: type[int] | type[float], default: str | None = None) -> int | float | None:
    raw = os.environ.get(name, default)
    if raw is None or raw == "":
        return None
    try:
        return kind(raw)
    except ValueError:
        raise RuntimeError(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None


def endpoints() -> tuple[Endpoint, Endpoint]:
    """The small and the large model server, from ``GLIMP_SMALL_*`` / ``GLIMP_LARGE_*`` and ``GLIMP_API_KEY``."""
    key = {"api_key": os.environ["GLIMP_API_KEY"]} if os.environ.get("GLIMP_API_KEY") else {}
    small = Endpoint(base_url=_required("GLIMP_SMALL_URL"), model=os.environ.get("GLIMP_SMALL_MODEL", "small"), **key)
    large = Endpoint(base_url=_required("GLIMP_LARGE_URL"), model=os.environ.get("GLIMP_LARGE_MODEL", "large"), **key)
    return small, large


def settings() -> dict[str, Any]:
    """The router's settings (``GlimpConfig`` fields) from ``GLIMP_TAU``, ``GLIMP_PROMPT`` and the budgets."""
    config: dict[str, Any] = {"tau": _number("GLIMP_TAU", float, "1.0")}
    if os.environ.get("GLIMP_PROMPT"):
        config["prompt"] = os.environ["GLIMP_PROMPT"]
    for field in _INT_SETTINGS:
        value = _number(f"GLIMP_{field.upper()}", int)
        if value is not None:
            config[field] = value
    return config


def make_app(graph: Any, small: Endpoint, large: Endpoint) -> Any:
    """The OpenAI-compatible face of ``graph`` (``GLIMP_ROUTER_TOKEN``, ``GLIMP_MODEL_NAME``, ...)."""
    token = os.environ.get("GLIMP_ROUTER_TOKEN") or None
    return create_app(
        graph,
        model_name=os.environ.get("GLIMP_MODEL_NAME", "glimp-router"),
        api_token=SecretStr(token) if token else None,
        max_tokens_limit=int(_number("GLIMP_MAX_TOKENS_LIMIT", int, "4096") or 4096),
        endpoints={"small": small, "large": large},
        metrics_path=METRICS_PATH,
    )


_small, _large = endpoints()
graph = create_glimp_graph(_small, _large, config=settings())
app = make_app(graph, _small, _large)
