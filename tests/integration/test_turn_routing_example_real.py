"""examples/turn_routing.py runs for real against the local Qwen pair (llama.cpp), passed through GLIMP_* variables."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_turn_routing(qwen_pair, *args: str) -> dict:
    small, large = qwen_pair
    env = {
        **os.environ,
        "GLIMP_SMALL_URL": small.base_url,
        "GLIMP_LARGE_URL": large.base_url,
        "GLIMP_SMALL_MODEL": small.model,
        "GLIMP_LARGE_MODEL": large.model,
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "turn_routing.py"), *args, "--max-tokens", "24", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("tau", "model"), [("inf", "small"), ("-inf", "large")])
def test_turn_routing_example(qwen_pair, tau, model):
    questions = ["What is 17 * 3?", "And what is that plus 9?"]
    out = run_turn_routing(qwen_pair, *questions, f"--tau={tau}")
    assert [t["question"] for t in out["turns"]] == questions
    for turn in out["turns"]:
        assert turn["answer"].strip()
        assert turn["decisions"] and all(d["model"] == model and d["h_init"] >= 0.0 for d in turn["decisions"])
        # a turn that called the tool got its result back (the calculator really ran)
        assert len(turn["tool_results"]) == len(turn["tool_calls"])
    assert out["small_share"] == (1.0 if model == "small" else 0.0)
    assert out["tau"] == float(tau) and not math.isnan(out["tau"])
