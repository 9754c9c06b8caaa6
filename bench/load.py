"""Load test: N concurrent GlimpRouter runs against two local llama-server processes.

For every concurrency level N of ``--levels`` the script runs ``--questions`` GSM8K dev questions (default
``max(2N, 8)``) through ONE compiled graph with at most N runs in flight (``asyncio.gather`` under a semaphore,
the whole level under ``asyncio.wait_for``), and reports throughput, p50/p95 latency and errors by type.

It also checks that every result belongs to its own question: each run's question carries a unique tag
(``[LOAD-xxxxxxxx]``) and the run's metadata (``load_run``); a callback handler records the messages and the output
of every ``final_answer`` chat-model run. A run passes when exactly one final-answer call carries its ``load_run``,
that call's user message contains its tag and no other tag, the call's assistant prefix contains the run's
reasoning steps, and the call's output ends with the run's ``glimp_answer``. Swapped states or answers fail it.

After the servers are stopped it checks that none of their processes is left (``/proc``) and that nothing listens
on their ports any more. The servers are started here (not with ``LocalModels``) because ``--parallel`` sets the
llama-server slots (``-np``), which ``LocalModels`` does not expose.

Quick run (SmolLM2 as both models)::

    python bench/load.py --small smollm2-135m --large smollm2-135m --levels 1,2 --questions 2 --out /tmp/LOAD.md

Full run (the Qwen pair)::

    python bench/load.py --levels 1,4,16,32 --parallel 8 --out bench/LOAD.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from glimp_graph import Endpoint, GlimpConfig, create_glimp_graph

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_dev.jsonl"
TAG_RE = re.compile(r"\[LOAD-[0-9a-f]{8}\]")


# --------------------------------------------------------------------------- questions and tags


def load_questions(path: Path = DATA, n: int = 8, start: int = 0) -> list[str]:
    """The first ``n`` questions from ``start`` of a JSONL file with a ``question`` field."""
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < start or not line.strip():
                continue
            out.append(json.loads(line)["question"])
            if len(out) == n:
                break
    if len(out) < n:
        raise SystemExit(f"{path} has only {len(out)} questions from index {start}, {n} needed")
    return out


@dataclasses.dataclass
class RunRecord:
    """One graph run of a level."""

    key: str
    tag: str
    question: str
    finished: bool = False
    latency: float | None = None
    waited: float = 0.0
    error: str | None = None
    error_message: str = ""
    answer: str | None = None
    steps: list[str] = dataclasses.field(default_factory=list)
    mismatch: str | None = None


def make_runs(questions: Sequence[str], label: str) -> list[RunRecord]:
    """One record per question, each with a unique tag put in front of its question."""
    runs = []
    for i, q in enumerate(questions):
        tag = f"[LOAD-{uuid.uuid4().hex[:8]}]"
        runs.append(RunRecord(key=f"{label}-{i}", tag=tag, question=f"{tag} {q}"))
    return runs


# --------------------------------------------------------------------------- recording the final-answer calls


class FinalAnswerRecorder(BaseCallbackHandler):
    """Records the messages and the output of every ``final_answer`` chat-model run, keyed by ``load_run``."""

    run_inline = True  # called in the event loop, no thread pool: the dicts need no lock

    def __init__(self) -> None:
        self.calls: dict[UUID, dict[str, Any]] = {}

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if name != "final_answer":
            return
        msgs = messages[0] if messages else []
        self.calls[run_id] = {
            "load_run": (metadata or {}).get("load_run"),
            "user": "\n".join(str(m.content) for m in msgs if m.type == "human"),
            "prefix": str(msgs[-1].content) if msgs and msgs[-1].type == "ai" else "",
            "all": "\n".join(str(m.content) for m in msgs),
            "output": None,
        }

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id in self.calls:
            gen = response.generations[0][0] if response.generations and response.generations[0] else None
            self.calls[run_id]["output"] = None if gen is None else gen.text

    def by_run(self) -> dict[str, list[dict[str, Any]]]:
        """The recorded final-answer calls grouped by ``load_run``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for call in self.calls.values():
            out.setdefault(str(call["load_run"]), []).append(call)
        return out


def check_mapping(runs: Sequence[RunRecord], recorder: FinalAnswerRecorder, delimiter: str) -> None:
    """Set ``mismatch`` on every finished run whose final-answer call does not belong to its own question."""
    calls = recorder.by_run()
    for run in runs:
        if not run.finished or run.error:
            continue
        mine = calls.get(run.key, [])
        if len(mine) != 1:
            run.mismatch = f"{len(mine)} final-answer calls carry load_run={run.key}"
            continue
        call = mine[0]
        tags = set(TAG_RE.findall(call["all"]))
        if run.tag not in call["user"] or tags != {run.tag}:
            run.mismatch = f"final-answer call has tags {sorted(tags)}, expected only {run.tag}"
        elif run.steps and delimiter.join(run.steps) not in call["prefix"]:
            run.mismatch = "the run's steps are not the reasoning its final-answer call continued"
        elif call["output"] is None or not call["output"].rstrip().endswith(run.answer or ""):
            run.mismatch = "glimp_answer is not the output of the run's own final-answer call"


# --------------------------------------------------------------------------- driving one level


@dataclasses.dataclass
class LevelResult:
    """What one concurrency level produced."""

    concurrency: int
    runs: list[RunRecord]
    wall: float
    timed_out: bool


async def run_level(
    graph: Any,
    runs: list[RunRecord],
    concurrency: int,
    timeout: float,
    recorder: FinalAnswerRecorder,
) -> LevelResult:
    """Run every record through ``graph`` with at most ``concurrency`` in flight, within ``timeout`` seconds."""
    sem = asyncio.Semaphore(concurrency)

    async def one(run: RunRecord) -> None:
        submitted = time.perf_counter()
        async with sem:
            start = time.perf_counter()
            run.waited = start - submitted
            config = {"metadata": {"load_run": run.key}, "callbacks": [recorder]}
            try:
                out = await graph.ainvoke({"question": run.question}, config=config)
            except Exception as exc:  # a measurement: counted by type
                run.error, run.error_message = type(exc).__name__, str(exc)[:300]
            else:
                run.answer = out["glimp_answer"]
                run.steps = [s.text for s in out["glimp_steps"]]
            run.latency = time.perf_counter() - start
            run.finished = True

    start = time.perf_counter()
    timed_out = False
    tasks = [asyncio.ensure_future(one(r)) for r in runs]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except TimeoutError:
        timed_out = True
        await asyncio.gather(*tasks, return_exceptions=True)  # wait_for cancelled them; let them unwind
    return LevelResult(concurrency, runs, time.perf_counter() - start, timed_out)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summarize(level: LevelResult) -> dict[str, Any]:
    """Throughput, latency percentiles, errors by type and mapping failures of one level."""
    ok = [r for r in level.runs if r.finished and not r.error and not r.mismatch]
    errors = Counter(r.error for r in level.runs if r.error)
    unfinished = sum(not r.finished for r in level.runs)
    if unfinished:
        errors["LevelTimeout (unfinished)"] = unfinished
    latencies = [r.latency for r in level.runs if r.finished and not r.error and r.latency is not None]
    return {
        "concurrency": level.concurrency,
        "runs": len(level.runs),
        "ok": len(ok),
        "errors": dict(errors),
        "error_samples": {r.error: r.error_message for r in level.runs if r.error},
        "mismatches": [f"{r.key}: {r.mismatch}" for r in level.runs if r.mismatch],
        "wall_s": level.wall,
        "throughput_per_min": 60.0 * len(ok) / level.wall if level.wall > 0 else 0.0,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "max_s": max(latencies) if latencies else None,
        "mean_wait_s": sum(r.waited for r in level.runs) / len(level.runs) if level.runs else 0.0,
        "timed_out": level.timed_out,
    }


# --------------------------------------------------------------------------- nothing left behind


def _pid_alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        text = status.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = re.search(r"^State:\s+(\S)", text, re.MULTILINE)
    return bool(state) and state.group(1) != "Z"  # type: ignore[union-attr]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def leftovers(pids: Sequence[int], ports: Sequence[int], binary: str) -> list[str]:
    """Processes and listening ports of the run that are still there (empty: clean)."""
    found = [f"pid {pid} still alive" for pid in pids if _pid_alive(pid)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace") == binary:
            args = [a.decode(errors="replace") for a in argv]
            port = args[args.index("--port") + 1] if "--port" in args[:-1] else "?"
            if port in {str(p) for p in ports} and _pid_alive(int(proc.name)):
                found.append(f"llama-server pid {proc.name} on port {port} still running")
    found += [f"port {port} still accepts connections" for port in ports if _listening(port)]
    return sorted(set(found))


# --------------------------------------------------------------------------- servers


def start_servers(args: argparse.Namespace) -> tuple[list[Any], str]:
    """Fetch both models, find or build llama-server, and start one server per model with ``-np parallel``."""
    from glimp_graph.serving import LlamaServer, ensure_llama_server, fetch_model
    from glimp_graph.serving.weights import get_spec

    specs = [get_spec(args.small), get_spec(args.large)]
    paths = [fetch_model(spec, args.cache_dir, progress=True) for spec in specs]
    binary = ensure_llama_server(args.cache_dir, progress=True)
    servers: list[Any] = []
    try:
        for spec, path in zip(specs, paths, strict=True):
            servers.append(
                LlamaServer.start(
                    path,
                    alias=spec.alias,
                    binary=binary,
                    ctx_size=args.ctx_per_slot * args.parallel,
                    threads=args.threads,
                    parallel=args.parallel,
                    ready_timeout=args.ready_timeout,
                    cache_dir=args.cache_dir,
                )
            )
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, str(binary)


# --------------------------------------------------------------------------- report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(args: argparse.Namespace, argv: Sequence[str], summaries: list[dict[str, Any]], left: list[str]) -> str:
    """The Markdown report."""
    from glimp_graph.serving import LLAMA_CPP_PYTHON_VERSION

    lines = [
        "# Load test",
        "",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by:",
        "",
        "```",
        shlex.join(["python", "bench/load.py", *argv]),
        "```",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; glimp-graph {_version('glimp-graph')},"
        f" langgraph {_version('langgraph')},"
        f" langchain-core {_version('langchain-core')}, langchain-openai {_version('langchain-openai')},"
        f" openai {_version('openai')}, httpx {_version('httpx')}",
        f"- llama-server built from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s sources;"
        f" small `{args.small}`, large `{args.large}`, one server each, {args.parallel} slot(s) (`-np`),"
        f" context {args.ctx_per_slot} tokens per slot, {args.threads} thread(s) per server",
        f"- Router: tau={args.tau}, max_step_tokens={args.max_step_tokens},"
        f" max_thinking_tokens={args.max_thinking_tokens}, max_steps={args.max_steps},"
        f" final_max_tokens={args.final_max_tokens}; per-level limit {args.level_timeout:g} s;"
        f" endpoint timeout {args.request_timeout:g} s, {args.max_retries} retries",
        "",
        "## Results",
        "",
        "Latency: one run's wall time from the moment it got a concurrency slot (queueing for the slot excluded; the"
        " mean wait for a slot is its own column). Throughput: successful runs per minute of the level's wall time."
        " Mapped: runs whose final-answer call carried their own question's tag, continued their own steps and whose"
        " answer was that call's output.",
        "",
        "| N (concurrent) | runs | ok | mapped wrong | errors (by type) | wall s | runs/min | p50 s | p95 s | max s"
        " | mean slot wait s |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "none"
        lines.append(
            f"| {s['concurrency']} | {s['runs']} | {s['ok']} | {len(s['mismatches'])} | {errors} | {s['wall_s']:.1f}"
            f" | {s['throughput_per_min']:.2f} | {_fmt(s['p50_s'])} | {_fmt(s['p95_s'])} | {_fmt(s['max_s'])}"
            f" | {s['mean_wait_s']:.1f} |"
        )
    samples = {k: v for s in summaries for k, v in s["error_samples"].items()}
    mismatches = [m for s in summaries for m in s["mismatches"]]
    if samples:
        lines += ["", "Error samples (one per type):", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(samples.items())]
    if mismatches:
        lines += ["", "Runs mapped to the wrong question:", ""] + [f"- {m}" for m in mismatches]
    lines += [
        "",
        "## Cleanup",
        "",
        "After the servers were stopped: "
        + ("no llama-server process of the run is left and none of its ports accepts connections." if not left else "")
        + "".join(f"\n- LEFT OVER: {item}" for item in left),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", default="qwen2.5-coder-0.5b", help="small model name (glimp_graph.serving.MODELS)")
    p.add_argument("--large", default="qwen2.5-coder-1.5b", help="large model name")
    p.add_argument("--levels", default="1,4,16,32", help="comma-separated concurrency levels N")
    p.add_argument("--questions", type=int, default=None, help="runs per level (default: max(2N, 8))")
    p.add_argument("--start", type=int, default=0, help="index of the first GSM8K dev question")
    p.add_argument("--data", type=Path, default=DATA, help="JSONL problem file")
    p.add_argument("--parallel", type=int, default=8, help="llama-server slots (-np) per server")
    p.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens per slot")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads per server")
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--max-thinking-tokens", type=int, default=128)
    p.add_argument("--max-step-tokens", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--final-max-tokens", type=int, default=48)
    p.add_argument("--level-timeout", type=float, default=600.0, help="wall-clock limit of one level (s)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="endpoint timeout of one request (s)")
    p.add_argument("--max-retries", type=int, default=2, help="endpoint retries")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds a server may take to start")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "LOAD.md", help="Markdown report")
    args = p.parse_args(argv)
    args.level_list = [int(x) for x in args.levels.split(",") if x.strip()]
    if not args.level_list or min(args.level_list) < 1:
        p.error("--levels needs positive integers")
    return args


async def drive(graph: Any, args: argparse.Namespace, delimiter: str) -> list[dict[str, Any]]:
    """Every level in one event loop (langchain-openai's async clients are bound to the loop)."""
    summaries = []
    for n in args.level_list:
        count = args.questions or max(2 * n, 8)
        runs = make_runs(load_questions(args.data, count, args.start), f"N{n}")
        recorder = FinalAnswerRecorder()
        level = await run_level(graph, runs, n, args.level_timeout, recorder)
        check_mapping(level.runs, recorder, delimiter)
        summary = summarize(level)
        summaries.append(summary)
        print(
            f"N={n}: {summary['ok']}/{summary['runs']} ok, errors {summary['errors'] or 'none'}, "
            f"wrong mapping {len(summary['mismatches'])}, {summary['throughput_per_min']:.2f} runs/min, "
            f"p50 {_fmt(summary['p50_s'])} s, p95 {_fmt(summary['p95_s'])} s, wall {summary['wall_s']:.1f} s",
            flush=True,
        )
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    config = GlimpConfig(
        tau=args.tau,
        max_step_tokens=args.max_step_tokens,
        max_thinking_tokens=args.max_thinking_tokens,
        max_steps=args.max_steps,
        final_max_tokens=args.final_max_tokens,
    )
    servers, binary = start_servers(args)
    pids, ports = [s.pid for s in servers], [s.port for s in servers]
    try:
        endpoints = [
            Endpoint(
                base_url=s.base_url,
                model=s.alias,
                seed=7,
                timeout=args.request_timeout,
                max_retries=args.max_retries,
            )
            for s in servers
        ]
        graph = create_glimp_graph(endpoints[0], endpoints[1], config=config)
        summaries = asyncio.run(drive(graph, args, config.delimiter))
    finally:
        for server in servers:
            server.stop()
    left = leftovers(pids, ports, binary)
    report = render(args, argv, summaries, left)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"cleanup: {left or 'clean'}\nreport: {args.out}")
    bad = left or any(s["errors"] or s["mismatches"] for s in summaries)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
