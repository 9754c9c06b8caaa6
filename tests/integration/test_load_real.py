"""Concurrency against real llama.cpp servers: 8 runs of 8 distinct questions in flight at once, in process and
through the two faces (``glimp serve-router``, ``langgraph dev``).

Correctness only (no timing assertions): every run finishes without an error, within an overall limit, and every
result belongs to its own question. The driver and the check are ``bench/load.py``'s, imported by path (in
process) or run as the script (through a face: it starts the servers, the face and the recording proxy, and its
report must show every run ok and mapped, and nothing left behind).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.serving import LocalModels
from tests.helpers import load_bench
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration

LOAD_PY = Path(__file__).resolve().parents[2] / "bench" / "load.py"
TINY = {"max_step_tokens": 16, "max_thinking_tokens": 32, "max_steps": 2, "final_max_tokens": 16, "tau": 1.0}
N = 8
DELIMITER = "\n\n"  # GlimpConfig's default
OVERALL_TIMEOUT_S = 420.0  # generous: the machine may be busy


def _load_module():
    return load_bench("load", as_name="glimp_bench_load")


@pytest.fixture(scope="module")
def one_thread_pair() -> Iterator[tuple[Endpoint, Endpoint]]:
    """SmolLM2 servers of their own, one thread each: under load both servers work at once, and two 2-thread
    servers on a 2-core machine spin against each other (minutes instead of seconds)."""
    with LocalModels(small="smollm2-135m", large="smollm2-135m", cache_dir=cache_dir(), threads=1) as models:
        yield (
            Endpoint(base_url=models.small.base_url, model=models.small.alias, temperature=0.0, seed=7),
            Endpoint(base_url=models.large.base_url, model=models.large.alias, temperature=0.0, seed=7),
        )


@pytest.fixture(scope="module")
def load():
    return _load_module()


def test_eight_concurrent_runs_each_answer_their_own_question(one_thread_pair, data_dir, load):
    graph = create_glimp_graph(*one_thread_pair, config=TINY)
    questions = load.load_questions(data_dir / "gsm8k_dev.jsonl", N, start=100)
    assert len(set(questions)) == N
    runs = load.make_runs(questions, "it")
    recorder = load.FinalAnswerRecorder()

    call = functools.partial(load.graph_call, graph, recorder)
    level = asyncio.run(load.run_level(call, runs, N, OVERALL_TIMEOUT_S))
    load.check_mapping(level.runs, recorder, DELIMITER)

    assert not level.timed_out, f"the {N} runs did not finish within {OVERALL_TIMEOUT_S} s"
    assert all(r.finished for r in level.runs)
    assert [(r.key, r.error, r.error_message) for r in level.runs if r.error] == []
    assert [(r.key, r.mismatch) for r in level.runs if r.mismatch] == []
    assert all(r.answer is not None and r.steps for r in level.runs)
    assert len(recorder.calls) == N  # one final-answer call per run, no more

    # the check can fail: hand run 0 the result of run 1 and it is caught
    swapped = [dataclasses.replace(level.runs[0], answer=level.runs[1].answer, steps=level.runs[1].steps)]
    swapped += [dataclasses.replace(level.runs[1], key=level.runs[0].key)]
    load.check_mapping(swapped, recorder, DELIMITER)
    assert swapped[0].mismatch is not None or level.runs[0].steps == level.runs[1].steps
    assert swapped[1].mismatch is not None  # run 1's tag under run 0's final-answer call


FACE_RUN = [
    *("--small", "smollm2-135m", "--large", "smollm2-135m", "--levels", "1,2", "--questions", "2"),
    *("--threads", "1", "--parallel", "2", "--proxy-calls", "2", "--level-timeout", "300"),
    *("--max-step-tokens", "16", "--max-thinking-tokens", "32", "--max-steps", "2", "--final-max-tokens", "16"),
]


def _rows(report: str, heading: str) -> list[list[str]]:
    """The result table's rows under ``heading``: the cells of each line that starts with a number."""
    section = report.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if re.match(r"\|\s*\d", line)
    ]


@pytest.mark.parametrize("via", ["serve-router", "langgraph-dev"])
def test_the_load_script_through_a_face_maps_every_answer_and_leaves_nothing(via, tmp_path, data_dir, load):
    if via == "langgraph-dev" and not (Path(sys.executable).parent / "langgraph").exists():
        pytest.skip("langgraph-cli[inmem] is not installed (extra 'studio')")
    out = tmp_path / "LOAD.md"
    command = [sys.executable, str(LOAD_PY), "--via", via, *FACE_RUN, "--data", str(data_dir / "gsm8k_dev.jsonl")]
    if os.environ.get("GLIMP_CACHE_DIR"):
        command += ["--cache-dir", os.environ["GLIMP_CACHE_DIR"]]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    report = out.read_text()
    rows = _rows(report, f"### {load.FACE_TITLES[via]}")
    # N, warm-up, runs, ok, mapped wrong, errors
    assert [r[:6] for r in rows] == [["1", "1", "2", "2", "0", "none"], ["2", "2", "2", "2", "0", "none"]], report
    assert "LEFT OVER" not in report and "no process of the run" in report
    assert "proxied" in report  # the proxy's cost is in the report
