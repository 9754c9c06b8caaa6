"""Faults staged with the fake servers: a small server that is down or dies, a large server that is down and
comes back (resume from the checkpoint), timeouts, retries, context overflow, refused log-probabilities."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.errors import (
    ContextLengthError,
    EndpointError,
    EndpointUnavailableError,
    InputError,
    LogprobsUnavailableError,
)
from tests.unit.conftest import DELIMITER, FakeServer, ScriptStep, chat_response, is_probe, unused_port
from tests.unit.conftest import endpoint as endpoint_of

QUESTION = "What is 17 * 3?"
STEPS = [
    ScriptStep(0.2, "First, 17 * 3 = 10 * 3 + 7 * 3."),
    ScriptStep(0.2, "That is 30 + 21."),
    ScriptStep(0.2, "So 51."),
    ScriptStep(0.2, "The answer is \\boxed{51}."),
]


def _large_writer(server: FakeServer) -> None:
    def handler(body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("stop"):
            return server.chat(" 51", body, completion_tokens=2)
        i = body["messages"][-1]["content"].count(DELIMITER) if body["messages"][-1]["role"] == "assistant" else 0
        return server.chat(STEPS[i].text, body, stop_reason=DELIMITER, completion_tokens=5)

    server.handler = handler


def test_small_server_down_falls_back_to_the_large_model(fake_large):
    _large_writer(fake_large)
    small = Endpoint(base_url=f"http://127.0.0.1:{unused_port()}/v1", model="fake", max_retries=0, timeout=2)
    out = create_glimp_graph(small, endpoint_of(fake_large), config={"tau": 1.0}).invoke({"question": QUESTION})
    steps = out["glimp_steps"]
    assert [s.text for s in steps] == [s.text for s in STEPS]
    assert {s.model for s in steps} == {"large"}
    assert all(s.note and "small model unavailable" in s.note for s in steps)
    assert out["glimp_stats"].small_failure and small.base_url in out["glimp_stats"].small_failure
    assert out["glimp_answer"] == "51"


def test_small_server_down_raises_when_asked_to(fake_large):
    _large_writer(fake_large)
    small = Endpoint(base_url=f"http://127.0.0.1:{unused_port()}/v1", model="fake", max_retries=0, timeout=2)
    graph = create_glimp_graph(small, endpoint_of(fake_large), config={"on_small_failure": "raise"})
    with pytest.raises(EndpointUnavailableError, match=re.escape("small model at http://127.0.0.1:")) as info:
        graph.invoke({"question": QUESTION})
    assert "cannot connect" in str(info.value)
    assert fake_large.chat_requests() == []


def test_small_server_dying_mid_run_hands_the_rest_to_the_large_model(fake_small, fake_large, scripted):
    model = scripted(STEPS, answer="51")
    healthy = fake_small.handler
    calls = {"n": 0}

    def dies_after_step_two(body: dict[str, Any]) -> Any:
        calls["n"] += 1
        if calls["n"] > 4:  # two probes + two continuations, then the server "dies" (HTTP 503)
            return 503, '{"error": {"message": "server shutting down"}}'
        return healthy(body)

    fake_small.handler = dies_after_step_two
    out = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large), config={"tau": 1.0}).invoke(
        {"question": QUESTION}
    )
    steps = out["glimp_steps"]
    assert [s.model for s in steps] == ["small", "small", "large", "large"]
    assert [s.text for s in steps] == [s.text for s in STEPS]
    assert steps[2].note and "HTTP 503" in steps[2].note
    assert "HTTP 503" in out["glimp_stats"].small_failure
    assert model.errors == []


def test_large_server_down_names_it_and_the_run_resumes_from_the_checkpoint(fake_small, fake_large, scripted):
    steps = [ScriptStep(0.2, s.text) for s in STEPS[:2]] + [ScriptStep(2.0, s.text) for s in STEPS[2:]]
    scripted(steps, answer="51")
    healthy = fake_large.handler
    fake_large.handler = lambda body: (503, '{"error": {"message": "loading model"}}')
    graph = create_glimp_graph(
        endpoint_of(fake_small), endpoint_of(fake_large), config={"tau": 1.0}, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "t1"}}
    with pytest.raises(
        EndpointUnavailableError, match=re.escape(f"large model at {fake_large.url}/v1: HTTP 503")
    ) as info:
        graph.invoke({"question": QUESTION}, config)
    assert "loading model" in str(info.value)
    saved = graph.get_state(config).values["glimp_steps"]
    assert [s.model for s in saved] == ["small", "small"]  # the completed steps are in the checkpoint
    small_requests = len(fake_small.chat_requests())
    fake_large.handler = healthy  # the large server is back
    out = graph.invoke(None, config)
    assert [s.index for s in out["glimp_steps"]] == [0, 1, 2, 3]  # none lost, none repeated
    assert [s.text for s in out["glimp_steps"]] == [s.text for s in steps]
    assert out["glimp_steps"][:2] == saved
    assert len(fake_small.chat_requests()) - small_requests == 1  # only the probe of the next step


def test_timeout_is_an_unavailable_endpoint_error(fake_small, fake_large):
    def slow(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(1.5)
        return chat_response("x")

    fake_small.handler = slow
    graph = create_glimp_graph(
        endpoint_of(fake_small, timeout=0.3), endpoint_of(fake_large), config={"on_small_failure": "raise"}
    )
    with pytest.raises(EndpointUnavailableError, match=r"no answer within 0\.3 s \(after 0 retries\)"):
        graph.invoke({"question": QUESTION})


def test_retries_with_backoff_are_the_clients_own(fake_small, fake_large):
    fake_small.handler = lambda body: (503, "busy")
    graph = create_glimp_graph(
        endpoint_of(fake_small, max_retries=2), endpoint_of(fake_large), config={"on_small_failure": "raise"}
    )
    with pytest.raises(EndpointUnavailableError, match="after 2 retries"):
        graph.invoke({"question": QUESTION})
    assert len(fake_small.chat_requests()) == 3  # one try + two retries, in one place (the OpenAI client)


def test_a_question_too_long_for_the_context_is_rejected_before_any_model_call(fake_small, fake_large):
    fake_small.owned_by = "llamacpp"
    fake_small.model_extra = {"meta": {"n_ctx": 256, "n_vocab": 1000}}
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))
    with pytest.raises(ContextLengthError, match="context of 256 tokens") as info:
        graph.invoke({"question": "How many words? " + "word " * 2000})
    assert isinstance(info.value, InputError)
    assert fake_small.chat_requests() == [] and fake_large.chat_requests() == []


def test_vllm_context_length_comes_from_max_model_len(fake_small, fake_large):
    fake_small.model_extra = {"max_model_len": 128}
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))
    with pytest.raises(ContextLengthError, match="context of 128 tokens"):
        graph.invoke({"question": "x" * 4000})


def test_server_reported_context_overflow_says_what_to_change(fake_small, fake_large):
    fake_small.handler = lambda body: (400, '{"error": {"message": "the request exceeds the available context size"}}')
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))
    with pytest.raises(ContextLengthError, match="max_thinking_tokens"):
        graph.invoke({"question": QUESTION})


def test_refused_top_logprobs_says_to_raise_max_logprobs(fake_small, fake_large):
    body = '{"error": {"message": "Requested top logprobs of 20 exceeds maximum of 5"}}'
    fake_small.handler = lambda b: (400, body) if is_probe(b) else chat_response("x")
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))
    with pytest.raises(LogprobsUnavailableError, match="--max-logprobs >= top_k"):
        graph.invoke({"question": QUESTION})


def test_client_errors_are_not_treated_as_an_outage(fake_small, fake_large):
    fake_small.handler = lambda body: (422, '{"error": {"message": "bad field"}}')
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))  # fallback is the default
    with pytest.raises(EndpointError, match="HTTP 422") as info:
        graph.invoke({"question": QUESTION})
    assert not isinstance(info.value, EndpointUnavailableError)
    assert fake_large.chat_requests() == []


def _invoke(graph: Any, state: Any, mode: str, config: Any = None) -> Any:
    return graph.invoke(state, config) if mode == "sync" else asyncio.run(graph.ainvoke(state, config))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_unreachable_large_url_is_named_before_any_completion(fake_small, mode):
    url = f"http://127.0.0.1:{unused_port()}/v1"
    graph = create_glimp_graph(  # tau=inf: every step would be the small model's, the large one only answers
        endpoint_of(fake_small), Endpoint(base_url=url, model="fake", max_retries=0), config={"tau": math.inf}
    )
    fake_small.handler = lambda body: chat_response("x", finish_reason="length", top_logprobs=[("x", 0.0)])
    with pytest.raises(EndpointUnavailableError, match=re.escape(f"large model at {url}: cannot connect")):
        _invoke(graph, {"question": QUESTION}, mode)
    assert fake_small.chat_requests() == []  # found at the check (GET /models), before any completion
    assert fake_small.paths == [("GET", "/v1/models")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_both_endpoints_are_checked_concurrently(fake_small, fake_large, scripted, mode):
    """Each server's GET /models waits for the other's: checked one after the other, the first would time out."""
    scripted(STEPS, answer="51")
    both = threading.Barrier(2, timeout=3)  # below the 5 s client timeout of endpoint_of

    def meet() -> tuple[int, str] | None:
        try:
            both.wait()
        except threading.BrokenBarrierError:
            return 503, '{"error": {"message": "the other endpoint was not checked at the same time"}}'
        return None

    fake_small.models_hook = fake_large.models_hook = meet
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large), config={"on_small_failure": "raise"})
    assert _invoke(graph, {"question": QUESTION}, mode)["glimp_answer"] == "51"


def test_endpoints_are_checked_once_per_graph_not_per_run(fake_small, fake_large, scripted):
    scripted(STEPS, answer="51")
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))
    for mode in ["sync", "sync", "async"]:
        assert _invoke(graph, {"question": QUESTION}, mode)["glimp_answer"] == "51"
    assert fake_small.paths.count(("GET", "/v1/models")) == fake_large.paths.count(("GET", "/v1/models")) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_small_server_down_at_the_check_still_falls_back(fake_large, mode):
    _large_writer(fake_large)
    small = Endpoint(base_url=f"http://127.0.0.1:{unused_port()}/v1", model="fake", max_retries=0, timeout=2)
    out = _invoke(create_glimp_graph(small, endpoint_of(fake_large)), {"question": QUESTION}, mode)
    assert [s.model for s in out["glimp_steps"]] == ["large"] * len(STEPS)
    assert small.base_url in out["glimp_stats"].small_failure
    assert out["glimp_answer"] == "51"


def test_large_server_down_at_the_check_resumes_from_the_checkpoint(fake_small, fake_large, scripted):
    scripted(STEPS, answer="51")
    fake_large.models_hook = lambda: (503, '{"error": {"message": "loading model"}}')
    graph = create_glimp_graph(
        endpoint_of(fake_small), endpoint_of(fake_large), config={"tau": 1.0}, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": "t1"}}
    with pytest.raises(EndpointUnavailableError, match=re.escape(f"large model at {fake_large.url}/v1: HTTP 503")):
        graph.invoke({"question": QUESTION}, config)
    assert fake_small.chat_requests() == fake_large.chat_requests() == []
    fake_large.models_hook = None  # the large server is back
    out = graph.invoke(None, config)
    assert [s.text for s in out["glimp_steps"]] == [s.text for s in STEPS]
    assert out["glimp_answer"] == "51"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_503_then_success_is_retried_once_after_the_backoff(fake_small, fake_large, scripted, mode, monkeypatch):
    backoff = 0.1  # the OpenAI client's first backoff (0.5 s of its own; the unit tests' default is shorter still)
    monkeypatch.setattr("openai._base_client.INITIAL_RETRY_DELAY", backoff)
    model = scripted(STEPS, answer="51")
    healthy = fake_small.handler
    arrivals: list[float] = []

    def busy_once(body: dict[str, Any]) -> Any:
        arrivals.append(time.monotonic())
        return (503, '{"error": {"message": "busy"}}') if len(arrivals) == 1 else healthy(body)

    fake_small.handler = busy_once
    graph = create_glimp_graph(endpoint_of(fake_small, max_retries=2), endpoint_of(fake_large), config={"tau": 1.0})
    out = _invoke(graph, {"question": QUESTION}, mode)
    assert [s.text for s in out["glimp_steps"]] == [s.text for s in STEPS]  # the run went on
    assert out["glimp_stats"].small_failure is None and model.errors == []
    requests = fake_small.chat_requests()
    assert requests[0] == requests[1]  # the failed request, sent again once ...
    healthy_run = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large), config={"tau": 1.0})
    before = len(fake_small.chat_requests())
    _invoke(healthy_run, {"question": QUESTION}, mode)
    assert len(requests) == len(fake_small.chat_requests()) - before + 1  # ... and only that one
    # the OpenAI client's backoff: its INITIAL_RETRY_DELAY less at most 25% jitter, no Retry-After header
    assert arrivals[1] - arrivals[0] >= backoff * 0.75


def test_async_runs_in_successive_event_loops(fake_small, fake_large, scripted):
    """Each asyncio.run has its own loop; an async HTTP client from a closed loop must not be reused."""
    scripted(STEPS, answer="51")
    graph = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))
    other = create_glimp_graph(endpoint_of(fake_small), endpoint_of(fake_large))
    answers = [asyncio.run(g.ainvoke({"question": QUESTION}))["glimp_answer"] for g in (graph, graph, other)]
    assert answers == ["51", "51", "51"]
