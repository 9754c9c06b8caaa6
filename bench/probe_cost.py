"""Measure what the probe costs per step on real local servers.

Runs GlimpRouter on the first N GSM8K dev problems and reports probe latency split by what the small server
must read first (the previous step was written by the small model: only the delimiter is new; by the large
model: the whole step is new), and the share of wall time spent probing.

    python bench/probe_cost.py --n 5 --out bench/PROBE_COST.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.serving import LocalModels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_dev.jsonl"


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.mean(values) * 1000:.0f} / {statistics.median(values) * 1000:.0f} ms (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--small", default="qwen2.5-coder-0.5b")
    parser.add_argument("--large", default="qwen2.5-coder-1.5b")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[: args.n]]
    cache = os.environ.get("GLIMP_CACHE_DIR")
    after_small: list[float] = []
    after_large: list[float] = []
    first: list[float] = []
    probe_total = wall_total = 0.0
    with LocalModels(small=args.small, large=args.large, cache_dir=cache, ctx_size=4096, progress=False) as m:
        graph = create_glimp_graph(
            Endpoint(base_url=m.small.base_url, model=m.small.alias, seed=0),
            Endpoint(base_url=m.large.base_url, model=m.large.alias, seed=0),
            config={"tau": args.tau, "max_step_tokens": 256, "max_thinking_tokens": 1024},
        )
        start = time.perf_counter()
        for row in rows:
            out = graph.invoke({"question": row["question"]})
            steps, stats = out["glimp_steps"], out["glimp_stats"]
            probe_total += stats.probe_seconds
            wall_total += stats.wall_seconds
            for i, step in enumerate(steps):
                bucket = first if i == 0 else after_small if steps[i - 1].model == "small" else after_large
                bucket.append(step.probe_seconds)
        elapsed = time.perf_counter() - start
    lines = [
        "# Probe cost per step",
        "",
        f"Command: `python bench/probe_cost.py --n {args.n} --tau {args.tau}"
        + (f" --out {args.out}`" if args.out else "`"),
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"small={args.small}, large={args.large} (llama.cpp server, 2 threads each); {args.n} GSM8K dev problems; "
        f"{elapsed:.0f} s in all.",
        "",
        "| probe | mean / median |",
        "|---|---|",
        f"| first step (question not yet cached by the small server) | {_ms(first)} |",
        f"| after a small step (only the delimiter is new) | {_ms(after_small)} |",
        f"| after a large step (the small server must read the large step) | {_ms(after_large)} |",
        f"| all | {_ms(first + after_small + after_large)} |",
        "",
        f"Time spent probing: {probe_total:.1f} s of {wall_total:.1f} s wall ({probe_total / wall_total:.1%}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
