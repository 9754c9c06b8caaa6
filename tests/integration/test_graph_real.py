"""The GlimpRouter graph end to end against real llama.cpp servers and real models."""

from __future__ import annotations

import math

import pytest

from glimp_graph import create_glimp_graph
from glimp_graph.scorers import TokenEntropy
from tests.integration.easy_problems import CONFIG as EASY_CONFIG
from tests.integration.easy_problems import PROBLEMS, check_mostly_right

pytestmark = pytest.mark.integration

QUESTION = "Tom has 3 boxes with 4 pencils in each box. He gives away 5 pencils. How many pencils does he have left?"
SMOL = {"max_step_tokens": 48, "max_thinking_tokens": 192, "max_steps": 8, "final_max_tokens": 32}


def _roles(recorder):
    return [(c["name"], c["metadata"].get("glimp_role")) for c in recorder.calls]


def test_tau_inf_sends_every_step_to_the_small_model(smol_pair, recorder):
    graph = create_glimp_graph(*smol_pair, config={**SMOL, "tau": math.inf})
    out = graph.invoke({"question": QUESTION}, config={"callbacks": [recorder]})
    steps, stats = out["glimp_steps"], out["glimp_stats"]
    assert steps and all(s.model == "small" for s in steps)
    assert stats.small_steps == len(steps) and stats.large_steps == 0 and stats.large_share == 0.0
    roles = _roles(recorder)
    assert roles[-1] == ("final_answer", "large")  # the large model always writes the final answer
    assert all(role == "small" for name, role in roles[:-1])
    assert out["glimp_answer"]
    # the probed token is reused: every small step starts with it
    assert all(s.text.startswith(s.probe_token) or s.end == "eos" for s in steps)
    assert stats.thinking_tokens == sum(s.tokens for s in steps)


def test_longer_glimpse_on_a_real_server(smol_pair, recorder):
    """TokenEntropy(tokens=4): one probe request of up to 4 greedy tokens, reused by the small step; the score is
    the highest entropy among the glimpsed tokens of the step, so never below H_init."""
    graph = create_glimp_graph(*smol_pair, config={**SMOL, "tau": math.inf, "scorer": TokenEntropy(tokens=4)})
    out = graph.invoke({"question": QUESTION}, config={"callbacks": [recorder]})
    steps = out["glimp_steps"]
    assert steps and all(s.model == "small" for s in steps)
    assert all(s.score >= s.h_init - 1e-9 for s in steps)
    assert any(s.score > s.h_init for s in steps)  # a later token of some step was less certain than its first
    assert all(s.text.startswith(s.probe_token.split("\n\n", 1)[0]) or s.end == "eos" for s in steps)
    assert any(len(s.probe_token) > 0 and s.tokens >= 4 for s in steps)  # a continuation after 4 glimpsed tokens
    assert out["glimp_stats"].thinking_tokens == sum(s.tokens for s in steps)
    assert [n for n, _ in _roles(recorder)].count("probe") == len(steps)


def test_tau_minus_inf_sends_every_step_to_the_large_model(smol_pair, recorder):
    graph = create_glimp_graph(*smol_pair, config={**SMOL, "tau": -math.inf})
    out = graph.invoke({"question": QUESTION}, config={"callbacks": [recorder]})
    steps = out["glimp_steps"]
    assert steps and all(s.model == "large" for s in steps)
    assert out["glimp_stats"].large_share == 1.0
    names = [name for name, _ in _roles(recorder)]
    assert names.count("probe") == len(steps)  # every step was still probed by the small model
    assert {role for name, role in _roles(recorder) if name != "probe"} == {"large"}


def test_intermediate_tau_mixes_both_models(smol_pair):
    """A tau between the entropies the small model shows on this question routes steps to both models.

    Each run must route every step by ``H_init <= tau``; tau is the median of the entropies seen in the run
    before (the first run: tau=inf), and within three runs one must use both models. (Runs are not expected to
    repeat each other: llama.cpp's logits depend on the batch and cache state, so greedy decoding is not
    bit-reproducible between a continuation and a fresh turn, and a trace can change with the routing.)
    """
    config = {**SMOL, "max_steps": 10, "stop_on_repeat": False}
    tau, seen = math.inf, []
    for _ in range(4):
        out = create_glimp_graph(*smol_pair, config={**config, "tau": tau}).invoke({"question": QUESTION})
        steps = out["glimp_steps"]
        assert all((s.h_init <= tau) == (s.model == "small") for s in steps), (tau, steps)
        models = {s.model for s in steps}
        seen.append((tau, sorted(round(s.h_init, 3) for s in steps), models))
        if tau != math.inf and models == {"small", "large"}:
            return
        h = sorted(s.h_init for s in steps)
        tau = (h[(len(h) - 1) // 2] + h[len(h) // 2]) / 2 if h[0] < h[-1] else h[0] - 1e-3
    pytest.fail(f"no run used both models: {seen}")


def test_stream_yields_each_step_as_it_is_written(smol_pair):
    graph = create_glimp_graph(*smol_pair, config={**SMOL, "tau": 1.0})
    events = list(graph.stream({"question": QUESTION}, stream_mode="custom"))
    steps = [e for e in events if e["type"] == "step"]
    routes = [e for e in events if e["type"] == "route"]
    assert steps and len(routes) == len(steps)
    assert [e["index"] for e in steps] == list(range(len(steps)))
    assert all({"index", "model", "h_init", "text"} <= e.keys() for e in steps)
    assert events[-1]["type"] == "final"


def test_async_invoke_on_real_servers(smol_pair):
    import asyncio

    graph = create_glimp_graph(*smol_pair, config={**SMOL, "tau": 1.0})
    out = asyncio.run(graph.ainvoke({"question": QUESTION}))
    assert out["glimp_steps"] and out["glimp_answer"]


def test_easy_problems_are_mostly_answered_right(qwen_pair, record_property):
    """Qwen2.5-Coder 0.5B + 1.5B through the graph on eight easy word problems: most are answered right."""
    # measured on an AMD EPYC, 2 cores: 7/8 right, the reasoning reached 7/8 (this fixture: temperature 0.6, seed
    # 7); 8/8 at seed 1, 6/8 greedy. A broken pipeline (a garbled trace, a lost step, a bad answer prompt) falls
    # far below the bound; the noise of one problem or two does not.
    graph = create_glimp_graph(*qwen_pair, config=EASY_CONFIG)
    check_mostly_right(graph, PROBLEMS, at_least=4, record=record_property)
