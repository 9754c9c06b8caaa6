"""``glimp serve-router``: serve the GlimpRouter graph behind an OpenAI-compatible API (uvicorn, loopback)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from glimp_graph.cli_options import _config, _endpoint_options, _endpoints, _tau_option
from glimp_graph.graph import create_glimp_graph


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(name="serve-router")
@_endpoint_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--model-name", default="glimp-router", show_default=True, help="Model id the API reports.")
@click.option(
    "--api-token",
    envvar="GLIMP_ROUTER_TOKEN",
    help="Require 'Authorization: Bearer TOKEN' (env GLIMP_ROUTER_TOKEN); needed to listen beyond loopback.",
)
@click.option(
    "--tau",
    default="1.0",
    show_default=True,
    callback=_tau_option,
    help="Entropy threshold in nats (inf, -inf ok).",
)
@click.option("--prompt", default="steps", show_default=True, help="Prompt preset: steps or r1.")
@click.option("--max-step-tokens", default=256, show_default=True)
@click.option("--max-thinking-tokens", default=2048, show_default=True)
@click.option("--max-steps", default=64, show_default=True)
@click.option("--final-max-tokens", default=512, show_default=True, help="Default cap of the answer.")
@click.option(
    "--max-tokens-limit",
    default=4096,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest max_tokens a request may ask.",
)
@click.option(
    "--max-body-bytes", default=1_000_000, show_default=True, type=click.IntRange(min=1), help="Largest request body."
)
def serve_router(
    small_url: str | None,
    large_url: str | None,
    small_model: str | None,
    large_model: str | None,
    api_key: str | None,
    local_small: str,
    local_large: str,
    cache_dir: Path | None,
    ctx_size: int,
    host: str,
    port: int,
    model_name: str,
    api_token: str | None,
    tau: float,
    prompt: str,
    max_step_tokens: int,
    max_thinking_tokens: int,
    max_steps: int,
    final_max_tokens: int,
    max_tokens_limit: int,
    max_body_bytes: int,
) -> None:
    """Serve GlimpRouter as one OpenAI-compatible model: POST /v1/chat/completions, GET /v1/models.

    With no URLs, the local default pair is started (as in `glimp ask`) and stopped when the server stops.
    """
    try:
        import uvicorn

        from glimp_graph.router_server import create_app
    except ImportError as exc:
        raise click.UsageError(
            f"serve-router needs starlette and uvicorn: pip install 'glimp-graph[server]' ({exc})"
        ) from None
    if not _is_loopback(host) and not api_token:
        raise click.UsageError(f"--host {host} is not a loopback address: set --api-token to expose the router")
    base: dict[str, Any] = {
        "tau": tau,
        "prompt": prompt,
        "max_step_tokens": max_step_tokens,
        "max_thinking_tokens": max_thinking_tokens,
        "max_steps": max_steps,
        "final_max_tokens": final_max_tokens,
    }
    _config(**base)
    with _endpoints(
        small_url, large_url, small_model, large_model, api_key, local_small, local_large, cache_dir, ctx_size
    ) as (small, large):

        def factory(overrides: Any) -> Any:
            return create_glimp_graph(small, large, config={**base, **overrides})

        app = create_app(
            factory,
            model_name=model_name,
            api_token=SecretStr(api_token) if api_token else None,
            max_body_bytes=max_body_bytes,
            max_tokens_limit=max_tokens_limit,
        )
        click.echo(f"GlimpRouter on http://{host}:{port}/v1 (model {model_name!r})", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
