"""The ``plain`` prompt preset on real llama.cpp servers: a run completes, and every call carries its text."""

from __future__ import annotations

import math
from typing import Any

import pytest

from glimp_graph import PLAIN, STEPS, create_glimp_graph
from tests.helpers import CallRecorder

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 boxes with 4 pencils in each box. He gives away 5 pencils. How many pencils does he have left?"
SMOL = {"max_step_tokens": 48, "max_thinking_tokens": 192, "max_steps": 6, "final_max_tokens": 32}


class MessageRecorder(CallRecorder):
    """The shared call recorder, plus the system and user messages of each call (``calls[i]["messages"]``)."""

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[Any]], **kwargs: Any) -> None:
        super().on_chat_model_start(serialized, messages, **kwargs)
        shown = [(m.type, str(m.content)) for batch in messages for m in batch if m.type in ("system", "human")]
        self.calls[-1]["messages"] = shown


def test_plain_preset_runs_on_real_servers_with_its_text_in_every_call(smol_pair):
    graph = create_glimp_graph(*smol_pair, config={**SMOL, "tau": 1.0})  # built with the default, steps
    recorder = MessageRecorder()
    out = graph.invoke({"question": QUESTION}, context={"prompt": "plain"}, config={"callbacks": [recorder]})
    steps, stats = out["glimp_steps"], out["glimp_stats"]
    assert steps and stats.steps == len(steps) and stats.stop_reason
    assert all(math.isfinite(s.h_init) for s in steps)
    assert out["glimp_answer"]
    names = [call["name"] for call in recorder.calls]
    assert names.count("probe") == len(steps) and names[-1] == "final_answer"
    # probes, steps and the final answer all read the plain instruction and the preset's system message
    expected = [("system", STEPS.system), ("human", PLAIN.user_message(QUESTION))]
    assert all(call["messages"] == expected for call in recorder.calls), recorder.calls
    assert PLAIN.user_message(QUESTION) != STEPS.user_message(QUESTION)
