"""A durable GlimpRouter run: every step is checkpointed (SQLite or PostgreSQL); a killed run resumes where it stopped.

Run it, kill it (Ctrl-C, or ``kill -9``) while it reasons, and run the same command again: the second run
resumes the thread from its last completed step (no step is lost or written twice) instead of starting over::

    python examples/durable.py --thread-id demo --db /tmp/glimp.sqlite "What is 17 * 3?"
    GLIMP_POSTGRES_URL=postgresql://USER:PASSWORD@HOST:5432/DB python examples/durable.py --thread-id demo --postgres

Each step is printed as one JSON line (``{"event": "step", ...}``) as soon as it is written, then the result
(``{"event": "result", ...}``). A finished thread starts a new run of the question when called again.
``--postgres`` reads its URL from ``GLIMP_POSTGRES_URL`` (kept out of the process list) unless one is given.
Needs ``langgraph-checkpoint-sqlite`` (``pip install "glimp-graph[durable]"``), or for PostgreSQL
``pip install "glimp-graph[postgres]"``. A store that fails is reported in one line (its URL's password masked).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from typing import Any

from _common import endpoints, router_config, router_options
from langgraph.checkpoint.base import BaseCheckpointSaver

from glimp_graph import GlimpError, create_glimp_graph
from glimp_graph.persistence import serializer


@contextlib.contextmanager
def checkpointer(args: argparse.Namespace) -> Iterator[BaseCheckpointSaver]:
    """The checkpointer the options name, knowing the router's state types (the library's allowlist)."""
    if args.db:
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(args.db, check_same_thread=False)
        with contextlib.closing(conn):
            yield SqliteSaver(conn, serde=serializer())
        return
    url = args.postgres or os.environ.get("GLIMP_POSTGRES_URL")
    if not url:
        sys.exit("--postgres needs a URL: give one, or set GLIMP_POSTGRES_URL")
    from glimp_graph.persistence import postgres_checkpointer  # needs the postgres extra

    with postgres_checkpointer(url) as saver:
        yield saver


def _print(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def main() -> None:
    parser = router_options(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("question", nargs="?", default="What is 17 * 3?")
    parser.add_argument("--thread-id", required=True, help="the run's thread; the same id resumes it")
    store = parser.add_mutually_exclusive_group(required=True)
    store.add_argument("--db", help="SQLite file holding the checkpoints")
    store.add_argument(
        "--postgres", nargs="?", const="", metavar="URL", help="PostgreSQL URL (default: $GLIMP_POSTGRES_URL)"
    )
    parser.add_argument("--no-stop-on-repeat", action="store_true", help="keep reasoning past a repeated step")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds to wait after each step (time to kill it, for demos)"
    )
    args = parser.parse_args()

    try:
        run(args)
    except GlimpError as exc:  # a store or a model server that fails: one line, no traceback
        sys.exit(f"error: {exc}")


def run(args: argparse.Namespace) -> None:
    config = {"configurable": {"thread_id": args.thread_id}}
    with endpoints() as (small, large), checkpointer(args) as saver:
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
