"""``glimp eval`` and ``glimp calibrate``: strategies over a problem set, and tau for a target large-step share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from glimp_graph.cli.options import (
    EVAL_BUDGETS,
    Servers,
    checked_config,
    count_option,
    endpoint_options,
    parse_tau,
    router_options,
)
from glimp_graph.graph import create_glimp_graph

if TYPE_CHECKING:
    from glimp_graph.eval import Problem

eval_options = router_options(EVAL_BUDGETS, tau=False)
"""The router's options of both commands: the prompt and the evaluation's budgets (no ``--tau``: they pick it)."""


def _thresholds_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, list[float]]:
    """Click callback: ``--threshold STRATEGY=T1,T2`` (repeated) as ``{strategy: [t1, t2]}``."""
    out: dict[str, list[float]] = {}
    for value in values:
        name, _, numbers = value.partition("=")
        if not numbers:
            raise click.BadParameter(f"expected STRATEGY=T1,T2,... such as glimp=0.6,0.8, got {value!r}")
        out[name] = [parse_tau(n) for n in numbers.split(",")]
    return out


def _strategies_option(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """Click callback: comma-separated names of :data:`~glimp_graph.eval.STRATEGIES`."""
    from glimp_graph.eval import STRATEGIES

    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        shown = ", ".join(repr(n) for n in unknown) or repr(value)
        raise click.BadParameter(f"unknown strategies {shown}; choose from {', '.join(sorted(STRATEGIES))}")
    return names


def _scorer_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: a scorer name, or a strategy that routes with its own scorer (``glimp-4``)."""
    from glimp_graph.eval import STRATEGIES
    from glimp_graph.scorers import SCORERS

    known = set(SCORERS) | {name for name, s in STRATEGIES.items() if s.scorer != "fixed"}
    if value not in known:
        raise click.BadParameter(f"unknown scorer {value!r}; choose from {', '.join(sorted(known))}")
    return value


def _problems(dataset: Path, start: int, limit: int | None, start_option: str = "--start") -> list[Problem]:
    """The problems of ``--dataset`` from ``start``; a malformed file or an empty range is a usage error."""
    from glimp_graph.eval import load_problems

    try:
        problems = load_problems(dataset, start=start, limit=limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--dataset'") from None
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{dataset} is not UTF-8 text ({exc.reason})", param_hint="'--dataset'") from None
    if not problems:
        raise click.BadParameter(
            f"{dataset} has no problems from index {start}; lower {start_option}", param_hint=f"'{start_option}'"
        )
    return problems


@click.command(name="eval")
@click.option("--dataset", "dataset", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--start", default=0, show_default=True, type=click.IntRange(min=0), help="First problem (0-based).")
@count_option("--limit", None, "Number of problems [default: all].")
@click.option(
    "--strategies",
    default="glimp,small-only,large-only,random,step-entropy,step-perplexity,specreason",
    show_default=True,
    callback=_strategies_option,
    help="Comma-separated strategies.",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    callback=_thresholds_option,
    help="STRATEGY=T1,T2 (a grid); repeatable.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Results JSONL (resumed).")
@count_option("--concurrency", 1, "Runs in flight at once.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random strategy.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Write a Markdown summary here.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), help="Write figures into this folder.")
@endpoint_options
@eval_options
def eval_(
    dataset: Path,
    start: int,
    limit: int | None,
    strategies: list[str],
    thresholds: dict[str, list[float]],
    out: Path,
    concurrency: int,
    seed: int,
    report: Path | None,
    plots: Path | None,
    servers: Servers,
    settings: dict[str, Any],
) -> None:
    """Run strategies x thresholds over a JSONL problem set; results are appended to --out (resumable).

    The summary gives, per job, accuracy with its 95% Wilson interval and the latency per problem as a ratio to
    large-only: the median and the geometric mean with seeded bootstrap intervals (one slow run cannot move
    them), then the ratio of the means. Stalled steps are listed, and jobs whose records were measured under
    more than one code state (a resumed file) are named.
    """
    import asyncio

    from glimp_graph.eval import Job, load_records, run_eval
    from glimp_graph.eval.runner import check_prompts

    stray = [name for name in thresholds if name not in strategies]
    if stray:
        raise click.BadParameter(
            f"{', '.join(map(repr, stray))} is not among --strategies {','.join(strategies)}; add it there",
            param_hint="'--threshold'",
        )
    jobs = [Job(n, t) for n in strategies for t in (thresholds.get(n) or [None])]
    prompt = checked_config(settings).prompt.name
    try:  # before any server starts: a resumed file must hold these jobs' records under the same prompt
        check_prompts(load_records(out), {job.label: prompt for job in jobs}, out)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--out'") from None
    problems = _problems(dataset, start, limit)
    started: list[Any] = []
    with servers.endpoints(started) as (small, large):
        asyncio.run(
            run_eval(
                small,
                large,
                problems,
                jobs,
                out,
                base_config=settings,
                concurrency=concurrency,
                seed=seed,
                servers=_started_servers(started),
            )
        )
    records = load_records(out)
    summary, rows = eval_summary(records, seed=seed)
    click.echo(summary)
    if report:
        report.write_text(summary)
    if plots:
        from glimp_graph.eval.plots import plot_signals, plot_tradeoff

        plots.mkdir(parents=True, exist_ok=True)
        click.echo(
            f"figures: {plot_tradeoff(rows, plots / 'tradeoff.png')}, {plot_signals(records, plots / 'signals.png')}"
        )


def _started_servers(started: list[Any]) -> dict[str, dict[str, Any]]:
    """What the CLI knows of the local servers it started (``[small, large]``): binary and model file, by role."""
    from glimp_graph.eval.provenance import process_binary

    return {
        role: {"binary": process_binary(server.pid), "model_file": server.model_path.name}
        for role, server in zip(("small", "large"), started, strict=False)
    }


def eval_summary(records: list[dict[str, Any]], *, seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown summary of ``glimp eval``: the table, the stalled steps and the code states measured under.

    Args:
        records: The records of the results file.
        seed: Seed of the bootstrap intervals.

    Returns:
        The summary and the table's rows.
    """
    from glimp_graph.eval import find_stalls, markdown_stalls, markdown_table, states_by_job, summarize
    from glimp_graph.eval.stats import RESAMPLES, STALL_FACTOR

    rows = summarize(records, seed=seed)
    compared = {r["job"] for r in rows}
    ok = [r for r in records if not r.get("error") and r["job"] in compared]
    common = set.intersection(*({r["id"] for r in ok if r["job"] == job} for job in compared)) if compared else set()
    stalls = find_stalls([r for r in ok if r["id"] in common])
    parts = [
        markdown_table(rows),
        "Accuracy: 95% Wilson interval. Latency: per-problem ratio to large-only, median and geometric mean with "
        f"95% bootstrap intervals ({RESAMPLES:,} resamples, seed {seed}); a single slow run moves the ratio of means.",
        "",
        f"Stalled steps (time per token over {STALL_FACTOR:g}x the job's median on that model); they are in the "
        "means above:",
        "",
        markdown_stalls(stalls),
        "Code states the records were measured under (commit, +dirty when the package differed from it):",
        "",
    ]
    for job, states in states_by_job(ok).items():
        mixed = " (MIXED: this row pools several code states)" if len(states) > 1 else ""
        parts.append(f"- {job}: " + ", ".join(f"{state} ({n})" for state, n in states.items()) + mixed)
    return "\n".join(parts) + "\n", rows


@click.command()
@click.option("--dataset", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--start", default=0, show_default=True, type=click.IntRange(min=0))
@count_option("--limit", 20, "Calibration problems.")
@click.option(
    "--scorer",
    default="glimp",
    show_default=True,
    callback=_scorer_option,
    help="A scorer (glimp, step-entropy, step-perplexity, specreason, random) or a routed strategy (glimp-4).",
)
@click.option(
    "--target-large-share",
    default=0.25,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
)
@click.option(
    "--holdout-start", type=click.IntRange(min=0), help="First held-out problem, to check the share tau gives."
)
@count_option("--holdout-limit", 10, "Held-out problems.")
@endpoint_options
@eval_options
def calibrate(
    dataset: Path,
    start: int,
    limit: int,
    scorer: str,
    target_large_share: float,
    holdout_start: int | None,
    holdout_limit: int,
    servers: Servers,
    settings: dict[str, Any],
) -> None:
    """Pick tau for a target share of large-model steps, and check it on held-out problems."""
    import asyncio

    from glimp_graph.eval import calibrate as run_calibration
    from glimp_graph.eval.strategies import resolve_scorer

    checked_config(settings)
    problems = _problems(dataset, start, limit)
    held = _problems(dataset, holdout_start, holdout_limit, "--holdout-start") if holdout_start is not None else []
    chosen = resolve_scorer(scorer)
    with servers.endpoints() as (small, large):
        result = asyncio.run(
            run_calibration(
                small,
                large,
                problems,
                scorer=chosen,
                target_large_share=target_large_share,
                base_config=settings,
            )
        )
        click.echo(_histogram(result.scores))
        click.echo(
            f"{scorer}: tau={result.tau:.4f} for a large-step share of {target_large_share:.0%} "
            f"({len(result.scores)} steps of {result.problems} problems)"
        )
        if held:
            graph = create_glimp_graph(small, large, config={**settings, "scorer": chosen, "tau": result.tau})
            outs = [graph.invoke({"question": p.question}) for p in held]
            steps = sum(o["glimp_stats"].steps for o in outs)
            large_steps = sum(o["glimp_stats"].large_steps for o in outs)
            click.echo(f"held-out ({len(held)} problems): large-step share {large_steps / max(steps, 1):.0%}")


def _histogram(scores: list[float], bins: int = 12, width: int = 40) -> str:
    if not scores:
        return "(no scores)"
    lo, hi = min(scores), max(scores)
    size = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for s in scores:
        counts[min(int((s - lo) / size), bins - 1)] += 1
    top = max(counts)
    return "\n".join(f"{lo + i * size:8.3f} | {'#' * round(width * c / top)} {c}" for i, c in enumerate(counts))
