"""A durable GlimpRouter run: every step is checkpointed in SQLite, so a killed run resumes where it stopped.

Run it, kill it (Ctrl-C, or ``kill -9``) while it reasons, and run the same command again: the second run
resumes the thread from its last completed step (no step is lost or written twice) instead of starting over::

    python examples/durable.py --thread-id demo --db /tmp/glimp.sqlite "What is 17 * 3?"

Each step is printed as one JSON line (``{"event": "step", ...}``) as soon as it is written, then the result
(``{"event": "result", ...}``). A finished thread starts a new run of the question when called again.
Needs ``langgraph-checkpoint-sqlite`` (``pip install "glimp-graph[durable]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from typing import Any

from _common import endpoints, router_config, router_options
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from glimp_graph import create_glimp_graph

# The router's records in the state, allowed by name when checkpoints are read back (LangGraph warns about, and
# in strict mode blocks, types it was not told about).
GLIMP_TYPES = [
    ("glimp_graph.state", "Step"),
    ("glimp_graph.scorers", "Probe"),
    ("glimp_graph.state", "Decision"),
    ("glimp_graph.state", "RunStats"),
]


def saver_for(db: str) -> SqliteSaver:
    """A SQLite checkpointer for ``db`` that knows the router's state types."""
    conn = sqlite3.connect(db, check_same_thread=False)
    return SqliteSaver(conn, serde=JsonPlusSerializer(allowed_msgpack_modules=GLIMP_TYPES))


def _print(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def main() -> None:
    parser = router_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("question", nargs="?", default="What is 17 * 3?")
    parser.add_argument("--thread-id", required=True, help="the run's thread; the same id resumes it")
    parser.add_argument("--db", required=True, help="SQLite file holding the checkpoints")
    parser.add_argument("--no-stop-on-repeat", action="store_true", help="keep reasoning past a repeated step")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds to wait after each step (time to kill it, for demos)"
    )
    args = parser.parse_args()

    config = {"configurable": {"thread_id": args.thread_id}}
    saver = saver_for(args.db)
    with endpoints() as (small, large), contextlib.closing(saver.conn):
        settings = router_config(args, stop_on_repeat=not args.no_stop_on_repeat)
        graph = create_glimp_graph(small, large, config=settings, checkpointer=saver)
        # An unfinished run has tasks left in its latest checkpoint. (get_state() folds in the writes of a node
        # that finished just before the kill and then reports no next node, so look at the raw checkpoint.)
        latest = next(iter(graph.get_state_history(config, limit=1)), None)
        resuming = bool(latest and latest.next)  # continue it with no new input
        done = len(graph.get_state(config).values.get("glimp_steps") or []) if resuming else 0
        _print({"event": "start", "resumed": resuming, "steps_done": done, "thread_id": args.thread_id})
        inputs = None if resuming else {"question": args.question}
        result: dict[str, Any] = {}
        for mode, chunk in graph.stream(inputs, config, stream_mode=["custom", "values"], durability="sync"):
            if mode == "custom" and chunk.get("type") == "step":
                _print({"event": "step", **{k: chunk[k] for k in ("index", "model", "text", "h_init", "tokens")}})
                if args.pause:
                    time.sleep(args.pause)
            elif mode == "values":
                result = chunk
    if "glimp_answer" not in result:
        sys.exit("the run ended without an answer")
    _print(
        {
            "event": "result",
            "answer": result["glimp_answer"],
            "steps": [s.model_dump() for s in result["glimp_steps"]],
            "stats": result["glimp_stats"].model_dump(),
        }
    )


if __name__ == "__main__":
    main()
