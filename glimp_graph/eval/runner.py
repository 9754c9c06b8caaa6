"""Run strategies over problem sets: concurrent, resumable (JSONL), with a progress bar."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from glimp_graph.config import GlimpConfig
from glimp_graph.endpoints import Endpoint
from glimp_graph.errors import GlimpError
from glimp_graph.eval.data import Problem
from glimp_graph.eval.grading import grade
from glimp_graph.eval.provenance import collect_provenance, for_line, load_sidecar
from glimp_graph.eval.stats import (
    CONFIDENCE,
    RESAMPLES,
    STALL_FACTOR,
    Stall,
    find_stalls,
    ratio_summary,
    wilson_interval,
)
from glimp_graph.eval.strategies import STRATEGIES
from glimp_graph.graph import create_glimp_graph
from glimp_graph.state import reasoning_text


@dataclass(frozen=True)
class Job:
    """One strategy at one threshold (``None``: the strategy's default or it has none)."""

    strategy: str
    threshold: float | None = None

    @property
    def label(self) -> str:
        """``strategy`` or ``strategy@threshold``."""
        return self.strategy if self.threshold is None else f"{self.strategy}@{self.threshold:g}"


def _key(job_label: str, problem_id: str) -> tuple[str, str]:
    return job_label, problem_id


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read the records of an evaluation's JSONL file (missing file: none).

    A record without ``provenance`` (written before records kept it) takes what the file's sidecar
    (:func:`~glimp_graph.eval.provenance.load_sidecar`) says of its line, if anything.
    """
    path = Path(path)
    if not path.exists():
        return []
    batches = load_sidecar(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            record = json.loads(line)
            if "provenance" not in record and batches:
                described = for_line(batches, number)
                if described is not None:
                    record["provenance"] = described
            records.append(record)
    return records


def _record(
    job: Job,
    problem: Problem,
    out: dict[str, Any] | None,
    seconds: float,
    error: str | None,
    delimiter: str,
    provenance: dict[str, Any],
    prompt: str,
) -> dict:
    base = {
        "job": job.label,
        "strategy": job.strategy,
        "threshold": job.threshold,
        "prompt": prompt,
        "id": problem.id,
        "row": problem.row,
        "source": problem.source,
        "gold": problem.answer,
        "latency_s": seconds,
        "error": error,
        "provenance": provenance,
    }
    if out is None:
        return base
    stats = out["glimp_stats"]
    predicted, correct = grade(problem, out["glimp_answer"])
    if predicted is None:  # fall back to the reasoning, where the answer may already stand
        predicted, correct = grade(problem, reasoning_text((s.text for s in out["glimp_steps"]), delimiter))
    return {
        **base,
        "answer": out["glimp_answer"],
        "predicted": predicted,
        "correct": correct,
        **stats.model_dump(),
        "step_records": [
            s.model_dump(
                include={
                    "model",
                    "text",
                    "probe_token",
                    "h_init",
                    "score",
                    "tokens",
                    "seconds",
                    "probe_seconds",
                    "signals",
                    "end",
                }
            )
            for s in out["glimp_steps"]
        ],
    }


def check_prompts(records: Iterable[Mapping[str, Any]], prompts: Mapping[str, str], path: str | Path) -> None:
    """Refuse to resume a results file whose records of a job were made with another prompt preset.

    A resumed evaluation skips the (job, problem) pairs already recorded, so records of ``glimp@0.8`` made with
    the ``steps`` prompt would stand in for a ``plain`` run of the same job. Records written before records kept
    their prompt carry none and are not checked.

    Args:
        records: The records already in the file.
        prompts: The prompt's name of each job about to run, by job label.
        path: The results file (named in the error).

    Raises:
        ValueError: A record of one of the jobs names another prompt.
    """
    for r in records:
        wanted = prompts.get(r.get("job", ""))
        if wanted is not None and r.get("prompt") is not None and r["prompt"] != wanted:
            raise ValueError(
                f"{path} holds {r['job']} records made with the {r['prompt']!r} prompt, and this run uses "
                f"{wanted!r}; write the results to another file"
            )


async def run_eval(
    small: Endpoint,
    large: Endpoint,
    problems: Sequence[Problem],
    jobs: Sequence[Job],
    out_path: str | Path,
    *,
    base_config: dict[str, Any] | None = None,
    concurrency: int = 1,
    seed: int = 0,
    progress: bool = True,
    before_each: Callable[[], Awaitable[None]] | None = None,
    servers: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run every job on every problem, appending one JSON record per run to ``out_path``.

    Runs already recorded without error are skipped, so an interrupted evaluation resumes where it stopped (a
    file whose records of a job were made with another prompt preset is refused, :func:`check_prompts`).
    Problems are taken one at a time across all jobs (problem-major order), so that a partial run still
    compares every strategy on the same problems. Every record keeps the run's provenance
    (:func:`~glimp_graph.eval.provenance.collect_provenance`: commit, package versions, what the servers report
    of their build, the CPU), so that a resumed file shows which code measured what.

    Args:
        small: The small model's endpoint.
        large: The large model's endpoint.
        problems: The problems.
        jobs: The strategies (and thresholds) to run.
        out_path: The JSONL file to append to.
        base_config: Settings shared by every job (budgets, prompt, ...).
        concurrency: Runs in flight at once (1 measures latency as the paper does: one problem at a time).
        seed: Seed of the random strategy.
        progress: Show a progress bar.
        before_each: Awaited before each run, outside its timing (e.g. to put the servers' prompt caches in the
            same state for every strategy).
        servers: What the caller knows of servers it started, by role (e.g. ``{"large": {"binary": name}}``),
            added to the provenance.

    Returns:
        The records written by this call.

    Raises:
        ValueError: An unknown strategy, ``concurrency`` below 1, or records of a job in ``out_path`` made with
            another prompt.
    """
    for job in jobs:
        if job.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {job.strategy!r}; choose from {sorted(STRATEGIES)}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    configs = {
        job.label: GlimpConfig.model_validate(
            {**(base_config or {}), **STRATEGIES[job.strategy].config(job.threshold, seed)}
        )
        for job in jobs
    }
    existing = load_records(out_path)
    check_prompts(existing, {label: config.prompt.name for label, config in configs.items()}, out_path)
    done = {_key(r["job"], r["id"]) for r in existing if not r.get("error")}
    graphs = {label: create_glimp_graph(small, large, config=config) for label, config in configs.items()}
    todo = [(p, j) for p in problems for j in jobs if _key(j.label, p.id) not in done]
    provenance = await collect_provenance(small, large, servers=servers) if todo else {}
    written: list[dict[str, Any]] = []
    lock = asyncio.Lock()
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(todo), desc="eval", unit="run", disable=not progress)

    async def one(problem: Problem, job: Job) -> None:
        async with gate:
            if before_each is not None:
                await before_each()
            config = configs[job.label]
            shown = (config.delimiter, provenance, config.prompt.name)
            start = time.perf_counter()
            try:
                out = await graphs[job.label].ainvoke({"question": problem.question})
                record = _record(job, problem, out, time.perf_counter() - start, None, *shown)
            except GlimpError as exc:
                error = f"{type(exc).__name__}: {exc}"
                record = _record(job, problem, None, time.perf_counter() - start, error, *shown)
        async with lock:
            with out_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            written.append(record)
            bar.update(1)
            bar.set_postfix_str(f"{job.label} {problem.id}")

    try:
        await asyncio.gather(*(one(p, j) for p, j in todo))
    finally:
        bar.close()
    return written


def summarize(
    records: Iterable[dict[str, Any]],
    *,
    baseline: str = "large-only",
    seed: int = 0,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    stall_factor: float = STALL_FACTOR,
) -> list[dict[str, Any]]:
    """Aggregate records per job: accuracy with its interval, latency ratios to the baseline, routing, tokens.

    Only problems that every job finished are compared, so the rows are paired. The latency figures that one
    slow run cannot move come first: the median and the geometric mean of the per-problem ratios to the
    baseline job, each with a seeded bootstrap interval; the ratio of the mean latencies stays beside them.
    Stalled steps (:func:`~glimp_graph.eval.stats.find_stalls`) are counted per job, so that a mean they inflate
    is never read without them.

    Args:
        records: Records from :func:`run_eval` (errors are left out).
        baseline: The job label latencies are compared with.
        seed: Seed of the bootstrap.
        resamples: Bootstrap resamples.
        confidence: Coverage of the intervals (accuracy: Wilson; ratios: percentile bootstrap).
        stall_factor: A step is stalled when its time per token exceeds this many times its job's median on the
            same model.

    Returns:
        One row per job, in order of first appearance. Keys: ``job``, ``strategy``, ``threshold``, ``n``,
        ``accuracy``, ``accuracy_se``, ``accuracy_ci``, ``latency_mean_s``, ``latency_median_s``, ``ratio_median``,
        ``ratio_median_ci``, ``ratio_geomean``, ``ratio_geomean_ci``, ``latency_ratio`` (ratio of means),
        ``stalls``, ``large_share``, ``steps_mean``, ``small_tokens_mean``, ``large_tokens_mean``,
        ``probe_overhead``. The ratio fields are ``None`` without the baseline job.
    """
    ok = [r for r in records if not r.get("error")]
    by_job: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in ok:
        by_job[r["job"]][r["id"]] = r
    if not by_job:
        return []
    common = sorted(set.intersection(*(set(v) for v in by_job.values())))
    chosen = [by_job[job][i] for job in by_job for i in common]
    stalls: dict[str, int] = defaultdict(int)
    for stall in find_stalls(chosen, factor=stall_factor):
        stalls[stall.job] += 1
    base = [by_job[baseline][i]["latency_s"] for i in common] if baseline in by_job else []
    rows = []
    for job, runs in by_job.items():
        rs = [runs[i] for i in common]
        if not rs:
            continue
        n = len(rs)
        right = sum(bool(r["correct"]) for r in rs)
        acc = right / n
        latencies = [r["latency_s"] for r in rs]
        steps = sum(r["steps"] for r in rs)
        ratio = ratio_summary(latencies, base, resamples=resamples, confidence=confidence, seed=seed) if base else None
        rows.append(
            {
                "job": job,
                "strategy": rs[0]["strategy"],
                "threshold": rs[0]["threshold"],
                "n": n,
                "accuracy": acc,
                "accuracy_se": (acc * (1 - acc) / n) ** 0.5,
                "accuracy_ci": wilson_interval(right, n, confidence),
                "latency_mean_s": statistics.mean(latencies),
                "latency_median_s": statistics.median(latencies),
                "ratio_median": ratio.median if ratio else None,
                "ratio_median_ci": ratio.median_ci if ratio else None,
                "ratio_geomean": ratio.geomean if ratio else None,
                "ratio_geomean_ci": ratio.geomean_ci if ratio else None,
                "latency_ratio": ratio.mean_ratio if ratio else None,
                "stalls": stalls.get(job, 0),
                "large_share": sum(r["large_steps"] for r in rs) / steps if steps else 0.0,
                "steps_mean": steps / n,
                "small_tokens_mean": statistics.mean(r["small_tokens"] for r in rs),
                "large_tokens_mean": statistics.mean(r["large_tokens"] for r in rs),
                "probe_overhead": sum(r["probe_seconds"] for r in rs) / sum(latencies),
            }
        )
    return rows


def _interval(value: float | None, ci: tuple[float, float] | None, fmt: str = ".2f") -> str:
    if value is None or ci is None:
        return "n/a"
    return f"{value:{fmt}} ({ci[0]:{fmt}}-{ci[1]:{fmt}})"


def markdown_table(rows: Sequence[dict[str, Any]], *, baseline: str = "large-only") -> str:
    """Render :func:`summarize` rows as a Markdown table (the robust latency figures first, the means after)."""
    head = (
        f"| strategy | n | accuracy (95% CI) | latency / {baseline}: median per problem (95% CI) | geometric mean "
        f"(95% CI) | ratio of means | median latency | mean latency | stalled steps | large-step share | steps "
        "| small tokens | large tokens | glimpse time share |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        mean_ratio = f"{r['latency_ratio']:.2f}" if r["latency_ratio"] is not None else "n/a"
        low, high = r["accuracy_ci"]
        lines.append(
            f"| {r['job']} | {r['n']} | {r['accuracy']:.1%} ({low:.1%}-{high:.1%}) "
            f"| {_interval(r['ratio_median'], r['ratio_median_ci'])} "
            f"| {_interval(r['ratio_geomean'], r['ratio_geomean_ci'])} | {mean_ratio} "
            f"| {r['latency_median_s']:.1f} s | {r['latency_mean_s']:.1f} s | {r['stalls']} "
            f"| {r['large_share']:.0%} | {r['steps_mean']:.1f} | {r['small_tokens_mean']:.0f} "
            f"| {r['large_tokens_mean']:.0f} | {r['probe_overhead']:.1%} |"
        )
    return head + "\n".join(lines) + "\n"


def markdown_stalls(stalls: Sequence[Stall]) -> str:
    """Render stalled steps (:func:`~glimp_graph.eval.stats.find_stalls`) as a Markdown table; none: one line."""
    if not stalls:
        return "No stalled steps (none over the threshold of its job's median time per token on its model).\n"
    lines = [
        "| job | row | problem | step | model | seconds | tokens | ms per token | x the job's median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stalls:
        row = "n/a" if s.row is None else str(s.row)
        lines.append(
            f"| {s.job} | {row} | {s.id} | {s.step} | {s.model} | {s.seconds:.2f} | {s.tokens} "
            f"| {1000 * s.per_token_s:.0f} | {s.factor:.0f} |"
        )
    return "\n".join(lines) + "\n"
