"""``glimp serve-router``: serve the GlimpRouter graph behind an OpenAI-compatible API (uvicorn, loopback)."""

from __future__ import annotations

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
from glimp_graph.graph import create_glimp_graph


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
def serve_router(
    host: str,
    port: int,
    model_name: str,
    api_token: str | None,
    max_tokens_limit: int,
    max_body_bytes: int,
    keep_alive: float,
    servers: Servers,
    settings: dict[str, Any],
) -> None:
    """Serve GlimpRouter as one OpenAI-compatible model: POST /v1/chat/completions, GET /v1/models, GET /health.

    With no URLs, the local default pair is started (as in `glimp ask`) and stopped when the server stops. One
    graph serves every request: a request's max_tokens replaces --final-max-tokens (up to --max-tokens-limit),
    the model name MODEL@TAU (or the field glimp_tau) replaces --tau, and tools / tool_choice go to the large
    model's final answer, for that request only.
    """
    try:
        import uvicorn

        from glimp_graph.router_server import create_app
    except ImportError as exc:
        raise click.UsageError(
            f"serve-router needs starlette and uvicorn: pip install 'glimp-graph[server]' ({exc})"
        ) from None
    from glimp_graph.serving.process import is_loopback

    if not is_loopback(host) and not api_token:
        raise click.UsageError(f"--host {host} is not a loopback address: set --api-token to expose the router")
    config = checked_config(settings)
    with servers.endpoints() as (small, large):
        app = create_app(
            create_glimp_graph(small, large, config=config),
            model_name=model_name,
            api_token=SecretStr(api_token) if api_token else None,
            max_body_bytes=max_body_bytes,
            max_tokens_limit=max_tokens_limit,
            keepalive_seconds=keep_alive,
            endpoints={"small": small, "large": large},
        )
        click.echo(f"GlimpRouter on http://{host}:{port}/v1 (model {model_name!r})", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
