"""ainvoke, astream and abatch (with a concurrency limit) against the real SmolLM2 servers, in one event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from glimp_graph import create_glimp_graph

pytestmark = pytest.mark.integration

CONFIG = {"tau": 1.0, "max_step_tokens": 32, "max_thinking_tokens": 64, "max_steps": 2, "final_max_tokens": 12}
CODES = ["ALPHA-17", "BRAVO-23", "CHARLIE-31", "DELTA-42", "ECHO-55", "FOXTROT-68"]
QUESTIONS = [f"Repeat the code word {code} and add 2 + {i}." for i, code in enumerate(CODES)]


class Tracker(BaseCallbackHandler):
    """Counts graph runs in flight (root chain runs) and records every model call with its run's question id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.roots: set[UUID] = set()
        self.calls: list[dict[str, Any]] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs) -> None:
        if parent_run_id is None:
            with self.lock:
                self.roots.add(run_id)
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)

    def _root_done(self, run_id: UUID) -> None:
        with self.lock:
            if run_id in self.roots:
                self.roots.discard(run_id)
                self.in_flight -= 1

    def on_chain_end(self, outputs, *, run_id, parent_run_id=None, **kwargs) -> None:
        self._root_done(run_id)

    def on_chain_error(self, error, *, run_id, parent_run_id=None, **kwargs) -> None:
        self._root_done(run_id)

    def on_chat_model_start(self, serialized, messages, *, run_id, name=None, metadata=None, **kwargs) -> None:
        text = "\n".join(str(m.content) for m in messages[0])
        with self.lock:
            self.calls.append({"name": name, "qid": (metadata or {}).get("qid"), "text": text})


def test_ainvoke_astream_abatch_with_a_concurrency_limit(smol_pair):
    graph = create_glimp_graph(*smol_pair, config=CONFIG)

    async def scenario() -> tuple[Any, ...]:
        one = await graph.ainvoke({"question": QUESTIONS[0]})
        events = [e async for e in graph.astream({"question": QUESTIONS[1]}, stream_mode="custom")]
        tracker = Tracker()
        configs = [
            {"callbacks": [tracker], "metadata": {"qid": i}, "max_concurrency": 2} for i in range(len(QUESTIONS))
        ]
        batch = await graph.abatch([{"question": q} for q in QUESTIONS], config=configs)
        return one, events, tracker, batch

    one, events, tracker, batch = asyncio.run(scenario())

    assert one["glimp_answer"] and one["glimp_steps"]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "final" and "step" in kinds and "route" in kinds
    assert [e["index"] for e in events if e["type"] == "step"] == list(range(kinds.count("step")))

    # the limit held, and runs did overlap
    assert tracker.peak == 2, tracker.peak
    assert tracker.in_flight == 0

    # every run's model calls, and its final answer request, carried its own question and no other
    assert len(batch) == len(QUESTIONS)
    for qid, (question, result) in enumerate(zip(QUESTIONS, batch, strict=True)):
        calls = [c for c in tracker.calls if c["qid"] == qid]
        finals = [c for c in calls if c["name"] == "final_answer"]
        assert len(finals) == 1 and question in finals[0]["text"]
        assert all(question in c["text"] for c in calls)
        assert not any(other in c["text"] for c in calls for other in QUESTIONS if other != question)
        steps = result["glimp_steps"]
        assert result["glimp_answer"] and result["glimp_stats"].steps == len(steps)
        assert sum(c["name"] == "probe" for c in calls) == result["glimp_stats"].probes
    assert len(tracker.calls) == sum(1 for c in tracker.calls if c["qid"] is not None)

    # each result was built from its own trace: its final-answer request continued exactly its own steps
    # (llama.cpp's logits depend on batch and cache state, so greedy runs are not compared across runs)
    for qid, result in enumerate(batch):
        final = next(c for c in tracker.calls if c["qid"] == qid and c["name"] == "final_answer")
        assert "\n\n".join(s.text for s in result["glimp_steps"]) in final["text"]
