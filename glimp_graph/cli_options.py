"""Options and helpers shared by the ``glimp`` commands (the CLI reads environment variables; the library never)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from glimp_graph.config import Endpoint

LOCAL_SMALL = "qwen2.5-coder-0.5b"
LOCAL_LARGE = "qwen2.5-coder-1.5b"


def _tau(value: str) -> float:
    try:
        tau = float(value)
    except ValueError:
        raise click.BadParameter(f"tau must be a number of nats, 'inf' or '-inf', got {value!r}") from None
    if math.isnan(tau):
        raise click.BadParameter("tau must not be nan")
    return tau


@contextlib.contextmanager
def _endpoints(
    small_url: str | None,
    large_url: str | None,
    small_model: str | None,
    large_model: str | None,
    api_key: str | None,
    local_small: str,
    local_large: str,
    cache_dir: Path | None,
    ctx_size: int,
) -> Iterator[tuple[Endpoint, Endpoint]]:
    if bool(small_url) != bool(large_url):
        raise click.UsageError("give both --small-url and --large-url, or neither (then local models are started)")
    if small_url and large_url:
        key = {"api_key": api_key} if api_key else {}
        yield (
            Endpoint(base_url=small_url, model=small_model or "small", **key),
            Endpoint(base_url=large_url, model=large_model or "large", **key),
        )
        return
    from glimp_graph.serving import LocalModels

    click.echo(f"Starting local models: small={local_small}, large={local_large} (llama.cpp server)", err=True)
    with LocalModels(small=local_small, large=local_large, cache_dir=cache_dir, ctx_size=ctx_size) as models:
        click.echo(f"  small: {models.small.base_url}  large: {models.large.base_url}", err=True)
        yield (
            Endpoint(base_url=models.small.base_url, model=models.small.alias),
            Endpoint(base_url=models.large.base_url, model=models.large.alias),
        )


def _endpoint_options(fn: Any) -> Any:
    options = [
        click.option("--small-url", envvar="GLIMP_SMALL_URL", help="Small model's OpenAI-compatible base URL."),
        click.option("--large-url", envvar="GLIMP_LARGE_URL", help="Large model's OpenAI-compatible base URL."),
        click.option("--small-model", envvar="GLIMP_SMALL_MODEL", help="Small model's served name."),
        click.option("--large-model", envvar="GLIMP_LARGE_MODEL", help="Large model's served name."),
        click.option("--api-key", envvar="GLIMP_API_KEY", help="Bearer token for both endpoints."),
        click.option("--local-small", default=LOCAL_SMALL, show_default=True, help="Local small model."),
        click.option("--local-large", default=LOCAL_LARGE, show_default=True, help="Local large model."),
        click.option(
            "--cache-dir",
            envvar="GLIMP_CACHE_DIR",
            type=click.Path(file_okay=False, path_type=Path),
            help="Cache for weights and the llama-server binary [default: ~/.cache/glimp-graph].",
        ),
        click.option("--ctx-size", default=8192, show_default=True, help="Context size of local servers."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
