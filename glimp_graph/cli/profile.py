"""``glimp profile``: measure what each server's calls cost and write a profile for ``glimp project``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from glimp_graph.cli.options import Servers, count_option, endpoint_options
from glimp_graph.eval.costmodel import ProfilePlan

DEFAULT_PLAN = ProfilePlan()


def _lengths(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    """Click callback: comma-separated token counts, each an integer >= 0."""
    try:
        lengths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated token counts such as 0,64,192, got {value!r}") from None
    if not lengths or min(lengths) < 0:
        raise click.BadParameter(f"expected token counts >= 0 such as 0,64,192, got {value!r}")
    return lengths


@click.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Profile file to write [default: glimp-profile-NAME.json].",
)
@click.option("--name", default="profile", show_default=True, help="The profile's name.")
@click.option("--description", help="One line saying what was measured [default: the two models and URLs].")
@click.option(
    "--new-tokens",
    default=",".join(map(str, DEFAULT_PLAN.new_tokens)),
    show_default=True,
    callback=_lengths,
    help="New (uncached) prompt lengths to measure, in tokens.",
)
@click.option(
    "--generated-tokens",
    default=",".join(map(str, DEFAULT_PLAN.generated_tokens)),
    show_default=True,
    callback=_lengths,
    help="Generated lengths to measure, in tokens.",
)
@count_option("--repeats", DEFAULT_PLAN.repeats, "Repeats of each cell (the fit uses each cell's median).")
@click.option(
    "--base-tokens",
    default=DEFAULT_PLAN.base_tokens,
    show_default=True,
    type=click.IntRange(min=1),
    help="Cached context of every call.",
)
@click.option(
    "--top-k",
    default=DEFAULT_PLAN.top_k,
    show_default=True,
    type=click.IntRange(min=0),
    help="Log-probabilities asked for in a second grid, as the probe asks (0: skip that grid).",
)
@click.option(
    "--retries",
    default=DEFAULT_PLAN.retries,
    show_default=True,
    type=click.IntRange(min=0),
    help="Extra attempts of a call that other processes disturbed (a local pair only).",
)
@endpoint_options
def profile(
    out: Path | None,
    name: str,
    description: str | None,
    new_tokens: tuple[int, ...],
    generated_tokens: tuple[int, ...],
    repeats: int,
    base_tokens: int,
    top_k: int,
    retries: int,
    servers: Servers,
) -> None:
    """Fit t = overhead + prefill x new prompt tokens + decode x generated tokens for each server.

    Sends controlled requests to the two endpoints (--small-url and --large-url; neither: the local pair is
    started): a cached base prompt, then each (new prompt, generated) length of the grid --repeats times, in a
    shuffled order, one server after the other. Each server's rates are fitted by least squares to the median
    of each cell, with and without --top-k log-probabilities. The profile file keeps the fits, every
    measurement and where they were made (CPU, server build, models, the machine's load and, for the local
    pair, how busy other work kept the cores); give it to glimp project --profile. Run it on a quiet machine:
    other work on the same cores shows up as slower rates.
    """
    import asyncio

    from glimp_graph.cli.eval import _started_servers
    from glimp_graph.eval.costmodel import measure_profile, profile_table
    from glimp_graph.eval.provenance import collect_provenance

    generated = tuple(max(1, g) for g in generated_tokens)
    try:
        plan = ProfilePlan(
            new_tokens=new_tokens,
            generated_tokens=generated,
            repeats=repeats,
            base_tokens=base_tokens,
            top_k=top_k,
            logprob_new_tokens=(min(new_tokens), max(new_tokens)),
            logprob_generated_tokens=(min(generated), max(generated)),
            retries=retries,
        )
    except ValueError as exc:
        raise click.UsageError(f"{exc}; set --new-tokens and --generated-tokens") from None
    out = out or Path(f"glimp-profile-{name}.json")
    started: list[Any] = []
    with servers.endpoints(started) as (small, large):

        async def run() -> Any:
            provenance = await collect_provenance(small, large, servers=_started_servers(started))
            return await measure_profile(
                small,
                large,
                plan=plan,
                name=name,
                description=description or "",
                provenance=provenance,
                progress=lambda text: click.echo(text, err=True),
                watch_pids=[server.pid for server in started],
            )

        try:
            result = asyncio.run(run())
        except ValueError as exc:  # a grid that cannot be fitted
            raise click.ClickException(str(exc)) from None
    result.save(out)
    click.echo(profile_table(result))
    contention = result.extra.get("cpu_contention")
    if contention:
        click.echo(
            f"While measuring, the servers kept {contention['servers_cores']:.2f} of {contention['cores']} cores busy "
            f"and other work {contention['other_cores']:.2f} (not counting this client; stolen by the hypervisor: "
            f"{contention['steal_cores']:.2f}). Other work on the same cores slows the servers down: profile a quiet "
            "machine."
        )
    fits = result.extra.get("fits", {})
    for role in ("small", "large"):
        for kind, fit in fits.get(role, {}).items():
            rates = fit["cost"]
            if min(rates["prefill_s_per_token"], rates["decode_s_per_token"]) <= 0:
                click.echo(
                    f"warning: {role} ({kind}) fitted a rate <= 0: the measurements are too noisy; rerun on a quiet "
                    "machine or with more --repeats",
                    err=True,
                )
    click.echo(f"wrote {out}")
