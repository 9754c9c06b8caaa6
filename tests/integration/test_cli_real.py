"""The command line end to end: local servers started for the user, answers printed, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GLIMP = [sys.executable, "-m", "glimp_graph.cli"]
SMOL = ["--local-small", "smollm2-135m", "--local-large", "smollm2-135m"]


def _servers_with_ctx(ctx: int) -> list[int]:
    """PIDs of llama-server processes started with ``-c ctx`` (a context size no other test uses)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and b"llama-server" in cmd[0] and b"-c" in cmd and str(ctx).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def test_ask_starts_local_models_answers_and_stops_them():
    result = subprocess.run(
        [
            *GLIMP,
            "ask",
            "What is 12 plus 30?",
            *SMOL,
            "--ctx-size",
            "3072",
            "--max-thinking-tokens",
            "96",
            "--max-step-tokens",
            "48",
            "--final-max-tokens",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "GLIMP_SMALL_URL": "", "GLIMP_LARGE_URL": ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Answer:" in result.stdout
    assert "[  0]" in result.stdout and ("small" in result.stdout or "large" in result.stdout)
    assert "H=" in result.stdout and "steps (" in result.stdout
    assert _servers_with_ctx(3072) == []  # both servers are gone


def _default_sigint() -> None:
    """In the child before exec: SIGINT at its default, whatever the test runner inherited (a background job
    ignores it, and an ignored SIGINT would stay ignored in ``glimp serve``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_stops_both_servers_on_ctrl_c():
    proc = subprocess.Popen(
        [*GLIMP, "serve", *SMOL, "--ctx-size", "3584"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert all(line.startswith("export GLIMP_") for line in lines), lines
        assert len(_servers_with_ctx(3584)) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10
    while _servers_with_ctx(3584) and time.time() < deadline:
        time.sleep(0.2)
    assert _servers_with_ctx(3584) == []
