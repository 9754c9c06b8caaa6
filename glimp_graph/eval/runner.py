"""Run strategies over problem sets: concurrent, resumable (JSONL), with a progress bar."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from glimp_graph.config import GlimpConfig
from glimp_graph.endpoints import Endpoint
from glimp_graph.errors import GlimpError
from glimp_graph.eval.data import Problem
from glimp_graph.eval.grading import grade
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
    """Read the records of an evaluation's JSONL file (missing file: none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _record(
    job: Job, problem: Problem, out: dict[str, Any] | None, seconds: float, error: str | None, delimiter: str
) -> dict:
    base = {
        "job": job.label,
        "strategy": job.strategy,
        "threshold": job.threshold,
        "id": problem.id,
        "source": problem.source,
        "gold": problem.answer,
        "latency_s": seconds,
        "error": error,
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
) -> list[dict[str, Any]]:
    """Run every job on every problem, appending one JSON record per run to ``out_path``.

    Runs already recorded without error are skipped, so an interrupted evaluation resumes where it stopped.
    Problems are taken one at a time across all jobs (problem-major order), so that a partial run still
    compares every strategy on the same problems.

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

    Returns:
        The records written by this call.
    """
    for job in jobs:
        if job.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {job.strategy!r}; choose from {sorted(STRATEGIES)}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {_key(r["job"], r["id"]) for r in load_records(out_path) if not r.get("error")}
    configs = {
        job.label: GlimpConfig.model_validate(
            {**(base_config or {}), **STRATEGIES[job.strategy].config(job.threshold, seed)}
        )
        for job in jobs
    }
    graphs = {label: create_glimp_graph(small, large, config=config) for label, config in configs.items()}
    todo = [(p, j) for p in problems for j in jobs if _key(j.label, p.id) not in done]
    written: list[dict[str, Any]] = []
    lock = asyncio.Lock()
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(todo), desc="eval", unit="run", disable=not progress)

    async def one(problem: Problem, job: Job) -> None:
        async with gate:
            if before_each is not None:
                await before_each()
            delimiter = configs[job.label].delimiter
            start = time.perf_counter()
            try:
                out = await graphs[job.label].ainvoke({"question": problem.question})
                record = _record(job, problem, out, time.perf_counter() - start, None, delimiter)
            except GlimpError as exc:
                error = f"{type(exc).__name__}: {exc}"
                record = _record(job, problem, None, time.perf_counter() - start, error, delimiter)
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


def summarize(records: Iterable[dict[str, Any]], *, baseline: str = "large-only") -> list[dict[str, Any]]:
    """Aggregate records per job: accuracy with its standard error, latency, routing and token statistics.

    Only problems that every job finished are compared, so the rows are paired. The latency ratio is the
    job's mean latency over the baseline job's on those problems.

    Args:
        records: Records from :func:`run_eval` (errors are left out).
        baseline: The job label latencies are compared with.

    Returns:
        One row per job, in order of first appearance.
    """
    ok = [r for r in records if not r.get("error")]
    by_job: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in ok:
        by_job[r["job"]][r["id"]] = r
    if not by_job:
        return []
    common = set.intersection(*(set(v) for v in by_job.values()))
    base_latency = (
        statistics.mean(by_job[baseline][i]["latency_s"] for i in common) if baseline in by_job and common else None
    )
    rows = []
    for job, runs in by_job.items():
        rs = [runs[i] for i in sorted(common)]
        if not rs:
            continue
        n = len(rs)
        acc = sum(bool(r["correct"]) for r in rs) / n
        latencies = [r["latency_s"] for r in rs]
        steps = sum(r["steps"] for r in rs)
        mean_latency = statistics.mean(latencies)
        rows.append(
            {
                "job": job,
                "strategy": rs[0]["strategy"],
                "threshold": rs[0]["threshold"],
                "n": n,
                "accuracy": acc,
                "accuracy_se": math.sqrt(acc * (1 - acc) / n),
                "latency_mean_s": mean_latency,
                "latency_median_s": statistics.median(latencies),
                "latency_ratio": mean_latency / base_latency if base_latency else None,
                "large_share": sum(r["large_steps"] for r in rs) / steps if steps else 0.0,
                "steps_mean": steps / n,
                "small_tokens_mean": statistics.mean(r["small_tokens"] for r in rs),
                "large_tokens_mean": statistics.mean(r["large_tokens"] for r in rs),
                "probe_overhead": sum(r["probe_seconds"] for r in rs) / sum(latencies),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render :func:`summarize` rows as a Markdown table."""
    head = (
        "| strategy | n | accuracy (± SE) | mean latency | median latency | latency / large-only | large-step share "
        "| steps | small tokens | large tokens | glimpse time share |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        ratio = f"{r['latency_ratio']:.2f}" if r["latency_ratio"] is not None else "n/a"
        lines.append(
            f"| {r['job']} | {r['n']} | {r['accuracy']:.1%} ± {r['accuracy_se']:.1%} | {r['latency_mean_s']:.1f} s "
            f"| {r['latency_median_s']:.1f} s | {ratio} | {r['large_share']:.0%} | {r['steps_mean']:.1f} "
            f"| {r['small_tokens_mean']:.0f} | {r['large_tokens_mean']:.0f} | {r['probe_overhead']:.1%} |"
        )
    return head + "\n".join(lines) + "\n"
