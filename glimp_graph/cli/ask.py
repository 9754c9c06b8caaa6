"""``glimp ask``: answer one question with GlimpRouter, showing which model wrote each step."""

from __future__ import annotations

import json
from typing import Any

import click

from glimp_graph.cli.options import RUN_BUDGETS, Servers, checked_config, endpoint_options, router_options
from glimp_graph.graph import create_glimp_graph


def _print_event(event: dict[str, Any]) -> None:
    if event.get("type") == "step":
        colour = "green" if event["model"] == "small" else "magenta"
        head = click.style(f"[{event['index']:>3}] {event['model']:<5}", fg=colour, bold=True)
        if event.get("h_init") is None:  # no probe: the small model is down (or the scorer has no entropy)
            routed = "H=  -- (small model down)" if event.get("note") else "H=  --"
        else:
            sign = "<=" if event["model"] == "small" else "> "
            routed = f"H={event['h_init']:.2f} {sign} tau={event['tau']:.2f}"
        click.echo(f"{head} {routed} | {event['text'].strip()}")
        if event.get("stop_reason"):
            click.echo(click.style(f"      reasoning ended: {event['stop_reason']}", dim=True))


@click.command()
@click.argument("question")
@endpoint_options
@router_options(RUN_BUDGETS, probe=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the step log.")
def ask(question: str, as_json: bool, servers: Servers, settings: dict[str, Any]) -> None:
    """Answer QUESTION with GlimpRouter, showing which model wrote each step.

    With no URLs, the local default pair (Qwen2.5-Coder 0.5B small, 1.5B large) is fetched, served by
    llama.cpp's server on 127.0.0.1 and stopped afterwards.
    """
    config = checked_config(settings)
    with servers.endpoints() as (small, large):
        graph = create_glimp_graph(small, large, config=config)
        result: dict[str, Any] = {}
        for mode, chunk in graph.stream({"question": question}, stream_mode=["custom", "values"]):
            if mode == "custom" and not as_json:
                _print_event(chunk)
            elif mode == "values":
                result = chunk
    stats = result["glimp_stats"]
    if as_json:
        out = {
            "answer": result["glimp_answer"],
            "steps": [s.model_dump() for s in result["glimp_steps"]],
            "stats": stats.model_dump(),
        }
        click.echo(json.dumps(out, indent=2))
        return
    click.echo()
    click.echo(click.style("Answer: ", bold=True) + result["glimp_answer"])
    click.echo(
        f"\n{stats.steps} steps ({stats.small_steps} small, {stats.large_steps} large, "
        f"{stats.large_share:.0%} large); tokens: small {stats.small_tokens}, large {stats.large_tokens}; "
        f"probes {stats.probes} in {stats.probe_seconds:.2f} s; wall {stats.wall_seconds:.1f} s; "
        f"stopped: {stats.stop_reason}"
    )
    if stats.small_failure:
        click.echo(click.style(f"fallback: {stats.small_failure}", fg="yellow"))
