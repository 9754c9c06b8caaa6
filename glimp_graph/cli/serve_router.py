"""``glimp serve-router``: serve the GlimpRouter graph behind an OpenAI-compatible API (uvicorn, loopback).

With ``--workers N`` (N > 1) uvicorn runs N processes on one socket. The parent starts the local pair (when no URL
is given) once, then hands each worker the whole configuration (endpoints, settings, tokens) as JSON in the
environment variable :data:`SPEC_ENV`; each worker builds its own graph, clients and app from it
(:func:`worker_app`, uvicorn's factory). Prometheus' multiprocess mode makes ``GET /metrics`` report the sum over
the workers: the parent points ``PROMETHEUS_MULTIPROC_DIR`` at a new empty folder, removed when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import click
from pydantic import SecretStr

from glimp_graph.cli.options import (
    RUN_BUDGETS,
    Servers,
    checked_config,
    count_option,
    endpoint_options,
    router_options,
)
from glimp_graph.endpoints import Endpoint
from glimp_graph.graph import create_glimp_graph

SPEC_ENV = "GLIMP_SERVE_ROUTER_SPEC"
"""The environment variable that carries a worker's :class:`RouterSpec` (JSON; it holds the tokens)."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess folder, set by the parent for its workers."""


@dataclass(frozen=True)
class RouterSpec:
    """Everything a worker needs to build the app, as plain data (JSON between processes).

    Attributes:
        small: The small model's :class:`~glimp_graph.endpoints.Endpoint` fields (the API key in clear).
        large: The large model's endpoint fields.
        settings: The router's settings (``GlimpConfig`` fields), as the command's options gave them.
        model_name: The model id the API reports.
        api_token: The API's bearer token (``None``: none).
        metrics_token: The bearer token of ``GET /metrics`` (``None``: the API token's rule).
        max_body_bytes: Largest request body.
        max_tokens_limit: Largest ``max_tokens`` a request may ask.
        keepalive_seconds: Seconds without an event before a stream sends a keep-alive comment.
        metrics_dir: prometheus-client's multiprocess folder (``None``: one process, its own metrics).

    """

    small: dict[str, Any]
    large: dict[str, Any]
    settings: dict[str, Any]
    model_name: str = "glimp-router"
    api_token: str | None = None
    metrics_token: str | None = None
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 4096
    keepalive_seconds: float = 10.0
    metrics_dir: str | None = None

    @staticmethod
    def endpoint_fields(endpoint: Endpoint) -> dict[str, Any]:
        """An endpoint as plain data, its API key included (it has to reach the workers)."""
        return {**endpoint.model_dump(mode="json", exclude={"api_key"}), "api_key": endpoint.api_key.get_secret_value()}

    def dumps(self) -> str:
        """The spec as JSON (``inf`` thresholds as ``Infinity``, which :meth:`loads` reads back)."""
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> RouterSpec:
        """The spec from :meth:`dumps`'s JSON."""
        return cls(**json.loads(text))


def build_app(spec: RouterSpec) -> Any:
    """The app a spec describes: its own graph, model clients and metrics (one per process)."""
    from glimp_graph.metrics import GlimpMetrics
    from glimp_graph.router_server import create_app

    small, large = Endpoint(**spec.small), Endpoint(**spec.large)
    metrics = GlimpMetrics(multiprocess_dir=spec.metrics_dir) if spec.metrics_dir else GlimpMetrics()
    return create_app(
        create_glimp_graph(small, large, config=checked_config(dict(spec.settings))),
        model_name=spec.model_name,
        api_token=SecretStr(spec.api_token) if spec.api_token else None,
        max_body_bytes=spec.max_body_bytes,
        max_tokens_limit=spec.max_tokens_limit,
        keepalive_seconds=spec.keepalive_seconds,
        endpoints={"small": small, "large": large},
        metrics=metrics,
        metrics_token=SecretStr(spec.metrics_token) if spec.metrics_token else None,
    )


def worker_app() -> Any:
    """The app of one worker of ``glimp serve-router --workers N`` (uvicorn's factory), from :data:`SPEC_ENV`.

    Raises:
        RuntimeError: The variable is not set (the factory is meant for the workers ``glimp serve-router``
            starts, not to be served on its own).

    """
    text = os.environ.get(SPEC_ENV)
    if not text:
        raise RuntimeError(f"{SPEC_ENV} is not set: start the workers with `glimp serve-router --workers N`")
    return build_app(RouterSpec.loads(text))


@contextlib.contextmanager
def _worker_environment(spec: RouterSpec) -> Iterator[None]:
    """The workers' variables (the spec, the metrics folder) set while uvicorn starts them, then restored."""
    saved = {name: os.environ.get(name) for name in (SPEC_ENV, MULTIPROC_ENV)}
    os.environ[SPEC_ENV] = spec.dumps()
    if spec.metrics_dir:
        os.environ[MULTIPROC_ENV] = spec.metrics_dir
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@click.command(name="serve-router")
@endpoint_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--model-name", default="glimp-router", show_default=True, help="Model id the API reports.")
@click.option(
    "--api-token",
    envvar="GLIMP_ROUTER_TOKEN",
    help="Require 'Authorization: Bearer TOKEN' (env GLIMP_ROUTER_TOKEN); needed to listen beyond loopback.",
)
@click.option(
    "--metrics-token",
    envvar="GLIMP_METRICS_TOKEN",
    help="Bearer token of GET /metrics (env GLIMP_METRICS_TOKEN) [default: the API token; with neither, the "
    "metrics are served on loopback only].",
)
@router_options(RUN_BUDGETS)
@count_option("--max-tokens-limit", 4096, "Largest max_tokens a request may ask.")
@count_option("--max-body-bytes", 1_000_000, "Largest request body.")
@click.option(
    "--keep-alive",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds without an event before a stream sends an SSE keep-alive comment.",
)
@count_option("--workers", 1, "Server processes (uvicorn workers), each with its own graph and clients.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="One line per run on stderr (logger glimp_graph.access): text, or json (one object a line).",
)
def serve_router(
    host: str,
    port: int,
    model_name: str,
    api_token: str | None,
    metrics_token: str | None,
    max_tokens_limit: int,
    max_body_bytes: int,
    keep_alive: float,
    workers: int,
    log_format: str,
    servers: Servers,
    settings: dict[str, Any],
) -> None:
    """Serve GlimpRouter as one OpenAI-compatible model (chat completions, models, health, Prometheus metrics).

    Routes: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics (the --metrics-token, else the
    API token; with neither, served on loopback only).
    With no URLs, the local default pair is started (as in `glimp ask`) and stopped when the server stops; with
    --workers N it is started once and shared by the N processes. One graph per process serves every request: a
    request's max_tokens replaces --final-max-tokens (up to --max-tokens-limit), the model name MODEL@TAU (or the
    field glimp_tau) replaces --tau, and tools / tool_choice go to the large model's final answer, for that
    request only. Each run writes one log line: request id, thread id (header X-Glimp-Thread-Id), model, tau,
    steps, tokens, latency, status and error kind, never a token or an API key.
    """
    try:
        import uvicorn

        from glimp_graph.metrics import log_config
    except ImportError as exc:
        raise click.UsageError(
            f"serve-router needs starlette, uvicorn and prometheus-client: pip install 'glimp-graph[server]' ({exc})"
        ) from None
    from glimp_graph.serving.process import is_loopback

    if not is_loopback(host) and not api_token:
        raise click.UsageError(f"--host {host} is not a loopback address: set --api-token to expose the router")
    checked_config(settings)
    logging_config = log_config(log_format)
    with servers.endpoints() as (small, large):
        spec = RouterSpec(
            small=RouterSpec.endpoint_fields(small),
            large=RouterSpec.endpoint_fields(large),
            settings=settings,
            model_name=model_name,
            api_token=api_token or None,
            metrics_token=metrics_token or None,
            max_body_bytes=max_body_bytes,
            max_tokens_limit=max_tokens_limit,
            keepalive_seconds=keep_alive,
        )
        where = f"GlimpRouter on http://{host}:{port}/v1 (model {model_name!r}"
        if workers == 1:
            click.echo(f"{where})", err=True)
            uvicorn.run(build_app(spec), host=host, port=port, log_level="warning", log_config=logging_config)
            return
        metrics_dir = tempfile.mkdtemp(prefix="glimp-metrics-")
        try:
            spec = RouterSpec(**{**asdict(spec), "metrics_dir": metrics_dir})
            click.echo(f"{where}, {workers} workers)", err=True)
            with _worker_environment(spec):
                uvicorn.run(
                    f"{__name__}:worker_app",
                    factory=True,
                    workers=workers,
                    host=host,
                    port=port,
                    log_level="warning",
                    log_config=logging_config,
                )
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
