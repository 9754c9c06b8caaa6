"""The ``glimp`` command line: ask a question with GlimpRouter, serve the local models, prefetch them.

This is the only module (with the examples) that reads environment variables: ``GLIMP_SMALL_URL``,
``GLIMP_LARGE_URL``, ``GLIMP_SMALL_MODEL``, ``GLIMP_LARGE_MODEL``, ``GLIMP_API_KEY``, ``GLIMP_CACHE_DIR``.
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from glimp_graph.cli_options import (
    LOCAL_LARGE,
    LOCAL_SMALL,
    GlimpGroup,
    _config,
    _endpoint_options,
    _endpoints,
    _json_object_option,
    _local_model_option,
    _memory_split_option,
    _tau,
    _tau_option,
    _with_option_names,
)
from glimp_graph.cli_serve_router import serve_router
from glimp_graph.graph import create_glimp_graph

if TYPE_CHECKING:
    from glimp_graph.eval import Problem
    from glimp_graph.serving.process import ManagedServer


@click.group(cls=GlimpGroup)
@click.version_option(package_name="glimp-graph")
def main() -> None:
    """GlimpRouter: a small model glimps one token per reasoning step; its entropy routes the step."""


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


@main.command()
@click.argument("question")
@_endpoint_options
@click.option(
    "--tau",
    default="1.0",
    show_default=True,
    callback=_tau_option,
    help="Entropy threshold in nats (inf, -inf ok).",
)
@click.option("--top-k", default=20, show_default=True, help="Log-probabilities per probe (-1: whole vocabulary).")
@click.option("--estimator", default="renormalized", show_default=True, help="renormalized, lower, upper or exact.")
@click.option("--vocab-size", type=int, help="The small model's vocabulary size (the upper estimator needs it).")
@click.option("--prompt", default="steps", show_default=True, help="Prompt preset: steps (instruct models) or r1.")
@click.option("--max-step-tokens", default=256, show_default=True)
@click.option("--max-thinking-tokens", default=2048, show_default=True)
@click.option("--max-steps", default=64, show_default=True)
@click.option("--final-max-tokens", default=512, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the step log.")
def ask(
    question: str,
    tau: float,
    top_k: int,
    estimator: str,
    vocab_size: int | None,
    prompt: str,
    max_step_tokens: int,
    max_thinking_tokens: int,
    max_steps: int,
    final_max_tokens: int,
    as_json: bool,
    **endpoint_args: Any,
) -> None:
    """Answer QUESTION with GlimpRouter, showing which model wrote each step.

    With no URLs, the local default pair (Qwen2.5-Coder 0.5B small, 1.5B large) is fetched, served by
    llama.cpp's server on 127.0.0.1 and stopped afterwards.
    """
    config = _config(
        tau=tau,
        top_k=top_k,
        estimator=estimator,
        vocab_size=vocab_size,
        prompt=prompt,
        max_step_tokens=max_step_tokens,
        max_thinking_tokens=max_thinking_tokens,
        max_steps=max_steps,
        final_max_tokens=final_max_tokens,
    )
    with _endpoints(**endpoint_args) as (small, large):
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


def _thresholds_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, list[float]]:
    """Click callback: ``--threshold STRATEGY=T1,T2`` (repeated) as ``{strategy: [t1, t2]}``."""
    out: dict[str, list[float]] = {}
    for value in values:
        name, _, numbers = value.partition("=")
        if not numbers:
            raise click.BadParameter(f"expected STRATEGY=T1,T2,... such as glimp=0.6,0.8, got {value!r}")
        out[name] = [_tau(n) for n in numbers.split(",")]
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


def _budget_options(fn: Any) -> Any:
    options = [
        click.option("--prompt", default="steps", show_default=True, help="Prompt preset: steps or r1."),
        click.option("--max-step-tokens", default=256, show_default=True),
        click.option("--max-thinking-tokens", default=1024, show_default=True),
        click.option("--max-steps", default=64, show_default=True),
        click.option("--final-max-tokens", default=128, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command(name="eval")
@click.option("--dataset", "dataset", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--start", default=0, show_default=True, type=click.IntRange(min=0), help="First problem (0-based).")
@click.option("--limit", type=click.IntRange(min=1), help="Number of problems [default: all].")
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
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1), help="Runs in flight at once.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random strategy.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Write a Markdown summary here.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), help="Write figures into this folder.")
@_endpoint_options
@_budget_options
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
    prompt: str,
    max_step_tokens: int,
    max_thinking_tokens: int,
    max_steps: int,
    final_max_tokens: int,
    **endpoint_args: Any,
) -> None:
    """Run strategies x thresholds over a JSONL problem set; results are appended to --out (resumable)."""
    import asyncio

    from glimp_graph.eval import Job, load_records, markdown_table, run_eval, summarize

    stray = [name for name in thresholds if name not in strategies]
    if stray:
        raise click.BadParameter(
            f"{', '.join(map(repr, stray))} is not among --strategies {','.join(strategies)}; add it there",
            param_hint="'--threshold'",
        )
    jobs = [Job(n, t) for n in strategies for t in (thresholds.get(n) or [None])]
    base = {
        "prompt": prompt,
        "max_step_tokens": max_step_tokens,
        "max_thinking_tokens": max_thinking_tokens,
        "max_steps": max_steps,
        "final_max_tokens": final_max_tokens,
    }
    _config(**base)
    problems = _problems(dataset, start, limit)
    with _endpoints(**endpoint_args) as (small, large):
        asyncio.run(run_eval(small, large, problems, jobs, out, base_config=base, concurrency=concurrency, seed=seed))
    rows = summarize(load_records(out))
    table = markdown_table(rows)
    click.echo(table)
    if report:
        report.write_text(table)
    if plots:
        from glimp_graph.eval.plots import plot_signals, plot_tradeoff

        plots.mkdir(parents=True, exist_ok=True)
        click.echo(
            f"figures: {plot_tradeoff(rows, plots / 'tradeoff.png')}, "
            f"{plot_signals(load_records(out), plots / 'signals.png')}"
        )


@main.command()
@click.option("--dataset", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--start", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Calibration problems.")
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
@click.option("--holdout-limit", default=10, show_default=True, type=click.IntRange(min=1))
@_endpoint_options
@_budget_options
def calibrate(
    dataset: Path,
    start: int,
    limit: int,
    scorer: str,
    target_large_share: float,
    holdout_start: int | None,
    holdout_limit: int,
    prompt: str,
    max_step_tokens: int,
    max_thinking_tokens: int,
    max_steps: int,
    final_max_tokens: int,
    **endpoint_args: Any,
) -> None:
    """Pick tau for a target share of large-model steps, and check it on held-out problems."""
    import asyncio

    from glimp_graph.eval import calibrate as run_calibration
    from glimp_graph.eval.strategies import resolve_scorer

    base = {
        "prompt": prompt,
        "max_step_tokens": max_step_tokens,
        "max_thinking_tokens": max_thinking_tokens,
        "max_steps": max_steps,
        "final_max_tokens": final_max_tokens,
    }
    _config(**base)
    problems = _problems(dataset, start, limit)
    held = _problems(dataset, holdout_start, holdout_limit, "--holdout-start") if holdout_start is not None else []
    chosen = resolve_scorer(scorer)
    with _endpoints(**endpoint_args) as (small, large):
        result = asyncio.run(
            run_calibration(
                small,
                large,
                problems,
                scorer=chosen,
                target_large_share=target_large_share,
                base_config=base,
            )
        )
        click.echo(_histogram(result.scores))
        click.echo(
            f"{scorer}: tau={result.tau:.4f} for a large-step share of {target_large_share:.0%} "
            f"({len(result.scores)} steps of {result.problems} problems)"
        )
        if held:
            graph = create_glimp_graph(small, large, config={**base, "scorer": chosen, "tau": result.tau})
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


@main.command()
@click.option(
    "--backend",
    type=click.Choice(["llama.cpp", "vllm"]),
    default="llama.cpp",
    show_default=True,
    help="llama.cpp: serve the local pair here; vllm: print the `vllm serve` commands for a GPU machine.",
)
@click.option("--local-small", default=LOCAL_SMALL, show_default=True, callback=_local_model_option)
@click.option("--local-large", default=LOCAL_LARGE, show_default=True, callback=_local_model_option)
@click.option("--cache-dir", envvar="GLIMP_CACHE_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--ctx-size", default=8192, show_default=True)
@click.option("--small-model", default="Qwen/Qwen3-4B", show_default=True, help="vllm: the small model.")
@click.option(
    "--large-model",
    default="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    show_default=True,
    help="vllm: the large model.",
)
@click.option(
    "--gpus",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="vllm: 1 = both models share GPU 0; >= 2 = a GPU each.",
)
@click.option(
    "--tensor-parallel",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="vllm: GPUs for the large model.",
)
@click.option(
    "--memory-split",
    default="0.25,0.65",
    show_default=True,
    callback=_memory_split_option,
    help="vllm, one GPU: memory fractions.",
)
@click.option("--max-logprobs", default=20, show_default=True, help="vllm: the small server's --max-logprobs.")
@click.option(
    "--speculative-config", callback=_json_object_option, help="vllm: JSON for the large model's --speculative-config."
)
def serve(
    backend: str,
    local_small: str,
    local_large: str,
    cache_dir: Path | None,
    ctx_size: int,
    small_model: str,
    large_model: str,
    gpus: int,
    tensor_parallel: int,
    memory_split: tuple[float, float],
    max_logprobs: int,
    speculative_config: dict[str, Any] | None,
) -> None:
    """Serve the two models: the local pair on 127.0.0.1 (until Ctrl-C), or print vLLM's commands for GPUs.

    If one local server dies, the other is stopped and the command exits 1, naming the server, how it ended and
    the last lines of its log.
    """
    if backend == "vllm":
        from glimp_graph.serving import vllm_commands

        try:
            lines = vllm_commands(
                small_model,
                large_model,
                gpus=gpus,
                gpu_memory_split=memory_split,
                tensor_parallel=tensor_parallel,
                speculative_config=speculative_config,
                max_logprobs=max_logprobs,
            )
        except (ValueError, TypeError) as exc:
            message = _with_option_names(str(exc), ["gpus", "max_logprobs", "tensor_parallel", "speculative_config"])
            raise click.UsageError(message.replace("gpu_memory_split", "--memory-split")) from None
        click.echo("\n".join(lines))
        return
    import time

    from glimp_graph.serving import LocalModels, ServingError

    with LocalModels(small=local_small, large=local_large, cache_dir=cache_dir, ctx_size=ctx_size) as models:
        click.echo(f"export GLIMP_SMALL_URL={models.small.base_url} GLIMP_SMALL_MODEL={models.small.alias}")
        click.echo(f"export GLIMP_LARGE_URL={models.large.base_url} GLIMP_LARGE_MODEL={models.large.alias}")
        click.echo("Serving; Ctrl-C stops both servers.", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            while models.small.running and models.large.running:
                time.sleep(1)
        servers = {"small": models.small, "large": models.large}
        dead = [role for role, server in servers.items() if not server.running]
        if dead:  # leaving the block stops the other server; the group prints the error and exits 1
            raise ServingError(_server_died(servers, dead))


def _server_died(servers: dict[str, ManagedServer], dead: list[str]) -> str:
    """Which server of ``glimp serve`` died, how, and the last lines of its log (one message)."""
    from glimp_graph.serving._paths import tail

    parts = []
    for role in dead:
        server = servers[role]
        code = server.returncode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name} (exit code {code})"
            except ValueError:
                how = f"was killed by signal {-code} (exit code {code})"
        else:
            how = f"exited with code {code}"
        parts.append(f"the {role} model's server ({server.alias}) {how}")
    alive = [role for role in servers if role not in dead]
    message = " and ".join(parts) + (f"; the {alive[0]} model's server was stopped" if alive else "")
    for role in dead:
        log = servers[role].log_path
        lines = tail(log, 20)
        quoted = "\n".join(f"  {line}" for line in lines.splitlines()) if lines else "  (empty)"
        message += f"\nlast lines of the {role} model's server log {log}:\n{quoted}"
    return message


@main.command()
@click.argument("models", nargs=-1)
@click.option("--cache-dir", envvar="GLIMP_CACHE_DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--portable",
    is_flag=True,
    help="Build llama-server with no CPU-specific instructions (it runs on any machine of this architecture; "
    "slower). Without it the build names this CPU's features and falls back to portable by itself if it crashes.",
)
def fetch(models: tuple[str, ...], cache_dir: Path | None, portable: bool) -> None:
    """Fetch (and verify) model weights and build llama-server ahead of time."""
    from glimp_graph.serving import MODELS, ensure_llama_server, fetch_model

    for name in models or (LOCAL_SMALL, LOCAL_LARGE):
        if name not in MODELS:
            raise click.BadParameter(f"unknown model {name!r}; choose from {sorted(MODELS)}")
        click.echo(f"{name}: {fetch_model(name, cache_dir)}")
    click.echo(f"llama-server: {ensure_llama_server(cache_dir, portable=True if portable else None)}")


main.add_command(serve_router)

if __name__ == "__main__":
    main()
