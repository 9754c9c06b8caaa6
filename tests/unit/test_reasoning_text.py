"""One reasoning text: with a custom step delimiter, every face reads the trace as the final answer's prompt does.

The graph joins the steps with ``GlimpConfig.delimiter``; the OpenAI face (``reasoning_content``, whole and
streamed) and the evaluation's fallback grading must join them the same way, never with a hard-coded ``"\\n\\n"``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from glimp_graph import create_glimp_graph
from glimp_graph.eval import Job, Problem, run_eval
from glimp_graph.router_server import create_app
from glimp_graph.state import reasoning_text
from tests.unit.conftest import FakeServer, ScriptedModel, ScriptStep, endpoint, prefix_of

DELIMITER = " ;; "
STEPS = [
    ScriptStep(0.2, "We need 17 * 3."),
    ScriptStep(2.0, "The answer is 51"),
    ScriptStep(0.2, "Done.", eos=True),
]
REASONING = DELIMITER.join(s.text for s in STEPS)
CHAT = {"model": "glimp-router", "messages": [{"role": "user", "content": "What is 17 * 3?"}]}


@dataclass
class DelimitedModel(ScriptedModel):
    """The scripted pair, with its steps ended by :data:`DELIMITER` instead of the default ``"\\n\\n"``."""

    delimiter: str = DELIMITER

    def _trace(self, i: int) -> str:
        return self.think_prefix + "".join(s.text + self.delimiter for s in self.steps[:i])


@pytest.fixture
def model(fake_small: FakeServer, fake_large: FakeServer) -> DelimitedModel:
    return DelimitedModel(STEPS, answer="51").install(fake_small, fake_large)


def _graph(fake_small: FakeServer, fake_large: FakeServer) -> Any:
    return create_glimp_graph(endpoint(fake_small), endpoint(fake_large), config={"delimiter": DELIMITER})


def _final_prefix(fake_large: FakeServer) -> str:
    """The trace the large model was given to write the answer from (its last request)."""
    return prefix_of(fake_large.requests[-1])


def test_reasoning_text_joins_with_the_delimiter() -> None:
    assert reasoning_text(["a", "b", "c"], "|") == "a|b|c"
    assert reasoning_text([], "|") == ""


def test_router_server_reasoning_content_uses_the_graphs_delimiter(model, fake_small, fake_large) -> None:
    with TestClient(create_app(_graph(fake_small, fake_large))) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    assert model.errors == []
    assert r.json()["choices"][0]["message"]["reasoning_content"] == REASONING
    assert REASONING in _final_prefix(fake_large)


def test_router_server_streamed_reasoning_uses_the_graphs_delimiter(model, fake_small, fake_large) -> None:
    with TestClient(create_app(_graph(fake_small, fake_large))) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert model.errors == []
    chunks = [json.loads(f[len("data: ") :]) for f in r.text.split("\n\n")[:-2]]  # the last frame is [DONE]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    pieces = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    assert len(pieces) == len(STEPS) and "".join(pieces) == REASONING
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] == "stop"]
    assert [s["text"] for s in finish[0]["glimp"]["steps"]] == [s.text for s in STEPS]
    assert all("delimiter" not in step for step in finish[0]["glimp"]["steps"])


def test_eval_grades_the_reasoning_joined_with_the_delimiter(model, fake_small, fake_large, tmp_path) -> None:
    model.answer = "no idea"  # no answer in the answer: the record grades the reasoning instead
    problem = Problem(id="p", question="What is 17 * 3?", answer="51", kind="integer")
    small, large = endpoint(fake_small), endpoint(fake_large)
    base = {"delimiter": DELIMITER}
    (record,) = asyncio.run(
        run_eval(small, large, [problem], [Job("glimp")], tmp_path / "runs.jsonl", base_config=base, progress=False)
    )
    assert record["error"] is None and model.errors == []
    # "the answer is 51 ;; Done." reads as one line: the grade sees the trace as the graph wrote it
    assert record["predicted"] == "51 ;; Done" and record["correct"]
