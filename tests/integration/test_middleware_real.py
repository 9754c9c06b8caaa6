"""GlimpTurnRouter on the real llama.cpp Qwen pair: a ``create_agent`` agent with a tool, routed turn by turn.

Properties, not text: ``tau=inf`` answers every turn with the small model, ``tau=-inf`` with the large one (the
answering run is that model's ``ChatOpenAI``); the probe is greedy, so a question's first-turn score is the same
in every run, and a threshold between two scores sends each turn where its score says: both models answer.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from glimp_graph import Endpoint
from glimp_graph.middleware import GlimpTurnRouter, chat_openai
from tests.helpers import CallRecorder

pytestmark = pytest.mark.integration

SYSTEM = "You are a concise assistant. Answer in one short sentence. Use the calculator tool for arithmetic."
QUESTIONS = [
    "What is 17 * 3?",
    "Name the capital of France in one word.",
    "Write a haiku about the sea.",
    "Is 91 a prime number? Answer yes or no.",
]
TURN_TOKENS = 32


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '17 * 3'."""
    return "51"


class ModelRuns(CallRecorder):
    """The chat-model runs of an agent: name, metadata, and the tools the request carried."""

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.calls

    def turns(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["name"] != "probe"]


def router_for(pair: tuple[Endpoint, Endpoint], tau: float) -> GlimpTurnRouter:
    small, large = pair
    return GlimpTurnRouter(
        chat_openai(small, max_tokens=TURN_TOKENS, temperature=0.0),
        chat_openai(large, max_tokens=TURN_TOKENS, temperature=0.0),
        tau=tau,
    )


def agent_for(router: GlimpTurnRouter, **kwargs: Any) -> Any:
    return create_agent(router.large_model, tools=[calculator], system_prompt=SYSTEM, middleware=[router], **kwargs)


def decisions_of(messages: list[Any]) -> list[dict[str, Any]]:
    return [m.response_metadata["glimp_decision"] for m in messages if isinstance(m, AIMessage)]


@pytest.mark.parametrize(("tau", "model"), [(math.inf, "small"), (-math.inf, "large")])
def test_an_infinite_threshold_answers_every_turn_with_one_model(qwen_pair, tau, model):
    router = router_for(qwen_pair, tau)
    agent = agent_for(router, checkpointer=InMemorySaver())
    runs = ModelRuns()
    config = {"configurable": {"thread_id": str(uuid.uuid4())}, "callbacks": [runs]}
    for question in ["What is 17 * 3?", "And what is that plus 9?"]:  # two turns of one conversation
        result = agent.invoke({"messages": [HumanMessage(question)]}, config)

    messages = result["messages"]
    decisions = decisions_of(messages)
    assert len(decisions) >= 2 and {d["model"] for d in decisions} == {model}
    assert all(d["tau"] == tau and d["scorer"] == "glimp" and d["h_init"] >= 0.0 for d in decisions)
    assert all(m.text.strip() or m.tool_calls for m in messages if isinstance(m, AIMessage))
    # the answering runs were the chosen model's ChatOpenAI (its model name), with the agent's tool bound
    chosen = router.small_model if model == "small" else router.large_model
    turns = runs.turns()
    assert len(turns) == len(decisions)
    assert {t["metadata"]["ls_model_name"] for t in turns} == {chosen.model_name}
    assert all(t["metadata"]["glimp_model"] == model and t["tools"] == ["calculator"] for t in turns)
    probes = [r for r in runs.runs if r["name"] == "probe"]
    assert len(probes) == len(decisions)  # one glimpse per turn, before it


def test_a_threshold_between_the_scores_lets_both_models_answer(qwen_pair):
    # the first turn's score of each question, with every turn answered by the small model
    router = router_for(qwen_pair, math.inf)
    agent = agent_for(router)
    scores = []
    for question in QUESTIONS:
        result = agent.invoke({"messages": [HumanMessage(question)]})
        scores.append(decisions_of(result["messages"])[0]["score"])
    ordered = sorted(scores)
    gap, low = max((b - a, a) for a, b in itertools.pairwise(ordered))
    assert gap > 0.1, f"the questions' first-turn entropies are too close to split: {scores}"
    tau = low + gap / 2

    # the same questions at that threshold, asynchronously: each first turn goes where its score says
    router = router_for(qwen_pair, tau)
    agent = agent_for(router)
    runs = ModelRuns()

    async def ask_all() -> list[dict[str, Any]]:
        return [await agent.ainvoke({"messages": [HumanMessage(q)]}, {"callbacks": [runs]}) for q in QUESTIONS]

    firsts = [decisions_of(r["messages"])[0] for r in asyncio.run(ask_all())]
    for first, score in zip(firsts, scores, strict=True):
        assert first["score"] == pytest.approx(score, abs=0.05), (firsts, scores)  # greedy: the same glimpse
        assert first["model"] == ("small" if first["score"] <= tau else "large")
    assert {f["model"] for f in firsts} == {"small", "large"}, (scores, tau)
    # both models answered, each through its own ChatOpenAI and with the agent's tool bound
    turns = runs.turns()
    names = {t["metadata"]["glimp_model"]: t["metadata"]["ls_model_name"] for t in turns}
    assert names == {"small": router.small_model.model_name, "large": router.large_model.model_name}
    assert all(t["tools"] == ["calculator"] for t in turns)
