"""``glimp project``: replay recorded routing traces under a hardware profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from glimp_graph.eval.costmodel import PROMPT_TOKENS


@click.command()
@click.option(
    "--results",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Results JSONL of glimp eval (with a large-only job).",
)
@click.option(
    "--profile",
    "profile_name",
    required=True,
    help="A profile file (glimp profile --out) or the name of a shipped profile.",
)
@click.option(
    "--prompt-tokens",
    type=click.IntRange(min=0),
    help="Tokens of a run's initial prompt (system, instruction, question), read by each server's first call "
    f"[default: as each record's prompt-token counts give it, else {PROMPT_TOKENS}].",
)
@click.option(
    "--call-overhead-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Added to every call (e.g. a serving engine's per-request cost, which a kernel-floor profile leaves out).",
)
@click.option(
    "--prompt-cache",
    type=click.Choice(["run", "llama.cpp"]),
    default="run",
    show_default=True,
    help="run: every run reads its whole prompt; llama.cpp: later jobs on a problem find the prompt an earlier "
    "one left in llama.cpp's prompt cache in RAM, as in a benchmark that runs every job on a problem in turn.",
)
@click.option(
    "--validate",
    is_flag=True,
    help="Also compare with the latencies the records measured (only meaningful for the machine that measured them).",
)
def project(
    results: Path,
    profile_name: str,
    prompt_tokens: int | None,
    call_overhead_ms: float,
    prompt_cache: str,
    validate: bool,
) -> None:
    """Each strategy's projected latency under a hardware profile, and its ratio to large-only.

    Every recorded run is replayed call by call (probes, drafts, judges, steps, the answer), each call priced
    at the profile's overhead + prefill x new prompt tokens + decode x generated tokens, where a server reads
    only what it has not cached (after the other model wrote a step, that step). Beside it, the ideal mix: the
    same steps at each model's standalone speed with no probe and no switching.
    """
    from glimp_graph.eval import costmodel as cm
    from glimp_graph.eval import load_records

    try:
        chosen = cm.load_profile(profile_name)
    except (ValueError, OSError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--profile'") from None
    try:
        records: list[dict[str, Any]] = load_records(results)
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"{results} is not a JSONL file of evaluation records ({exc})", param_hint="'--results'"
        ) from None
    usable = cm.replayable(records)
    if not usable:
        raise click.BadParameter(f"{results} has no records with step_records to replay", param_hint="'--results'")
    try:
        rows = cm.project(
            usable,
            chosen,
            prompt_tokens=prompt_tokens,
            call_overhead_s=call_overhead_ms / 1000,
            prompt_cache=prompt_cache,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise click.BadParameter(f"{results}: {exc}", param_hint="'--results'") from None
    click.echo(f"Profile {chosen.name!r}: {chosen.description}")
    if chosen.source == "kernel-floor":
        click.echo(f"NOTE: {chosen.note}.")
    elif chosen.note:
        click.echo(f"({chosen.note})")
    if call_overhead_ms:
        click.echo(f"{call_overhead_ms:g} ms added to every call.")
    click.echo("")
    click.echo(cm.profile_table(chosen))
    click.echo(cm.projection_table(rows))
    click.echo(
        "Ratios are per problem (the job's projected latency over large-only's on the same problem), summarised by "
        "their median, with the ratio of totals beside them. Ideal mix: the job's own steps, each at its model's "
        "standalone speed, with no probe, no draft, no judge and no switching cost. 'As recorded': the median ratio "
        "the records measured on their own machine."
    )
    if validate:
        checks = cm.validate(usable, chosen, prompt_tokens=prompt_tokens, prompt_cache=prompt_cache)  # type: ignore[arg-type]
        click.echo("")
        click.echo("Predicted against measured (this profile applied to the records' own latencies):")
        click.echo("")
        click.echo(cm.validation_table(checks))
        click.echo(cm.parts_table(checks))
