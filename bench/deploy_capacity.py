"""Capacity arithmetic for docs/DEPLOY.md: GlimpRouter with one GPU per model, at the batch-1 floor.

Reads the per-token costs of ../shared/docs/GPU_COSTS.md (a kernel benchmark: decode ms/token and the prefill of
64/256/1024 new tokens, per model shape), the routing traces of bench/results/gsm8k_qwen.jsonl (each run's steps,
the model that wrote each and its tokens) and the router's own cost per step from bench/OVERHEAD.md, and works out
for each pair of shapes: how long each GPU is busy per run, which one is the bottleneck, runs/s per replica pair
and per GPU against the large model alone, and how many replica pairs one router process keeps busy. Every number
it prints is computed here from those inputs (and the stated assumptions, which are options).

    python bench/deploy_capacity.py            # the markdown section on stdout
    python bench/deploy_capacity.py --write    # replace the block between the capacity markers in docs/DEPLOY.md

Stdlib only: it runs without the project's dependencies.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_COSTS = ROOT.parent / "shared" / "docs" / "GPU_COSTS.md"
RESULTS = ROOT / "bench" / "results" / "gsm8k_qwen.jsonl"
OVERHEAD = ROOT / "bench" / "OVERHEAD.md"
DOC = ROOT / "docs" / "DEPLOY.md"
BEGIN, END = "<!-- capacity:begin -->", "<!-- capacity:end -->"

# (large shape, small shape, what the pair is): a shape matches a GPU_COSTS.md row by its name or by the model
# named in brackets after it ("qwen2.5-32b(r1-distill-32b)" answers to both)
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("r1-distill-32b", "qwen3-4b", "the paper's pair"),
    ("r1-distill-32b", "qwen3-1.7b", "32B with a smaller probe"),
    ("r1-distill-7b", "qwen2.5-1.5b", "a 7B pair"),
    ("qwen2.5-1.5b", "qwen2.5-0.5b", "the shapes of the pair that wrote the traces"),
)
DEFAULTS = {
    "job": "glimp@0.7994",
    "large_only_job": "large-only",
    "prompt_tokens": 130,
    "delimiter_tokens": 1,
    "answer_prefix_tokens": 4,
    "node_gpus": 8,
}


class InputError(ValueError):
    """An input file or option that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class Shape:
    """One model shape's measured costs on one GPU at one batch size (a GPU_COSTS.md row)."""

    name: str
    batch: int
    decode_ms: float
    prefill_ms: tuple[tuple[int, float], ...]  # (new tokens, ms), ascending
    weight_gb: float | None = None

    def prefill(self, tokens: int) -> float:
        """Time to read ``tokens`` new tokens after the cached ones, and produce the next token.

        Piecewise linear through (1, decode ms/token) (reading one new token is one decode step) and the measured
        prefills; past the largest one, the last segment's slope.
        """
        points = ((1, self.decode_ms), *self.prefill_ms)
        n = max(tokens, 1)
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if n <= x1:
                return y0 + (y1 - y0) * (n - x0) / (x1 - x0)
        (x0, y0), (x1, y1) = points[-2], points[-1]
        return y1 + (y1 - y0) * (n - x1) / (x1 - x0)


@dataclass(frozen=True)
class GpuCosts:
    """GPU_COSTS.md: the device, the cached context of its measurements and its rows by (shape, batch)."""

    device: str
    context: int | None
    rows: dict[tuple[str, int], Shape]

    def find(self, key: str, batch: int = 1) -> Shape | None:
        """The row whose name (or the model named in its brackets) is ``key``, at ``batch``."""
        for (name, b), shape in self.rows.items():
            if b == batch and key.lower() in _aliases(name):
                return shape
        return None

    @property
    def batches(self) -> list[int]:
        """The batch sizes measured, ascending."""
        return sorted({b for _, b in self.rows})


def _aliases(name: str) -> set[str]:
    match = re.fullmatch(r"\s*([^()]+?)\s*(?:\(([^()]+)\))?\s*", name)
    if not match:
        return {name.strip().lower()}
    return {part.strip().lower() for part in match.groups() if part}


def _number(cell: str, what: str, path: str) -> float:
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        raise InputError(f"{path}: {what} is {cell!r}, not a number; fix the table") from None


def _table(text: str, must_have: str, path: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table whose header contains ``must_have``: its header cells and body rows."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("|") and must_have in line:
            header = [c.strip() for c in line.strip().strip("|").split("|")]
            body = []
            for row in lines[i + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                body.append([c.strip() for c in row.strip().strip("|").split("|")])
            return header, body
    raise InputError(f"{path}: no table with a column {must_have!r}; is it the right file?")


def read_gpu_costs(text: str, path: str = "GPU_COSTS.md") -> GpuCosts:
    """Parse a GPU_COSTS.md-like file: a table with a shape column, ``decode ms/token`` and ``prefill N`` columns.

    Optional columns: ``batch`` (default 1 for every row) and ``weights read per token (GB)``.

    Raises:
        InputError: no such table, a column missing, or a cell that is not a number.
    """
    header, body = _table(text, "decode ms/token", path)
    lower = [h.lower() for h in header]
    decode = lower.index("decode ms/token")
    prefills = [(int(m.group(1)), i) for i, h in enumerate(lower) if (m := re.match(r"prefill (\d+)\b", h))]
    if len(prefills) < 1:
        raise InputError(f"{path}: no 'prefill N ...' column in {header}; the script needs at least one")
    batch = lower.index("batch") if "batch" in lower else None
    weight = next((i for i, h in enumerate(lower) if h.startswith("weights")), None)
    rows: dict[tuple[str, int], Shape] = {}
    for cells in body:
        if len(cells) != len(header):
            raise InputError(f"{path}: row {cells} has {len(cells)} cells, the header {len(header)}")
        name = cells[0]
        b = int(_number(cells[batch], f"the batch of {name!r}", path)) if batch is not None else 1
        if b < 1:
            raise InputError(f"{path}: the batch of {name!r} is {b}; it must be >= 1")
        points = tuple(sorted((n, _number(cells[i], f"{name!r} {header[i]!r}", path)) for n, i in prefills))
        rows[(name, b)] = Shape(
            name=name,
            batch=b,
            decode_ms=_number(cells[decode], f"{name!r} decode ms/token", path),
            prefill_ms=points,
            weight_gb=_number(cells[weight], f"{name!r} weights", path) if weight is not None else None,
        )
    device = re.search(r"Measured on (?:one )?([^(,.\n]+)", text)
    context = re.search(r"KV cache of ([\d,]+) tokens", text)
    return GpuCosts(
        device=device.group(1).strip() if device else "the GPU of GPU_COSTS.md",
        context=int(context.group(1).replace(",", "")) if context else None,
        rows=rows,
    )


@dataclass(frozen=True)
class Overhead:
    """bench/OVERHEAD.md: the graph's own time per step outside the model calls, and where it was measured."""

    ms_per_step: float
    runs: int
    steps: int
    machine: str


def read_overhead(text: str, path: str = "OVERHEAD.md") -> Overhead:
    """The ``langgraph`` row of OVERHEAD.md's table (``overhead per step, ms``) and its ``Machine:`` line.

    Raises:
        InputError: no such table or row.
    """
    header, body = _table(text, "overhead per step, ms", path)
    lower = [h.lower() for h in header]
    row = next((r for r in body if r[lower.index("driver")] == "langgraph"), None)
    if row is None:
        raise InputError(f"{path}: no 'langgraph' row in its overhead table")
    machine = re.search(r"^Machine: ([^;\n]+)", text, re.MULTILINE)
    return Overhead(
        ms_per_step=_number(row[lower.index("overhead per step, ms")], "langgraph overhead per step", path),
        runs=int(_number(row[lower.index("runs")], "langgraph runs", path)),
        steps=int(_number(row[lower.index("steps")], "langgraph steps", path)),
        machine=machine.group(1).strip() if machine else "its machine",
    )


@dataclass(frozen=True)
class Run:
    """One recorded run: its steps as (model, tokens), probe token included in a small step, and its answer."""

    steps: tuple[tuple[str, int], ...]
    final_tokens: int


def read_runs(lines: Sequence[str], job: str, path: str = "results") -> list[Run]:
    """The runs of ``job`` that finished without an error and kept their steps.

    Raises:
        InputError: no such run, or a step with another model than small / large.
    """
    runs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
        if record.get("job") != job or record.get("error") or not record.get("step_records"):
            continue
        steps = tuple((s["model"], int(s["tokens"])) for s in record["step_records"])
        bad = {m for m, _ in steps} - {"small", "large"}
        if bad:
            raise InputError(f"{path}:{number}: step model {sorted(bad)}; expected 'small' or 'large'")
        runs.append(Run(steps=steps, final_tokens=int(record.get("final_tokens") or 0)))
    if not runs:
        raise InputError(f"{path}: no finished run of job {job!r} with its steps; name another with --job")
    return runs


@dataclass(frozen=True)
class Prices:
    """The assumed token counts the records do not keep."""

    prompt_tokens: int
    delimiter_tokens: int
    answer_prefix_tokens: int


COMPONENTS = ("probes", "small steps", "small reading", "large steps", "final answer", "large reading")


def run_cost(run: Run, small: Shape | None, large: Shape, prices: Prices) -> dict[str, float]:
    """Busy ms of each GPU per component for one run, and the tokens each one read that it had not seen.

    The rules: each server keeps every token it read or wrote in its prefix cache and reads only what it has not
    seen (its first call the prompt; later, the steps the other model wrote since, and the delimiters). A probe is
    one small call that reads the new tokens and yields one token; a small step continues from it (the rest of the
    step's tokens); a large step reads what is new and writes its tokens; the final answer (large) reads the end of
    the trace and the answer prefix, then writes. ``small=None`` prices the run on the large model alone.
    """
    cost = dict.fromkeys(COMPONENTS, 0.0) | {"small read": 0.0, "large read": 0.0}
    seen = {"small": 0, "large": 0}
    length = prices.prompt_tokens  # the prompt of the next call: prompt + steps so far, each with its delimiter

    def read(role: str, upto: int) -> int:
        new = upto - seen[role]
        cost[f"{role} read"] += new
        return new

    for k, (model, tokens) in enumerate(run.steps):
        if k:
            length += prices.delimiter_tokens
        if small is not None:
            new = read("small", length)
            cost["probes"] += small.decode_ms
            cost["small reading"] += small.prefill(new) - small.decode_ms
            seen["small"] = length
        if model == "small" and small is not None:
            cost["small steps"] += max(tokens - 1, 0) * small.decode_ms
            seen["small"] = length + tokens
        else:
            new = read("large", length)
            cost["large reading"] += large.prefill(new) - large.decode_ms
            cost["large steps"] += tokens * large.decode_ms
            seen["large"] = length + tokens
        length += tokens
    new = read("large", length + prices.answer_prefix_tokens)
    cost["large reading"] += large.prefill(new) - large.decode_ms
    cost["final answer"] += max(run.final_tokens, 1) * large.decode_ms
    return cost


@dataclass(frozen=True)
class PairCapacity:
    """One pair's busy times per run (means over the runs) and what they give."""

    key: tuple[str, str, str]
    small: Shape
    large: Shape
    glimp: dict[str, float]  # mean ms per run per component, and tokens read
    large_only: dict[str, float]
    node_gpus: int

    @property
    def small_ms(self) -> float:
        """The small GPU's busy ms per run."""
        return self.glimp["probes"] + self.glimp["small steps"] + self.glimp["small reading"]

    @property
    def large_ms(self) -> float:
        """The large GPU's busy ms per run."""
        return self.glimp["large steps"] + self.glimp["final answer"] + self.glimp["large reading"]

    @property
    def alone_ms(self) -> float:
        """The large model alone: its GPU's busy ms per run."""
        return self.large_only["large steps"] + self.large_only["final answer"] + self.large_only["large reading"]

    @property
    def bottleneck(self) -> str:
        """The GPU busier per run: ``small`` or ``large``."""
        return "small" if self.small_ms > self.large_ms else "large"

    def runs_per_s(self, n_small: int, n_large: int) -> float:
        """Runs/s of ``n_small`` small and ``n_large`` large replicas, each busy one request at a time."""
        return min(n_small * 1000 / self.small_ms, n_large * 1000 / self.large_ms)

    @property
    def node_split(self) -> tuple[int, int, float]:
        """The split of ``node_gpus`` GPUs (small, large, runs/s) with the most runs/s; ties: more large GPUs."""
        splits = [(s, self.node_gpus - s, self.runs_per_s(s, self.node_gpus - s)) for s in range(1, self.node_gpus)]
        return max(splits, key=lambda x: (x[2], x[1]))


def mean_cost(runs: Sequence[Run], small: Shape | None, large: Shape, prices: Prices) -> dict[str, float]:
    """The mean of :func:`run_cost` over ``runs`` (a throughput is total work over total time: means, not medians)."""
    costs = [run_cost(r, small, large, prices) for r in runs]
    return {key: statistics.fmean(c[key] for c in costs) for key in costs[0]}


def capacities(
    costs: GpuCosts,
    glimp_runs: Sequence[Run],
    alone_runs: Sequence[Run],
    prices: Prices,
    *,
    pairs: Sequence[tuple[str, str, str]] = PAIRS,
    batch: int = 1,
    node_gpus: int = 8,
) -> tuple[list[PairCapacity], list[tuple[str, str, str]]]:
    """Each pair's capacity at ``batch``; the pairs GPU_COSTS.md has no row for come back second."""
    found, missing = [], []
    for key in pairs:
        large, small = costs.find(key[0], batch), costs.find(key[1], batch)
        if large is None or small is None:
            missing.append(key)
            continue
        found.append(
            PairCapacity(
                key=key,
                small=small,
                large=large,
                glimp=mean_cost(glimp_runs, small, large, prices),
                large_only=mean_cost(alone_runs, None, large, prices),
                node_gpus=node_gpus,
            )
        )
    return found, missing


def _ms(x: float) -> str:
    return f"{x:,.0f}"


def _g(x: float) -> str:
    return f"{x:.3g}"


def _shape_table(job: str, glimp: Sequence[Run], alone_job: str, alone: Sequence[Run], prices: Prices) -> list[str]:
    def stats(runs: Sequence[Run]) -> dict[str, float]:
        small = [t for r in runs for m, t in r.steps if m == "small"]
        large = [t for r in runs for m, t in r.steps if m == "large"]
        n_steps = sum(len(r.steps) for r in runs)
        return {
            "runs": len(runs),
            "steps": n_steps / len(runs),
            "large": len(large) / len(runs),
            "share": len(large) / n_steps,
            "small_tokens": statistics.fmean(small) if small else math.nan,
            "large_tokens": statistics.fmean(large) if large else math.nan,
            "thinking": sum(t for r in runs for _, t in r.steps) / len(runs),
            "final": statistics.fmean(r.final_tokens for r in runs),
        }

    a, b = stats(glimp), stats(alone)

    def cell(x: float, digits: int = 1) -> str:
        return "-" if math.isnan(x) else f"{x:.{digits}f}"

    return [
        f"| per run (mean) | GlimpRouter (`{job}`) | large model alone (`{alone_job}`) |",
        "|---|---|---|",
        f"| runs | {a['runs']:.0f} | {b['runs']:.0f} |",
        f"| steps | {cell(a['steps'], 2)} | {cell(b['steps'], 2)} |",
        f"| steps by the large model | {cell(a['large'], 2)} ({a['share']:.0%}) | "
        f"{cell(b['large'], 2)} ({b['share']:.0%}) |",
        f"| tokens per small step (probe token included) | {cell(a['small_tokens'])} | {cell(b['small_tokens'])} |",
        f"| tokens per large step | {cell(a['large_tokens'])} | {cell(b['large_tokens'])} |",
        f"| thinking tokens | {cell(a['thinking'], 0)} | {cell(b['thinking'], 0)} |",
        f"| final answer tokens | {cell(a['final'])} | {cell(b['final'])} |",
        f"| assumed (the records do not keep them): prompt, delimiter, answer prefix tokens | "
        f"{prices.prompt_tokens}, {prices.delimiter_tokens}, {prices.answer_prefix_tokens} | same |",
    ]


def _pair_table(found: Sequence[PairCapacity], overhead: Overhead, steps_per_run: float) -> list[str]:
    def row(label: str, values: Sequence[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    router_ms = overhead.ms_per_step * steps_per_run
    lines = [
        row("per run, batch 1", [f"{p.key[0]} + {p.key[1]} ({p.key[2]})" for p in found]),
        "|---|" + "---|" * len(found),
        row("decode ms/token: small, large", [f"{p.small.decode_ms:g}, {p.large.decode_ms:g}" for p in found]),
    ]
    if all(p.small.weight_gb is not None and p.large.weight_gb is not None for p in found):
        lines.append(
            row("weights (GB): small, large", [f"{p.small.weight_gb:g}, {p.large.weight_gb:g}" for p in found])
        )
    g = [p.glimp for p in found]
    lines += [
        row("small GPU: probe tokens (ms)", [_ms(c["probes"]) for c in g]),
        row("small GPU: small steps after the probe token (ms)", [_ms(c["small steps"]) for c in g]),
        row(
            "small GPU: reading what it did not write (ms; tokens)",
            [f"{_ms(c['small reading'])}; {c['small read']:.0f}" for c in g],
        ),
        row("**small GPU busy (ms)**", [f"**{_ms(p.small_ms)}**" for p in found]),
        row("large GPU: large steps (ms)", [_ms(c["large steps"]) for c in g]),
        row("large GPU: final answer (ms)", [_ms(c["final answer"]) for c in g]),
        row(
            "large GPU: reading what it did not write (ms; tokens)",
            [f"{_ms(c['large reading'])}; {c['large read']:.0f}" for c in g],
        ),
        row("**large GPU busy (ms)**", [f"**{_ms(p.large_ms)}**" for p in found]),
        row(
            "bottleneck (busy ratio)",
            [f"{p.bottleneck} ({max(p.small_ms, p.large_ms) / min(p.small_ms, p.large_ms):.2f}x)" for p in found],
        ),
        row("large model alone: its GPU busy (ms)", [_ms(p.alone_ms) for p in found]),
        row(
            "latency, one run at a time (s): GlimpRouter / alone",
            [f"{(p.small_ms + p.large_ms) / 1000:.2f} / {p.alone_ms / 1000:.2f}" for p in found],
        ),
        row("runs/s per pair, one run at a time", [_g(1000 / (p.small_ms + p.large_ms)) for p in found]),
        row("**runs/s per pair, runs overlapped** (1 / bottleneck)", [f"**{_g(p.runs_per_s(1, 1))}**" for p in found]),
        row(
            "runs/s per GPU: pair (2 GPUs) / large model alone",
            [f"{_g(p.runs_per_s(1, 1) / 2)} / {_g(1000 / p.alone_ms)}" for p in found],
        ),
    ]
    node = found[0].node_gpus if found else 0
    lines += [
        row(
            f"best split of {node} GPUs (small + large): runs/s",
            [f"{s} + {lg}: {_g(r)}" for s, lg, r in (p.node_split for p in found)],
        ),
        row(f"{node} replicas of the large model alone: runs/s", [_g(node * 1000 / p.alone_ms) for p in found]),
        row(
            "pairs one router process keeps busy (runs overlapped)",
            [f"{1000 / router_ms / p.runs_per_s(1, 1):,.0f}" for p in found],
        ),
    ]
    return lines


def render(
    costs: GpuCosts,
    glimp_runs: Sequence[Run],
    alone_runs: Sequence[Run],
    overhead: Overhead,
    prices: Prices,
    *,
    sources: dict[str, str],
    job: str,
    alone_job: str,
    command: str,
    pairs: Sequence[tuple[str, str, str]] = PAIRS,
    node_gpus: int = 8,
) -> str:
    """The markdown section (between the capacity markers) from the parsed inputs."""
    found, missing = capacities(costs, glimp_runs, alone_runs, prices, pairs=pairs, node_gpus=node_gpus)
    if not found:
        names = ", ".join(f"{a} + {b}" for a, b, _ in pairs)
        raise InputError(f"{sources['gpu_costs']}: none of the pairs {names} has both shapes at batch 1")
    steps_per_run = sum(len(r.steps) for r in glimp_runs) / len(glimp_runs)
    router_ms = overhead.ms_per_step * steps_per_run
    context = f"after a {costs.context:,}-token cache" if costs.context else "after a cached context"
    out = [
        f"### Capacity arithmetic: one {costs.device} per model",
        "",
        f"Generated by `{command}` from `{sources['gpu_costs']}`, `{sources['results']}` (jobs `{job}` and "
        f"`{alone_job}`) and `{sources['overhead']}`; `tests/unit/test_deploy_capacity.py` fails when this block "
        "no longer matches them.",
        "",
        f"**A floor from a kernel benchmark, not vLLM measurements.** GPU_COSTS.md measured each model shape with "
        f"random weights of its real shapes: batch-1 decode captured in CUDA graphs and prefills of new tokens "
        f"{context}, no serving engine. A served call adds HTTP, scheduling and sampling; vLLM's fused kernels may "
        f"do better per token. Every number below is what one {costs.device} per model gives at batch 1.",
        "",
        f"**The run's shape**: the steps of the `{job}` runs in `{sources['results']}` (GSM8K problems routed by "
        "the local Qwen2.5-Coder 0.5B / 1.5B pair: its step lengths and its large-step share, replayed "
        "run by run), and the same problems answered by the large model alone. An R1-style pair on harder problems "
        "writes far longer traces: every busy time below grows with the tokens, and the ratios hold only as far as "
        "that pair routes as this one did.",
        "",
        *_shape_table(job, glimp_runs, alone_job, alone_runs, prices),
        "",
        "**How a run is priced** (`run_cost` in the script): each server keeps in its prefix cache every token it "
        "read or wrote and reads only the rest: its first call the prompt; later the steps the other model wrote "
        "since, with their delimiters. A call costs the prefill of its new tokens (piecewise linear through "
        "GPU_COSTS.md's prefill columns, and one decode step for one new token), then one decode step per token "
        "after the first. So a probe is one small decode token plus the reading of the large model's steps, a small "
        "step its tokens after the probe token, a large step its tokens plus reading the small model's steps, and "
        "the final answer (large) the end of the trace, the answer prefix and its tokens. Means over the runs: a "
        "throughput is total work over total time.",
        "",
        *_pair_table(found, overhead, steps_per_run),
        "",
        "Reading it:",
        "",
    ]
    for p in found:
        split = p.node_split
        out.append(
            f"- {p.key[0]} + {p.key[1]}: the {p.bottleneck} GPU is the bottleneck; with runs overlapped, one pair "
            f"does {_g(p.runs_per_s(1, 1))} runs/s, {_g(p.runs_per_s(1, 1) / 2 / (1000 / p.alone_ms))}x the "
            f"large model alone per GPU; on {p.node_gpus} GPUs, {split[0]} small + {split[1]} large replicas give "
            f"{_g(split[2])} runs/s, {_g(split[2] / (p.node_gpus * 1000 / p.alone_ms))}x {p.node_gpus} replicas of "
            "the large model alone."
        )
    if missing:
        out.append(
            "- Not in GPU_COSTS.md at batch 1, so not computed: " + ", ".join(f"{a} + {b}" for a, b, _ in missing) + "."
        )
    out += [
        "",
        "**Routers and replicas (N x M).** The router holds no model state: a run's state is in its checkpoint "
        "(Postgres when several processes share the threads: the checkpoints section) and every model call "
        "carries its whole prompt, so any router process can take any run and send its calls to any replica. "
        "Small and large replicas scale separately (vLLM `--data-parallel-size`, or more `vllm serve` processes "
        "behind a load balancer, sticky per thread so the prefix cache keeps the trace), in the ratio of their busy "
        "times above; router processes scale with the runs/s. `bench/OVERHEAD.md` measured the graph's own time "
        f"outside the model calls at {overhead.ms_per_step} ms per step ({overhead.runs} runs, {overhead.steps} "
        f"steps; {overhead.machine}): at {steps_per_run:.2f} steps per run that is {router_ms:.1f} ms of one core "
        f"per run, so one router process (one Python process, one core) drives at most {_g(1000 / router_ms)} "
        "runs/s. That is wall time outside the calls with one run at a time, the client's request building and "
        "parsing included; the OpenAI face's own HTTP and JSON work (`glimp serve-router`, `deploy/`) is not in it. "
        "N router processes and M replica pairs give min(N x router runs/s, M x pair runs/s).",
        "",
    ]
    batched = [b for b in costs.batches if b > 1]
    if not batched:
        out.append(
            "**Batching is not measured.** GPU_COSTS.md has batch-1 rows only, so this page gives the batch-1 floor: "
            "each replica serving one request at a time. vLLM batches concurrent requests, which raises a "
            "replica's runs/s by an amount these inputs do not give; the router's limit does not move with it, so "
            "more runs/s per replica means more router processes per replica."
        )
    else:
        out += [
            "**Batching, as GPU_COSTS.md measures it** (each of a batch's b runs advances one token per decode step "
            "of the batch row; runs/s per pair = b / bottleneck busy time):",
            "",
            "| batch | " + " | ".join(f"{p.key[0]} + {p.key[1]}" for p in found) + " |",
            "|---|" + "---|" * len(found),
        ]
        for b in [1, *batched]:
            at_b, _ = capacities(
                costs, glimp_runs, alone_runs, prices, pairs=[p.key for p in found], batch=b, node_gpus=node_gpus
            )
            by_key = {p.key: p for p in at_b}
            cells = [
                f"{_g(b * by_key[p.key].runs_per_s(1, 1))} runs/s ({by_key[p.key].bottleneck})"
                if p.key in by_key
                else "not measured"
                for p in found
            ]
            out.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def replace_block(doc: str, block: str, path: str = "DEPLOY.md") -> str:
    """``doc`` with the text between the capacity markers replaced by ``block``.

    Raises:
        InputError: the markers are missing, repeated or out of order.
    """
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        raise InputError(f"{path}: needs one {BEGIN} line and, after it, one {END} line around the capacity section")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def current_block(doc: str) -> str | None:
    """The text between the capacity markers, or None without them."""
    if BEGIN not in doc or END not in doc:
        return None
    return doc.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")


def _shown(path: Path) -> str:
    # not resolved: ../shared may be a symbolic link, and the page names the path as the repository sees it
    return os.path.relpath(os.path.abspath(path), ROOT)


def _read(path: Path, what: str, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {what} {str(path)!r} ({exc.strerror}); pass another with {option}") from None


def _pair(text: str) -> tuple[str, str, str]:
    parts = [part.strip() for part in text.split(",", 2)]
    if len(parts) < 2 or not all(parts[:2]):
        raise InputError(f"--pair {text!r}: write LARGE,SMALL or LARGE,SMALL,LABEL (shape names of GPU_COSTS.md)")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else "a pair named on the command line"


def build(args: argparse.Namespace) -> str:
    """Read the inputs named by ``args`` and render the section."""
    for name in ("prompt_tokens", "answer_prefix_tokens", "delimiter_tokens"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be >= 0")
    if args.node_gpus < 2:
        raise InputError(f"--node-gpus is {args.node_gpus}; it must be >= 2 (a small and a large GPU)")
    costs = read_gpu_costs(_read(args.gpu_costs, "GPU costs", "--gpu-costs"), _shown(args.gpu_costs))
    lines = _read(args.results, "results", "--results").splitlines()
    glimp = read_runs(lines, args.job, _shown(args.results))
    alone = read_runs(lines, args.large_only_job, _shown(args.results))
    overhead = read_overhead(_read(args.overhead, "overhead report", "--overhead"), _shown(args.overhead))
    prices = Prices(args.prompt_tokens, args.delimiter_tokens, args.answer_prefix_tokens)
    changed = [
        f"--{k.replace('_', '-')} {getattr(args, k)}" for k, default in DEFAULTS.items() if getattr(args, k) != default
    ]
    changed += [
        f"--{k.replace('_', '-')} {_shown(getattr(args, k))}"
        for k, default in (("gpu_costs", GPU_COSTS), ("results", RESULTS), ("overhead", OVERHEAD))
        if getattr(args, k).resolve() != default.resolve()
    ]
    pairs = PAIRS
    if args.pair:
        pairs = tuple(_pair(text) for text in args.pair)
        changed += [f"--pair {text}" for text in args.pair]
    command = " ".join(["python bench/deploy_capacity.py", *changed, "--write"])
    return render(
        costs,
        glimp,
        alone,
        overhead,
        prices,
        sources={
            "gpu_costs": _shown(args.gpu_costs),
            "results": _shown(args.results),
            "overhead": _shown(args.overhead),
        },
        job=args.job,
        alone_job=args.large_only_job,
        command=command,
        pairs=pairs,
        node_gpus=args.node_gpus,
    )


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-costs", type=Path, default=GPU_COSTS, help="GPU_COSTS.md (default ../shared/docs/)")
    p.add_argument("--results", type=Path, default=RESULTS, help="run records (JSONL) with step_records")
    p.add_argument("--overhead", type=Path, default=OVERHEAD, help="bench/OVERHEAD.md")
    p.add_argument("--job", default=DEFAULTS["job"], help="the GlimpRouter job whose traces set the run's shape")
    p.add_argument("--large-only-job", default=DEFAULTS["large_only_job"], help="the large model alone")
    p.add_argument("--prompt-tokens", type=int, default=DEFAULTS["prompt_tokens"], help="assumed prompt length")
    p.add_argument("--delimiter-tokens", type=int, default=DEFAULTS["delimiter_tokens"])
    p.add_argument("--answer-prefix-tokens", type=int, default=DEFAULTS["answer_prefix_tokens"])
    p.add_argument(
        "--pair",
        action="append",
        metavar="LARGE,SMALL[,LABEL]",
        help="a pair of GPU_COSTS.md shapes to compute (repeatable; default: the paper's pair and three more)",
    )
    p.add_argument("--node-gpus", type=int, default=DEFAULTS["node_gpus"], help="GPUs to split in the node row")
    p.add_argument("--write", action="store_true", help="replace the capacity block of --doc instead of printing")
    p.add_argument("--doc", type=Path, default=DOC, help="the page whose capacity block --write replaces")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print the section, or write it into the doc; a bad input is one line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    try:
        block = build(args)
        if args.write:
            doc = _read(args.doc, "the page", "--doc")
            args.doc.write_text(replace_block(doc, block, _shown(args.doc)), encoding="utf-8")
            print(f"wrote the capacity block of {_shown(args.doc)}")
        else:
            sys.stdout.write(block)
    except InputError as exc:
        print(f"deploy_capacity: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
