"""Decode and prompt speed of llama-server builds on the local Qwen pair, trials interleaved build by build.

Usage (on a quiet machine: nothing else running):

    python bench/build_speed.py --build default=PATH --build native=PATH [--build portable=PATH] \
        --trials 5 --tokens 128 --out bench/BUILD_SPEED.md

Each build serves each model in turn (2 threads, as `LocalModels` does); every trial sends one greedy
`/completion` of `--tokens` tokens (`ignore_eos`, no prompt cache) and reads llama.cpp's own timings. Trials
alternate between the builds (A, B, A, B, ...) so that a drift of the machine hits every build alike. The
report gives the median tokens/s per build and model, the range, and each build's median relative to the first.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

PROMPT = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market? Let's think step by step.\n"
)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def completion(base: str, tokens: int) -> dict[str, Any]:
    body = {
        "prompt": PROMPT,
        "n_predict": tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "cache_prompt": False,
        "seed": 7,
    }
    request = urllib.request.Request(
        f"{base}/completion", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=600) as response:
        return json.loads(response.read())["timings"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="append", required=True, help="NAME=PATH of a llama-server binary")
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from glimp_graph.serving import LlamaServer, fetch_model

    builds = dict(item.split("=", 1) for item in args.build)
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for model in args.models.split(","):
        path = fetch_model(model, args.cache_dir, progress=False)
        servers = {
            name: LlamaServer.start(
                path, alias=model, binary=binary, threads=args.threads, ctx_size=2048, cache_dir=args.cache_dir
            )
            for name, binary in builds.items()
        }
        try:
            for server in servers.values():  # warm-up: page the weights in, first-call costs
                completion(f"http://127.0.0.1:{server.port}", 16)
            for trial in range(args.trials):
                for name, server in servers.items():
                    timings = completion(f"http://127.0.0.1:{server.port}", args.tokens)
                    cell = results.setdefault((name, model), {"decode": [], "prompt": []})
                    cell["decode"].append(timings["predicted_per_second"])
                    cell["prompt"].append(timings["prompt_per_second"])
                    print(
                        f"{model} {name} trial {trial}: decode {timings['predicted_per_second']:.1f} tok/s, "
                        f"prompt {timings['prompt_per_second']:.1f} tok/s",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()

    names = list(builds)
    lines = [
        "# llama-server builds: decode and prompt speed",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"CPU: {cpu_model()} ({args.threads} threads per server), {time.strftime('%Y-%m-%d')}; "
        f"{args.trials} trials per build and model, interleaved, {args.tokens} generated tokens each "
        "(greedy, `ignore_eos`), prompt of the GSM8K duck-egg question without prompt cache; llama.cpp's own timings.",
        "",
        "| model | build | decode tok/s (median) | range | vs " + names[0] + " | prompt tok/s (median) |",
        "|---|---|---|---|---|---|",
    ]
    for model in args.models.split(","):
        base = statistics.median(results[(names[0], model)]["decode"])
        for name in names:
            decode = results[(name, model)]["decode"]
            med = statistics.median(decode)
            lines.append(
                f"| {model} | {name} | {med:.1f} | {min(decode):.1f}-{max(decode):.1f} | {med / base:.3f} | "
                f"{statistics.median(results[(name, model)]['prompt']):.1f} |"
            )
    lines += ["", "Builds: " + ", ".join(f"`{n}` = {Path(p).name}" for n, p in builds.items()), ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
