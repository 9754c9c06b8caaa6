"""Call the GlimpRouter graph from an application with ``graph.invoke`` and print the answer and the routing.

Run (starts the local default models, or uses GLIMP_SMALL_URL / GLIMP_LARGE_URL when set)::

    python examples/invoke.py "What is 17 * 3?"
"""

from __future__ import annotations

import argparse
import json

from _common import endpoints, router_config, router_options

from glimp_graph import create_glimp_graph


def main() -> None:
    parser = router_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("question", nargs="?", default="What is 17 * 3?")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()

    with endpoints() as (small, large):
        graph = create_glimp_graph(small, large, config=router_config(args))
        result = graph.invoke({"question": args.question})

    steps, stats = result["glimp_steps"], result["glimp_stats"]
    if args.json:
        out = {"answer": result["glimp_answer"], "steps": [s.model_dump() for s in steps], "stats": stats.model_dump()}
        print(json.dumps(out))
        return
    for step in steps:
        h = "  -  " if step.h_init is None else f"{step.h_init:5.2f}"
        print(f"[{step.index:>2}] {step.model:<5} H={h} tau={step.tau:g} | {step.text.strip()[:100]}")
    print(f"\nanswer: {result['glimp_answer']}")
    print(
        f"{stats.steps} steps ({stats.small_steps} small, {stats.large_steps} large), "
        f"stopped: {stats.stop_reason}, wall {stats.wall_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
