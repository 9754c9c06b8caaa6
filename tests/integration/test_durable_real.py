"""A durable run killed mid-reasoning (SIGKILL) resumes from its last checkpointed step: none lost, none repeated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from glimp_graph import create_glimp_graph

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GLIMP_TYPES = [
    ("glimp_graph.state", "Step"),
    ("glimp_graph.scorers", "Probe"),
    ("glimp_graph.state", "Decision"),
    ("glimp_graph.state", "RunStats"),
]
K = 2  # steps checkpointed before the kill
QUESTION = "Explain step by step how to compute 123 * 45, then give the result."
BUDGET = ["--max-step-tokens", "24", "--max-thinking-tokens", "144", "--max-steps", "6", "--final-max-tokens", "16"]


def _command(db: Path, thread: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "examples" / "durable.py"),
        QUESTION,
        "--thread-id",
        thread,
        "--db",
        str(db),
        "--tau",
        "inf",
        "--no-stop-on-repeat",
        "--pause",
        "1.0",
        *BUDGET,
    ]


def _env(smol_pair) -> dict[str, str]:
    small, large = smol_pair
    return {**os.environ, "GLIMP_SMALL_URL": small.base_url, "GLIMP_LARGE_URL": large.base_url}


def test_killed_run_resumes_without_losing_or_repeating_a_step(smol_pair, tmp_path):
    db, thread = tmp_path / "ck.sqlite", "durable-1"
    config = {"configurable": {"thread_id": thread}}
    child = subprocess.Popen(
        _command(db, thread), env=_env(smol_pair), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    checkpointed: list = []
    try:
        with SqliteSaver.from_conn_string(str(db)) as saver:
            saver.serde = JsonPlusSerializer(allowed_msgpack_modules=GLIMP_TYPES)
            reader = create_glimp_graph(*smol_pair, checkpointer=saver)
            deadline = time.monotonic() + 120
            while len(checkpointed) < K:
                assert child.poll() is None, f"the run ended before {K} steps: {child.stderr.read()[-2000:]}"
                assert time.monotonic() < deadline, "no checkpointed steps in time"
                time.sleep(0.1)
                if db.exists():
                    try:
                        checkpointed = list(reader.get_state(config).values.get("glimp_steps") or [])
                    except Exception:  # the table may not exist yet
                        checkpointed = []
            child.send_signal(signal.SIGKILL)  # mid-reasoning: the child pauses 1 s after every step
            child.wait(timeout=10)
            state = reader.get_state(config)
            latest = next(iter(reader.get_state_history(config, limit=1)))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    before = list(state.values["glimp_steps"])
    assert latest.next, "the killed run must be unfinished in the checkpoint"
    assert len(before) >= K and [s.index for s in before] == list(range(len(before)))
    printed = [json.loads(line) for line in child.stdout.read().splitlines() if line.strip()]
    assert printed[0]["event"] == "start" and printed[0]["resumed"] is False
    assert not any(e["event"] == "result" for e in printed)

    resumed = subprocess.run(
        _command(db, thread), env=_env(smol_pair), capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.strip()]
    assert events[0] == {"event": "start", "resumed": True, "steps_done": len(before), "thread_id": thread}
    new_steps = [e for e in events if e["event"] == "step"]
    # resumed at the first step not yet checkpointed: nothing before it is written again
    assert not new_steps or new_steps[0]["index"] == len(before)
    final = events[-1]
    assert final["event"] == "result" and final["answer"]
    steps = final["steps"]
    assert [s["index"] for s in steps] == list(range(len(steps)))  # contiguous, none repeated
    assert steps[: len(before)] == [s.model_dump() for s in before]  # none lost, unchanged
    assert [s["index"] for s in new_steps] == list(range(len(before), len(steps)))
    assert final["stats"]["steps"] == len(steps)
