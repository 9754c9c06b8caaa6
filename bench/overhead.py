"""Framework overhead: LangGraph's per-step cost against a minimal hand-written loop, on the same servers.

Both drivers make the same model calls through the same ``ModelClient`` (probe, then the small continuation or
the large step, then the final answer). Time spent outside the model calls (wall time minus the summed call
times) is the driver's overhead; the report gives it per step in ms and as a share of the run time.

    python bench/overhead.py --n 10 --out bench/OVERHEAD.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

from langchain_core.callbacks import BaseCallbackHandler

from glimp_graph import Endpoint, GlimpConfig, create_glimp_graph
from glimp_graph.endpoints import ModelClient, Request
from glimp_graph.serving import LocalModels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_dev.jsonl"
CONFIG = {"tau": 1.0, "max_step_tokens": 64, "max_thinking_tokens": 256, "max_steps": 8, "final_max_tokens": 16}


class CallTimer(BaseCallbackHandler):
    """Sums the wall time of every chat-model call (start to end callbacks)."""

    def __init__(self) -> None:
        self.started: dict = {}
        self.total = 0.0

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs) -> None:
        self.started[run_id] = time.perf_counter()

    def on_llm_end(self, response, *, run_id, **kwargs) -> None:
        self.total += time.perf_counter() - self.started.pop(run_id, time.perf_counter())


def hand_loop(question: str, small: ModelClient, large: ModelClient, cfg: GlimpConfig) -> tuple[float, float, int]:
    """GlimpRouter with no framework: returns (wall s, model-call s, steps)."""
    prompt = cfg.prompt
    messages = [
        {"role": "system", "content": prompt.system},
        {"role": "user", "content": prompt.user_message(question)},
    ]
    steps: list[str] = []
    spent = calls = 0.0
    start = time.perf_counter()
    used = 0
    while len(steps) < cfg.max_steps and used < cfg.max_thinking_tokens:
        prefix = prompt.think_prefix + "".join(s + cfg.delimiter for s in steps)
        p = small.complete(Request(messages, prefix, 1, temperature=0.0, top_p=1.0, top_logprobs=cfg.top_k))
        calls += p.seconds
        h = cfg.estimate([lp for _, lp in p.top_logprobs or []])
        budget = min(cfg.max_step_tokens, cfg.max_thinking_tokens - used)
        if p.end != "length":
            break
        if h <= cfg.tau:
            c = small.complete(Request(messages, prefix + p.text, budget - 1, stop=[cfg.delimiter]))
            text, used = p.text + c.text, used + 1 + c.tokens
        else:
            c = large.complete(Request(messages, prefix, budget, stop=[cfg.delimiter]))
            text, used = c.text, used + c.tokens
        calls += c.seconds
        steps.append(text)
        if any(m in text for m in prompt.answer_markers):
            break
    final = large.complete(
        Request(messages, prompt.think_prefix + cfg.delimiter.join(steps) + prompt.answer_prefix, cfg.final_max_tokens)
    )
    calls += final.seconds
    spent = time.perf_counter() - start
    return spent, calls, len(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--small", default="smollm2-135m")
    parser.add_argument("--large", default="smollm2-135m")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    questions = [json.loads(line)["question"] for line in DATA.read_text().splitlines()[: args.n]]
    cfg = GlimpConfig(**CONFIG)
    rows: dict[str, list[tuple[float, float, int]]] = {"langgraph": [], "hand loop": []}
    with LocalModels(
        small=args.small, large=args.large, cache_dir=os.environ.get("GLIMP_CACHE_DIR"), progress=False
    ) as m:
        small_ep = Endpoint(base_url=m.small.base_url, model=m.small.alias, seed=0)
        large_ep = Endpoint(base_url=m.large.base_url, model=m.large.alias, seed=0)
        graph = create_glimp_graph(small_ep, large_ep, config=cfg)
        small, large = ModelClient(small_ep, "small"), ModelClient(large_ep, "large")
        graph.invoke({"question": questions[0]})  # warm both servers and clients
        hand_loop(questions[0], small, large, cfg)
        for q in questions:
            timer = CallTimer()
            start = time.perf_counter()
            out = graph.invoke({"question": q}, config={"callbacks": [timer]})
            rows["langgraph"].append((time.perf_counter() - start, timer.total, len(out["glimp_steps"])))
            rows["hand loop"].append(hand_loop(q, small, large, cfg))
    lines = [
        "# Framework overhead",
        "",
        f"Command: `python bench/overhead.py --n {args.n} --small {args.small} --large {args.large}`",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, langgraph {version('langgraph')}, "
        f"langchain-core {version('langchain-core')}; models {args.small} / {args.large} on llama.cpp servers; "
        f"{args.n} GSM8K dev questions; settings {CONFIG}.",
        "",
        "Overhead = wall time minus the time inside model calls (LangGraph: measured by callbacks around each "
        "chat-model run; hand loop: around each HTTP call).",
        "",
        "| driver | runs | steps | wall s (mean) | in model calls s (mean) | overhead per step, ms | overhead share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in rows.items():
        wall = sum(r[0] for r in rs)
        inside = sum(r[1] for r in rs)
        steps = sum(r[2] for r in rs)
        lines.append(
            f"| {name} | {len(rs)} | {steps} | {statistics.mean(r[0] for r in rs):.2f} | "
            f"{statistics.mean(r[1] for r in rs):.2f} | {1000 * (wall - inside) / max(steps, 1):.1f} | "
            f"{(wall - inside) / wall:.1%} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
