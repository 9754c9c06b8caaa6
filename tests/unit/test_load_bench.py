"""``bench/load.py``'s recording proxy and mapping check, on the fake OpenAI server.

The proxy sits in front of the large model: every call passes through it unchanged (streams too) and the router's
final-answer calls are recorded with their generated text. The mapping check must catch a run that got another
run's answer or another question's call; the faces' drivers (in-process graph, the OpenAI face) feed it the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from glimp_graph import GlimpConfig, create_glimp_graph
from glimp_graph.router_server import create_app
from tests.helpers import load_bench
from tests.unit.conftest import FakeServer, ScriptedModel, ScriptStep, endpoint, is_probe

LOAD_PY = Path(__file__).resolve().parents[2] / "bench" / "load.py"
ANSWER_PREFIX = GlimpConfig().prompt.answer_prefix
DELIMITER = GlimpConfig().delimiter
STEPS = [  # small, large, small: the large server gets a step too, which is not a final answer
    ScriptStep(0.2, "First, write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(2.0, "That is 30 + 21."),
    ScriptStep(0.2, "So the answer is \\boxed{51}."),
]


def load_module() -> Any:
    """``bench/load.py`` as a module (imported by path: ``bench`` is no package)."""
    if "glimp_bench_load" in sys.modules:
        return sys.modules["glimp_bench_load"]
    return load_bench("load", as_name="glimp_bench_load")


@pytest.fixture(scope="module")
def load() -> Any:
    return load_module()


@pytest.fixture
def llama_large() -> Iterator[FakeServer]:
    """The large model as llama.cpp's server answers: a continuation returns its prefix too, unless streamed."""
    server = FakeServer("llamacpp")
    yield server
    server.close()


@pytest.fixture
def proxied(load: Any, llama_large: FakeServer) -> Iterator[tuple[Any, Any]]:
    """The recording proxy in front of ``llama_large``: ``(proxy server thread, recorder)``."""
    recorder = load.ProxyRecorder()
    with load.ServerThread(load.proxy_app(llama_large.url, recorder, ANSWER_PREFIX)) as proxy:
        yield proxy, recorder


def final_body(question: str, reasoning: str = "Some steps.", **extra: Any) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": reasoning + ANSWER_PREFIX},
    ]
    return {"model": "fake", "messages": messages, "continue_final_message": True, **extra}


def per_question_answers(load: Any, model: ScriptedModel, small: FakeServer, large: FakeServer) -> None:
    """The script's steps for every question; the final answer names the question's tag (each run its own)."""
    model.install(small, large)

    def answer(body: dict[str, Any]) -> Any:
        if is_probe(body) or body.get("stop"):
            return model.respond(large, "large", body)
        tag = load.TAG_RE.search(json.dumps(body["messages"])).group()
        return large.chat(f" The answer to {tag} is 51.", body, completion_tokens=8)

    large.handler = answer


def swapped_answers(runs: list[Any]) -> list[Any]:
    """Copies of two runs, each with the other's answer (the check must see both)."""
    first, second = runs[0], runs[1]
    return [
        dataclasses.replace(first, answer=second.answer, mismatch=None),
        dataclasses.replace(second, answer=first.answer, mismatch=None),
    ]


# --------------------------------------------------------------------------- the proxy


def test_proxy_passes_calls_on_unchanged_and_records_only_final_answers(load, llama_large, proxied) -> None:
    proxy, recorder = proxied
    llama_large.handler = lambda body: llama_large.chat("Forty two.", body, completion_tokens=3)
    step = {"model": "fake", "messages": [{"role": "user", "content": "[LOAD-0000000a] Q?"}], "stop": ["\n\n"]}
    final = final_body("[LOAD-0000000b] Q?")
    streamed = final_body("[LOAD-0000000c] Q?", stream=True)
    with httpx.Client(timeout=10) as http:
        for body in (step, final, streamed):
            direct = http.post(f"{llama_large.url}/v1/chat/completions", json=body)
            through = http.post(f"{proxy.url}/v1/chat/completions", json=body)
            assert through.status_code == direct.status_code == 200
            assert through.content == direct.content  # the same bytes, the stream's included
            assert through.headers["content-type"] == direct.headers["content-type"]
        assert http.get(f"{proxy.url}/v1/models").json() == http.get(f"{llama_large.url}/v1/models").json()
    assert streamed["stream"] and through.headers["content-type"].startswith("text/event-stream")

    # only the proxied final answers: the llama.cpp prefix cut off, the stream's deltas joined
    assert [c["output"] for c in recorder.calls] == ["Forty two.", "Forty two."]
    assert "[LOAD-0000000b]" in recorder.calls[0]["user"] and "[LOAD-0000000c]" in recorder.calls[1]["user"]
    assert recorder.calls[0]["prefix"] == "Some steps." + ANSWER_PREFIX
    assert recorder.failed == 0


def test_proxy_keeps_failed_final_answers_apart(load, llama_large, proxied) -> None:
    proxy, recorder = proxied
    llama_large.handler = lambda body: (500, json.dumps({"error": {"message": "boom"}}))
    answer = httpx.post(f"{proxy.url}/v1/chat/completions", json=final_body("[LOAD-0000000d] Q?"), timeout=10)
    assert answer.status_code == 500 and "boom" in answer.text
    assert recorder.calls == [] and recorder.failed == 1


def test_proxy_answers_502_when_the_server_is_gone(load) -> None:
    from tests.unit.conftest import unused_port

    recorder = load.ProxyRecorder()
    with load.ServerThread(load.proxy_app(f"http://127.0.0.1:{unused_port()}", recorder, ANSWER_PREFIX)) as proxy:
        answer = httpx.post(f"{proxy.url}/v1/chat/completions", json=final_body("[LOAD-0000000e] Q?"), timeout=10)
    assert answer.status_code == 502 and "upstream failed" in answer.text
    assert recorder.failed == 1


def test_sse_text_reads_content_across_chunk_boundaries(load) -> None:
    events = "".join(
        f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
        for piece in ["Hel", "lo", " world"]
    )
    events += "data: [DONE]\n\n"
    text = load.SSEText()
    raw = events.encode()
    for i in range(0, len(raw), 7):  # cut mid-line, mid-JSON
        text.feed(raw[i : i + 7])
    assert text.text == "Hello world" and not text.error
    broken = load.SSEText()
    broken.feed(b'data: {"error": {"message": "x"}}\n\n')
    assert broken.error


def test_a_final_answer_is_the_call_that_continues_the_answer_prefix(load) -> None:
    assert load.is_final_answer(final_body("Q?"), ANSWER_PREFIX)
    step = final_body("Q?")
    step["messages"][-1]["content"] = "Some steps.\n\n"
    assert not load.is_final_answer(step, ANSWER_PREFIX)
    assert not load.is_final_answer({"messages": [{"role": "user", "content": "Q" + ANSWER_PREFIX}]}, ANSWER_PREFIX)
    assert not load.is_final_answer({"messages": []}, ANSWER_PREFIX)


# --------------------------------------------------------------------------- the mapping through each way in


def test_graph_runs_are_mapped_by_both_recorders_and_swapped_answers_are_caught(
    load, fake_small, llama_large, proxied
) -> None:
    proxy, proxy_recorder = proxied
    per_question_answers(load, ScriptedModel(steps=STEPS), fake_small, llama_large)
    graph = create_glimp_graph(
        endpoint(fake_small), endpoint(llama_large, base_url=f"{proxy.url}/v1"), config={"tau": 1.0}
    )
    callbacks = load.FinalAnswerRecorder()
    runs = load.make_runs(["What is 17 * 3?", "What is 3 * 17?", "And 51 * 1?"], "unit")
    call = functools.partial(load.graph_call, graph, callbacks)

    level = asyncio.run(load.run_level(call, runs, 2, 60.0))
    for recorder in (callbacks, proxy_recorder):
        load.check_mapping(level.runs, recorder, DELIMITER)

    assert fake_small.errors == llama_large.errors == []
    assert [(r.key, r.error, r.error_message) for r in level.runs if r.error] == []
    assert [(r.key, r.mismatch) for r in level.runs if r.mismatch] == []
    assert [r.answer for r in level.runs] == [f"The answer to {r.tag} is 51." for r in runs]
    assert all(r.steps == [s.text for s in STEPS] for r in level.runs)
    assert len(proxy_recorder.calls) == len(callbacks.calls) == 3  # the large step is not a final answer
    summary = load.summarize(level)
    assert (summary["runs"], summary["ok"], summary["errors"], summary["mismatches"]) == (3, 3, {}, [])
    stats = level.runs[0].stats
    assert summary["mean_tokens"] == stats["small_tokens"] + stats["large_tokens"] > 0  # the same script each run
    assert summary["mean_outside_s"] is not None and summary["face_cpu_per_run"] is None

    for recorder in (callbacks, proxy_recorder):
        swapped = swapped_answers(level.runs)
        load.check_mapping(swapped, recorder, DELIMITER)
        assert all("not the generated text" in str(r.mismatch) for r in swapped)
        other_tag = [dataclasses.replace(level.runs[0], tag=level.runs[1].tag, mismatch=None)]
        load.check_mapping(other_tag, recorder, DELIMITER)
        assert other_tag[0].mismatch is not None
        other_steps = [dataclasses.replace(level.runs[0], steps=["Not this run's step."], mismatch=None)]
        load.check_mapping(other_steps, recorder, DELIMITER)
        assert "steps" in str(other_steps[0].mismatch)


def test_openai_face_runs_are_mapped_through_the_proxy_and_swaps_are_caught(
    load, fake_small, llama_large, proxied
) -> None:
    proxy, recorder = proxied
    per_question_answers(load, ScriptedModel(steps=STEPS), fake_small, llama_large)
    graph = create_glimp_graph(
        endpoint(fake_small), endpoint(llama_large, base_url=f"{proxy.url}/v1"), config={"tau": 1.0}
    )
    runs = load.make_runs(["What is 17 * 3?", "What is 3 * 17?"], "face")

    async def drive(url: str) -> Any:
        async with httpx.AsyncClient(timeout=60) as http:
            return await load.run_level(functools.partial(load.serve_router_call, http, url), runs, 2, 60.0)

    with load.ServerThread(create_app(graph), name="face") as face:
        level = asyncio.run(drive(face.url))
    load.check_mapping(level.runs, recorder, DELIMITER)

    assert [(r.key, r.error, r.error_message) for r in level.runs if r.error] == []
    assert [(r.key, r.mismatch) for r in level.runs if r.mismatch] == []
    assert [r.answer for r in level.runs] == [f"The answer to {r.tag} is 51." for r in runs]
    swapped = swapped_answers(level.runs)
    load.check_mapping(swapped, recorder, DELIMITER)
    assert all(r.mismatch is not None for r in swapped)


def test_a_run_with_two_final_answer_calls_or_none_is_not_mapped(load) -> None:
    run = load.make_runs(["Q?"], "m")[0]
    run.finished, run.answer = True, "51"
    call = {"user": run.question, "prefix": "x" + ANSWER_PREFIX, "all": run.question, "output": " 51 "}
    assert load.mapping_problem(run, [call], DELIMITER) is None
    assert "2 final-answer calls" in load.mapping_problem(run, [call, call], DELIMITER)
    assert "0 final-answer calls" in load.mapping_problem(run, [], DELIMITER)
    mixed = {**call, "all": run.question + " [LOAD-0123abcd]"}
    assert "tags" in load.mapping_problem(run, [mixed], DELIMITER)


def test_face_errors_are_counted_by_kind(load, fake_small, llama_large) -> None:
    fake_small.handler = lambda body: (500, json.dumps({"error": {"message": "small is down"}}))
    graph = create_glimp_graph(endpoint(fake_small), endpoint(llama_large), config={"tau": 1.0})
    runs = load.make_runs(["Q?"], "err")

    async def drive(url: str) -> Any:
        async with httpx.AsyncClient(timeout=60) as http:
            return await load.run_level(functools.partial(load.serve_router_call, http, url), runs, 1, 60.0)

    with load.ServerThread(create_app(graph), name="face") as face:
        level = asyncio.run(drive(face.url))
    assert level.runs[0].error is not None and level.runs[0].error.startswith("HTTP 5")
    assert load.summarize(level)["errors"] == {level.runs[0].error: 1}


class _Runs:
    def __init__(self, out: Any) -> None:
        self.out = out
        self.calls: list[tuple[Any, ...]] = []

    async def wait(self, thread_id: Any, assistant_id: str, **kwargs: Any) -> Any:
        self.calls.append((thread_id, assistant_id, kwargs))
        return self.out


@dataclasses.dataclass
class _Client:
    runs: _Runs


def test_langgraph_driver_reads_the_output_and_counts_run_errors(load) -> None:
    run = load.make_runs(["Q?"], "lg")[0]
    stats = {"small_tokens": 3, "large_tokens": 4, "wall_seconds": 1.5}
    ok = _Client(_Runs({"glimp_answer": "51", "glimp_steps": [{"text": "a"}, {"text": "b"}], "glimp_stats": stats}))
    assert asyncio.run(load.langgraph_call(ok, run)) == ("51", ["a", "b"], stats)
    assert ok.runs.calls == [(None, "glimp_router", {"input": {"question": run.question}, "raise_error": False})]
    failed = _Client(_Runs({"__error__": {"error": "EndpointError", "message": "large is down"}}))
    with pytest.raises(load.RunFailed) as caught:
        asyncio.run(load.langgraph_call(failed, run))
    assert caught.value.kind == "run error EndpointError"


# --------------------------------------------------------------------------- settings, report, cleanup


def test_modes_share_settings_and_faces_warm_up(load) -> None:
    args = load.parse_args(["--via", "graph,serve-router", "--levels", "1,4"])
    assert args.via_list == ["graph", "serve-router"]
    assert load.level_sizes(args, "graph", 4) == (8, 0)  # today's defaults
    assert load.level_sizes(args, "serve-router", 4) == (20, 4)
    explicit = load.parse_args(["--via", "langgraph-dev", "--questions", "3", "--warmup", "0"])
    assert load.level_sizes(explicit, "langgraph-dev", 8) == (3, 0)
    every = load.parse_args(["--via", "graph,langgraph-dev", "--warmup", "N"])
    assert load.level_sizes(every, "graph", 8) == (16, 8) and load.level_sizes(every, "langgraph-dev", 8) == (20, 8)
    bad_args = [["--via", "grpc"], ["--levels", "0"], ["--via", "serve-router", "--no-proxy"], ["--warmup", "-1"]]
    for bad in bad_args:
        with pytest.raises(SystemExit):
            load.parse_args(bad)


def test_langgraph_config_points_at_the_deploy_graph_by_absolute_path(load, tmp_path) -> None:
    config = json.loads(load.langgraph_config(tmp_path).read_text())
    path, _, variable = config["graphs"]["glimp_router"].rpartition(":")
    assert Path(path).is_absolute() and Path(path).exists() and variable == "graph"
    assert all(Path(d).is_absolute() for d in config["dependencies"])
    assert "http" not in config and config["checkpointer"]["serde"]["pickle_fallback"] is False


def test_a_report_goes_into_its_own_section_and_replaces_it_when_run_again(load) -> None:
    existing = "# Load test\n\nSmolLM figures.\n\n## Results\n\n| old |\n"
    report = "# Load test\n\nGenerated now.\n\n## Results\n\n| new |\n\n## Cleanup\n\nclean\n"
    section = load.as_section(report, "Qwen pair through the faces")
    assert section.startswith("## Qwen pair through the faces\n") and "### Results" in section
    once = load.merge_section(existing, section)
    assert once.startswith(existing.rstrip()) and once.count("## Qwen pair through the faces") == 1
    again = load.merge_section(
        once + "\n## Later\n\nkept\n", load.as_section(report.replace("new", "newer"), "Qwen pair through the faces")
    )
    assert "| newer |" in again and "| new |" not in again and "## Later\n\nkept" in again
    assert again.count("## Qwen pair through the faces") == 1 and "SmolLM figures." in again


def test_leftovers_finds_a_live_member_of_a_face_process_group(load) -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        found = load.leftovers([proc.pid], [], "/no/such/binary", [proc.pid])
        assert any(str(proc.pid) in item for item in found)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert load.leftovers([proc.pid], [], "/no/such/binary", [proc.pid]) == []
    assert load.group_cpu_seconds(os.getpgid(0)) > 0  # this test's own group has worked


def test_face_process_reports_a_face_that_exits_before_it_is_ready(load, tmp_path) -> None:
    command = ["sh", "-c", "echo no such face; exit 3"]
    face = load.FaceProcess("fake face", command, 1, tmp_path / "face.log", dict(os.environ), "/health")
    with pytest.raises(RuntimeError, match="exited with 3"):
        face.start(10)
    face.stop()
    assert load.leftovers([face.proc.pid], [], "/no/such/binary", [face.proc.pid]) == []


# --------------------------------------------------------------------------- the whole script, on stand-ins


class _StandIn:
    """A started llama-server as ``main`` sees it, played by a fake server (stopping it closes the fake)."""

    def __init__(self, fake: FakeServer) -> None:
        self.pid, self.port, self.alias = _dead_pid(), fake.port, "fake"  # a pid that is gone, as a stopped server's
        self.base_url = f"{fake.url}/v1"
        self._fake = fake

    def stop(self) -> None:
        self._fake.close()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def script_args(tmp_path: Path) -> tuple[list[str], Path]:
    """``bench/load.py`` arguments for graph mode at N=1,2 over 8 questions written under ``tmp_path``, and the
    report they write."""
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} * 3?"}) + "\n" for i in range(8)))
    out = tmp_path / "LOAD.md"
    args = ["--via", "graph", "--levels", "1,2", "--questions", "2", "--proxy-calls", "0", "--data", str(data)]
    return [*args, "--out", str(out)], out


@pytest.fixture
def script(load, monkeypatch, tmp_path) -> Any:
    """``main`` on stand-ins for the two llama-servers (graph mode, the proxy in front of the large one)."""
    small, large = FakeServer("llamacpp"), FakeServer("llamacpp")
    per_question_answers(load, ScriptedModel(steps=STEPS), small, large)
    monkeypatch.setattr(load, "start_servers", lambda args: ([_StandIn(small), _StandIn(large)], "/no/such/binary"))
    common, out = script_args(tmp_path)
    yield lambda *extra: load.main([*common, *extra]), out
    small.close()
    large.close()


def test_the_script_reports_every_level_mapped_and_nothing_left(script) -> None:
    main, out = script
    assert main() == 0
    report = out.read_text()
    rows = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert [r.split("|")[1:7] for r in rows] == [
        [" 1 ", " 0 ", " 2 ", " 2 ", " 0 ", " none "],
        [" 2 ", " 0 ", " 2 ", " 2 ", " 0 ", " none "],
    ]
    assert "no process of the run" in report and "LEFT OVER" not in report and "INTERRUPTED" not in report


INTERRUPTED_RUN = """
import asyncio, os, signal, sys
from tests.unit.conftest import FakeServer, ScriptedModel
from tests.unit.test_load_bench import STEPS, _StandIn, load_module, per_question_answers

load = load_module()
small, large = FakeServer("llamacpp"), FakeServer("llamacpp")
per_question_answers(load, ScriptedModel(steps=STEPS), small, large)
load.start_servers = lambda args: ([_StandIn(small), _StandIn(large)], "/no/such/binary")
real = load.graph_call

async def interrupted_at_n2(graph, recorder, run):
    if run.key.startswith("graph-N2"):  # Ctrl-C: asyncio.run cancels the level, then raises KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(30)
    return await real(graph, recorder, run)

load.graph_call = interrupted_at_n2
sys.exit(load.main(sys.argv[1:]))
"""


def test_an_interrupted_run_keeps_the_levels_it_finished(tmp_path) -> None:
    # in a process of its own: a KeyboardInterrupt through asyncio leaves CPython 3.11's ast module unusable for
    # the rest of the process ("AST constructor recursion depth mismatch" in test_layers)
    args, out = script_args(tmp_path)
    root = LOAD_PY.parents[1]
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_RUN, *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    report = out.read_text()
    rows = [line.split("|")[1].strip() for line in report.splitlines() if re.match(r"\| \d", line)]
    assert "**INTERRUPTED" in report and rows == ["1"] and "| 1 | 0 | 2 | 2 | 0 | none |" in report
    assert "no process of the run" in report  # the cleanup still ran
