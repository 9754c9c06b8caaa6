"""Durable runs on a real PostgreSQL server (started by the tests on loopback, see ``pg_server.py``).

A process killed by SIGKILL mid-run on the real llama.cpp pair resumes from another process with no step lost or
repeated; 32 runs at once on one database keep every checkpoint in its own thread; the checkpoints survive a
server restart. Faults: the server down at start, stopped or restarted mid-run, a wrong password, a missing
database. The runs that are not about the model use the fake OpenAI server of the unit tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import HumanMessage

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.persistence import (
    CheckpointStoreAuthError,
    CheckpointStoreError,
    CheckpointStoreUnavailableError,
    async_postgres_checkpointer,
    mask_url,
    postgres_checkpointer,
)
from tests.integration.pg_server import PgServer
from tests.unit.conftest import (
    DELIMITER,
    FakeServer,
    ScriptedModel,
    ScriptStep,
    is_probe,
    logprobs_for_entropy,
    prefix_of,
)
from tests.unit.conftest import endpoint as endpoint_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """One server for the tests that leave it running."""
    server = PgServer().init()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A server of the test's own, for the tests that stop or restart it."""
    server = PgServer().init()
    server.start()
    yield server
    server.close()


@pytest.fixture
def fakes() -> Iterator[tuple[FakeServer, FakeServer]]:
    small, large = FakeServer("vllm"), FakeServer("vllm")
    yield small, large
    small.close()
    large.close()


def _thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


# --------------------------------------------------------------------------- (1) SIGKILL mid-run, real models

K = 2  # steps checkpointed before the kill
QUESTION = "Explain step by step how to compute 123 * 45, then give the result."
BUDGET = ["--max-step-tokens", "24", "--max-thinking-tokens", "144", "--max-steps", "6", "--final-max-tokens", "16"]


def _durable(thread: str, pair: tuple[Endpoint, Endpoint], url: str) -> tuple[list[str], dict[str, str]]:
    small, large = pair
    command = [
        sys.executable, str(ROOT / "examples" / "durable.py"), QUESTION, "--thread-id", thread, "--postgres",
        "--tau", "inf", "--no-stop-on-repeat", "--pause", "1.0", *BUDGET,
    ]  # fmt: skip
    env = {**os.environ, "GLIMP_SMALL_URL": small.base_url, "GLIMP_LARGE_URL": large.base_url}
    return command, env | {"GLIMP_POSTGRES_URL": url}  # the URL (with its password) stays out of argv


def test_killed_process_resumes_from_another_process_with_no_step_lost_or_repeated(smol_pair, pg):
    thread, url = "kill-9", pg.url()
    command, env = _durable(thread, smol_pair, url)
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        with postgres_checkpointer(url) as saver:
            reader = create_glimp_graph(*smol_pair, checkpointer=saver)
            deadline = time.monotonic() + 180
            before: list = []
            while len(before) < K:
                assert child.poll() is None, f"the run ended before {K} steps: {child.stderr.read()[-2000:]}"
                assert time.monotonic() < deadline, "no checkpointed steps in time"
                time.sleep(0.1)
                before = list(reader.get_state(_thread(thread)).values.get("glimp_steps") or [])
            child.send_signal(signal.SIGKILL)  # mid-reasoning: the child pauses 1 s after every step
            child.wait(timeout=10)
            state = reader.get_state(_thread(thread))
            latest = next(iter(reader.get_state_history(_thread(thread), limit=1)))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    before = list(state.values["glimp_steps"])
    assert latest.next, "the killed run must be unfinished in the checkpoint"
    assert len(before) >= K and [s.index for s in before] == list(range(len(before)))
    printed = [json.loads(line) for line in child.stdout.read().splitlines() if line.strip()]
    assert printed[0] == {"event": "start", "resumed": False, "steps_done": 0, "thread_id": thread}
    assert not any(e["event"] == "result" for e in printed)

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.strip()]
    assert events[0] == {"event": "start", "resumed": True, "steps_done": len(before), "thread_id": thread}
    new_steps = [e for e in events if e["event"] == "step"]
    final = events[-1]
    assert final["event"] == "result" and final["answer"]
    steps = final["steps"]
    assert [s["index"] for s in steps] == list(range(len(steps)))  # contiguous, none repeated
    assert steps[: len(before)] == [s.model_dump() for s in before]  # none lost, unchanged
    assert [s["index"] for s in new_steps] == list(range(len(before), len(steps)))  # resumed at the first missing
    assert final["stats"]["steps"] == len(steps)

    # the checkpoint history agrees: each checkpoint's steps are a prefix of the final trace, each step added once
    with postgres_checkpointer(url) as saver:
        reader = create_glimp_graph(*smol_pair, checkpointer=saver)
        history = list(reader.get_state_history(_thread(thread)))
    finals = [s.model_dump() for s in history[0].values["glimp_steps"]]
    assert finals == steps and history[0].values["glimp_answer"] == final["answer"]
    lengths = []
    for snapshot in reversed(history):  # oldest first
        trace = [s.model_dump() for s in snapshot.values.get("glimp_steps") or []]
        assert trace == steps[: len(trace)]
        lengths.append(len(trace))
    assert lengths == sorted(lengths) and sorted(set(lengths)) == list(range(len(steps) + 1))


# --------------------------------------------------------------------------- (2) 32 runs at once, one database

RUNS = 32
ASKED = re.compile(r"\[\[Q(\d+)\]\]")


class PerQuestionModel:
    """Fake small/large models whose steps and answer name the question they were asked (``[[Q<n>]]``).

    The first probe of every run waits at a barrier of ``parties`` runs, so all of them are in flight at once.
    """

    def __init__(self, small: FakeServer, large: FakeServer, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=120)
        small.handler = lambda body: self.respond(small, body)
        large.handler = lambda body: self.respond(large, body)

    @staticmethod
    def asked(body: dict[str, Any]) -> str:
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        found = ASKED.findall(str(users[-1]))
        return found[-1] if found else "?"

    def respond(self, server: FakeServer, body: dict[str, Any]) -> Any:
        n, prefix = self.asked(body), prefix_of(body)
        i, token = prefix.count(DELIMITER), f"Q{n}"
        if is_probe(body):
            if i == 0:
                self.barrier.wait()
            return server.chat(token, body, finish_reason="length", top_logprobs=logprobs_for_entropy(0.1, token))
        if not body.get("stop"):  # the final answer
            return server.chat(f" answer-{n}", body, finish_reason="stop", completion_tokens=2)
        text = f"{token} step {i}."
        if prefix.rsplit(DELIMITER, 1)[-1] == token:  # the small model continues after its probe token
            text = text[len(token) :]
        return server.chat(text, body, finish_reason="stop", stop_reason=DELIMITER, completion_tokens=3)


def test_32_runs_at_once_keep_every_checkpoint_in_its_own_thread(pg, fakes):
    small, large = fakes
    model = PerQuestionModel(small, large, RUNS)
    url = pg.url()

    async def main() -> list[dict[str, Any]]:
        async with async_postgres_checkpointer(url, max_size=8) as saver:
            graph = create_glimp_graph(
                endpoint_of(small, timeout=150),
                endpoint_of(large, timeout=150),
                config={"tau": 1.0, "max_steps": 3},
                checkpointer=saver,
            )
            runs = [
                graph.ainvoke({"question": f"[[Q{n}]] What is {n} + 1?"}, _thread(f"many-{n}"), durability="sync")
                for n in range(RUNS)
            ]
            results = await asyncio.gather(*runs)
            histories = []
            for n in range(RUNS):
                histories.append([c async for c in saver.alist(_thread(f"many-{n}"))])
            return [{"result": r, "history": h} for r, h in zip(results, histories, strict=True)]

    outcomes = asyncio.run(main())
    assert model.barrier.n_waiting == 0 and not model.barrier.broken  # all 32 were in flight together
    for n, outcome in enumerate(outcomes):
        result = outcome["result"]
        assert result["glimp_answer"] == f"answer-{n}"
        assert [s.text for s in result["glimp_steps"]] == [f"Q{n} step {i}." for i in range(3)]
        assert outcome["history"], f"thread many-{n} has no checkpoints"
        for checkpoint in outcome["history"]:
            assert checkpoint.config["configurable"]["thread_id"] == f"many-{n}"
            values = checkpoint.checkpoint["channel_values"]
            if "glimp_question" in values:
                assert ASKED.findall(values["glimp_question"]) == [str(n)]
            for step in values.get("glimp_steps") or []:
                assert step.text.startswith(f"Q{n} ")
    with psycopg.connect(url) as conn:
        counts = dict(conn.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id").fetchall())
    mine = {t: c for t, c in counts.items() if t.startswith("many-")}
    assert set(mine) == {f"many-{n}" for n in range(RUNS)}
    assert len(set(mine.values())) == 1  # the same run shape writes the same number of checkpoints per thread


# --------------------------------------------------------------------------- (3) a server restart

STEPS = [
    ScriptStep(0.2, "First, write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(2.0, "That is 30 + 21."),
    ScriptStep(0.2, "So the answer is \\boxed{51}."),
]


def _graph(small: FakeServer, large: FakeServer, saver: Any) -> Any:
    return create_glimp_graph(endpoint_of(small), endpoint_of(large), config={"tau": 1.0}, checkpointer=saver)


def _history(graph: Any, thread: str) -> list[tuple[str, Any, Any]]:
    return [
        (s.config["configurable"]["checkpoint_id"], s.values.get("glimp_steps"), s.values.get("messages"))
        for s in graph.get_state_history(_thread(thread))
    ]


def test_checkpoints_survive_a_server_restart_and_the_thread_goes_on(own_pg, fakes):
    small, large = fakes
    ScriptedModel(STEPS, answer="51").install(small, large)
    url = own_pg.url()
    with postgres_checkpointer(url) as saver:
        graph = _graph(small, large, saver)
        graph.invoke({"messages": [HumanMessage("What is 17 * 3?")]}, _thread("restart"))
        before = _history(graph, "restart")
    own_pg.restart()
    with postgres_checkpointer(url) as saver:
        graph = _graph(small, large, saver)
        assert _history(graph, "restart") == before  # every checkpoint, same ids, same values
        out = graph.invoke({"messages": [HumanMessage("And 17 * 4?")]}, _thread("restart"))
    assert [m.content for m in out["messages"]] == ["What is 17 * 3?", "51", "And 17 * 4?", "51"]


def test_an_infinite_tau_and_a_nul_character_are_checkpointed(pg, fakes):
    # JSONB holds neither (PostgresSaver keeps such values inline): the library's saver stores them as blobs
    small, large = fakes
    ScriptedModel(STEPS, answer="51").install(small, large)
    question = "What is 17 * 3?\x00"
    with postgres_checkpointer(pg.url()) as saver:
        graph = _graph(small, large, saver)
        out = graph.invoke({"question": question, "glimp_tau": -math.inf}, _thread("inf"), durability="sync")
        values = graph.get_state(_thread("inf")).values
    assert [s.model for s in out["glimp_steps"]] == ["large"] * 3 and out["glimp_stats"].tau == -math.inf
    assert values["glimp_run_tau"] == -math.inf and values["glimp_question"] == question


# --------------------------------------------------------------------------- faults


class HeldStep:
    """Holds the large model's step ``index`` until the test has done something to the server."""

    def __init__(self, small: FakeServer, large: FakeServer, index: int) -> None:
        self.script = ScriptedModel(STEPS, answer="51")
        self.reached, self.release = threading.Event(), threading.Event()
        self.index, self.asked = index, 0
        answer = self.script.respond
        small.handler = lambda body: answer(small, "small", body)

        def held(body: dict[str, Any]) -> Any:
            if body.get("stop") and prefix_of(body).count(DELIMITER) == self.index:
                self.asked += 1
                if self.asked == 1:
                    self.reached.set()
                    assert self.release.wait(60)
            return answer(large, "large", body)

        large.handler = held

    def while_held(self, action: Any) -> threading.Thread:
        def run() -> None:
            try:
                assert self.reached.wait(60)
                action()
            finally:
                self.release.set()

        worker = threading.Thread(target=run)
        worker.start()
        return worker


def test_server_stopped_mid_run_fails_resumably_and_the_thread_resumes(own_pg, fakes, caplog):
    small, large = fakes
    held = HeldStep(small, large, index=1)  # step 1 is the large model's (h=2.0 > tau)
    url = own_pg.url()
    with postgres_checkpointer(url, timeout=2) as saver:
        graph = _graph(small, large, saver)
        worker = held.while_held(own_pg.stop)
        with pytest.raises(CheckpointStoreUnavailableError) as info:
            graph.invoke({"question": "What is 17 * 3?"}, _thread("down"), durability="sync")
        worker.join()
    message = str(info.value)
    assert mask_url(url) in message and "run the same thread_id again" in message
    assert own_pg.password not in message + "".join(traceback.format_exception(info.value))

    # down at start: named, password masked, no psycopg traceback chained
    with pytest.raises(CheckpointStoreUnavailableError) as down, postgres_checkpointer(url, timeout=2):
        pass
    assert mask_url(url) in str(down.value) and down.value.__cause__ is None

    own_pg.start()
    with postgres_checkpointer(url) as saver:  # as another process would, once the server is back
        graph = _graph(small, large, saver)
        kept = graph.get_state(_thread("down"))
        assert [s.index for s in kept.values["glimp_steps"]] == [0] and kept.next  # step 0 kept, unfinished
        out = graph.invoke(None, _thread("down"), durability="sync")
    assert [s.text for s in out["glimp_steps"]] == [s.text for s in STEPS]  # none lost, none repeated
    assert [s.index for s in out["glimp_steps"]] == [0, 1, 2] and out["glimp_answer"] == "51"
    assert held.asked == 2  # step 1 was written again: its first write never reached the store
    assert own_pg.password not in caplog.text


def test_server_restarted_between_two_checkpoints_is_reconnected_to(own_pg, fakes):
    small, large = fakes
    held = HeldStep(small, large, index=1)
    with postgres_checkpointer(own_pg.url()) as saver:
        graph = _graph(small, large, saver)
        worker = held.while_held(own_pg.restart)
        out = graph.invoke({"question": "What is 17 * 3?"}, _thread("restarted"), durability="sync")
        worker.join()
        history = _history(graph, "restarted")
    assert [s.index for s in out["glimp_steps"]] == [0, 1, 2] and out["glimp_answer"] == "51"
    assert held.asked == 1
    assert [s.index for s in history[0][1]] == [0, 1, 2]  # the latest checkpoint, written after the restart


def test_wrong_password_is_named_and_never_printed(pg, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-password-7f3a"
    url = pg.url(password=wrong)
    with pytest.raises(CheckpointStoreAuthError) as info, postgres_checkpointer(url, timeout=2):
        pass
    message = str(info.value)
    assert "wrong password for user 'postgres'" in message and mask_url(url) in message
    shown = message + "".join(traceback.format_exception(info.value)) + caplog.text
    assert wrong not in shown and pg.password not in shown


def test_missing_database_is_named(pg):
    missing = 'database "nodb" does not exist'
    with pytest.raises(CheckpointStoreError, match=missing) as info, postgres_checkpointer(pg.url(database="nodb")):
        pass
    assert not isinstance(info.value, CheckpointStoreUnavailableError | CheckpointStoreAuthError)
    assert pg.password not in str(info.value)
