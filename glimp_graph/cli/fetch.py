"""``glimp fetch``: fetch the local models' weights and build llama-server ahead of time."""

from __future__ import annotations

from pathlib import Path

import click

from glimp_graph.cli.options import LOCAL_LARGE, LOCAL_SMALL, cache_dir_option


@click.command()
@click.argument("models", nargs=-1)
@cache_dir_option
@click.option(
    "--portable",
    is_flag=True,
    help="Build the portable llama-server (x86-64: AVX2 tier at most, no AVX-512 or AMX; a little slower). "
    "Without it the build names this CPU's features and falls back to portable by itself if it crashes.",
)
def fetch(models: tuple[str, ...], cache_dir: Path | None, portable: bool) -> None:
    """Fetch (and verify) model weights and build llama-server ahead of time."""
    from glimp_graph.serving import MODELS, ensure_llama_server, fetch_model

    for name in models or (LOCAL_SMALL, LOCAL_LARGE):
        if name not in MODELS:
            raise click.BadParameter(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        click.echo(f"{name}: {fetch_model(name, cache_dir)}")
    click.echo(f"llama-server: {ensure_llama_server(cache_dir, portable=True if portable else None)}")
