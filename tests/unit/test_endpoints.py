"""The model client against the fake server: server kinds, continuation, and clear errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from glimp_graph import (
    BadResponseError,
    EndpointError,
    GlimpError,
    LogprobsUnavailableError,
    create_glimp_graph,
)
from glimp_graph.endpoints import ModelClient, Request
from glimp_graph.errors import EndpointUnavailableError
from tests.unit.conftest import FakeServer, chat_response, endpoint, unused_port

SECRET = "sk-secret-123"
MESSAGES = [{"role": "user", "content": "What is 6 * 7?"}]


def probe_request(prefix: str = "") -> Request:
    return Request(messages=MESSAGES, prefix=prefix, max_tokens=1, temperature=0.0, top_logprobs=5)


def step_request(prefix: str = "") -> Request:
    return Request(messages=MESSAGES, prefix=prefix, max_tokens=64, stop=["\n\n"])


def client(server: FakeServer, role: str = "small", **overrides: Any) -> ModelClient:
    return ModelClient(endpoint(server, api_key=SECRET, **overrides), role)  # type: ignore[arg-type]


def no_secret(exc: BaseException) -> None:
    text = str(exc) + repr(exc) + str(getattr(exc, "__cause__", "") or "")
    assert SECRET not in text


# --------------------------------------------------------------------------- server kinds and continuation


@pytest.mark.parametrize(("owned_by", "kind"), [("vllm", "vllm"), ("llamacpp", "llama.cpp"), ("openai", "openai")])
def test_server_kind_is_learned_once_from_models(fake_small: FakeServer, owned_by: str, kind: str) -> None:
    fake_small.owned_by = owned_by
    fake_small.handler = lambda body: fake_small.chat(" more", body)
    model = client(fake_small)
    assert model.server_kind() == kind
    model.complete(step_request("Start"))
    model.complete(step_request("Start"))
    assert fake_small.paths.count(("GET", "/v1/models")) == 1


@pytest.mark.parametrize("owned_by", ["vllm", "llamacpp", "something-else"])
def test_continuation_returns_only_the_new_text(fake_small: FakeServer, owned_by: str) -> None:
    fake_small.owned_by = owned_by
    fake_small.handler = lambda body: fake_small.chat(" and more.", body, completion_tokens=3)
    done = client(fake_small).complete(step_request("Some text"))
    assert done.text == " and more."
    assert done.tokens == 3
    assert done.prompt_tokens == 10
    body = fake_small.requests[-1]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "Some text"}


def test_fresh_turn_sends_no_continuation_flags(fake_small: FakeServer) -> None:
    fake_small.handler = lambda body: fake_small.chat("Hello", body)
    done = client(fake_small).complete(step_request(""))
    assert done.text == "Hello"
    body = fake_small.requests[-1]
    assert "continue_final_message" not in body
    assert "add_generation_prompt" not in body
    assert body["messages"][-1]["role"] == "user"


@pytest.mark.parametrize(
    ("finish", "stop_reason", "end"),
    [("length", ..., "length"), ("stop", "\n\n", "delimiter"), ("stop", None, "eos")],
)
def test_vllm_end_of_step(fake_small: FakeServer, finish: str, stop_reason: Any, end: str) -> None:
    fake_small.handler = lambda body: chat_response("x", finish_reason=finish, stop_reason=stop_reason)
    assert client(fake_small).complete(step_request("p")).end == end


def test_llamacpp_stop_is_ambiguous(fake_small: FakeServer) -> None:
    fake_small.owned_by = "llamacpp"
    fake_small.handler = lambda body: fake_small.chat("x", body, finish_reason="stop")
    assert client(fake_small).complete(step_request("p")).end == "stop"


def test_llamacpp_without_the_prefix_is_a_bad_response(fake_small: FakeServer) -> None:
    fake_small.owned_by = "llamacpp"
    fake_small.handler = lambda body: chat_response("x")  # prefix missing
    with pytest.raises(BadResponseError, match="server kind"):
        client(fake_small).complete(step_request("prefix"))


def test_probe_returns_top_logprobs(fake_small: FakeServer) -> None:
    top = [("A", -0.1), ("B", -2.5)]
    fake_small.handler = lambda body: chat_response("A", finish_reason="length", top_logprobs=top)
    done = client(fake_small).complete(probe_request())
    assert done.top_logprobs == top
    assert done.end == "length"
    body = fake_small.requests[-1]
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 5
    assert (body.get("max_completion_tokens") or body.get("max_tokens")) == 1


def test_async_complete_matches_sync(fake_small: FakeServer) -> None:
    fake_small.owned_by = "llamacpp"
    fake_small.handler = lambda body: fake_small.chat(" new", body)
    model = client(fake_small)
    done = asyncio.run(model.acomplete(step_request("old")))
    assert done.text == " new"
    assert model.complete(step_request("old")).text == " new"


# --------------------------------------------------------------------------- the check before the first completion


def of_kind(fake: FakeServer, kind: str) -> ModelClient:
    return ModelClient(endpoint(fake).model_copy(update={"server": kind}), "small")


def test_check_with_an_explicit_server_kind_keeps_it_and_learns_the_context(fake_small: FakeServer) -> None:
    fake_small.owned_by = "llamacpp"
    fake_small.model_extra = {"meta": {"n_ctx": 512, "n_vocab": 1000}}
    model = of_kind(fake_small, "vllm")
    model.check()
    asyncio.run(model.acheck())
    assert (model.server_kind(), model.context_length, model.vocab_size) == ("vllm", 512, 1000)
    assert fake_small.paths == [("GET", "/v1/models")]  # once per client


def test_check_accepts_an_explicit_server_kind_without_models(fake_small: FakeServer) -> None:
    fake_small.models_hook = lambda: (404, '{"error": {"message": "no route"}}')
    fake_small.handler = lambda body: chat_response(" more", stop_reason="\n\n")
    model = of_kind(fake_small, "vllm")
    model.check()
    assert model.checked and model.context_length is None
    assert model.complete(step_request("p")).text == " more"
    with pytest.raises(EndpointError, match="HTTP 404"):  # "auto" needs GET /models to learn the kind
        client(fake_small).check()


@pytest.mark.parametrize("server", ["auto", "vllm"])
def test_a_failed_check_is_not_remembered(fake_small: FakeServer, server: str) -> None:
    fake_small.models_hook = lambda: (503, '{"error": {"message": "loading model"}}')
    model = of_kind(fake_small, server)
    with pytest.raises(EndpointUnavailableError, match="HTTP 503"):
        model.check()
    assert not model.checked
    fake_small.models_hook = None
    asyncio.run(model.acheck())
    assert model.checked


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("top", [None, []])
def test_probe_without_logprobs_says_how_to_fix(fake_small: FakeServer, top: list | None) -> None:
    fake_small.handler = lambda body: chat_response("A", finish_reason="length", top_logprobs=top)
    with pytest.raises(LogprobsUnavailableError, match="--max-logprobs") as info:
        client(fake_small).complete(probe_request())
    assert info.value.role == "small"
    assert info.value.base_url == fake_small.url + "/v1"
    no_secret(info.value)


def test_graph_surfaces_missing_logprobs(fake_small: FakeServer, fake_large: FakeServer) -> None:
    fake_small.handler = lambda body: chat_response("A", finish_reason="length", top_logprobs=None)
    graph = create_glimp_graph(endpoint(fake_small), endpoint(fake_large))
    with pytest.raises(LogprobsUnavailableError, match="--max-logprobs"):
        graph.invoke({"question": "q"})
    assert fake_large.requests == []


def test_refused_connection_names_the_base_url() -> None:
    base_url = f"http://127.0.0.1:{unused_port()}/v1"
    model = ModelClient(
        endpoint_for(base_url),
        "large",
    )
    with pytest.raises(EndpointError) as info:
        model.complete(step_request("p"))
    message = str(info.value)
    assert base_url in message
    assert "large model" in message
    assert "connect" in message
    no_secret(info.value)


def endpoint_for(base_url: str) -> Any:
    from glimp_graph import Endpoint

    return Endpoint(base_url=base_url, model="fake", max_retries=0, timeout=5, api_key=SECRET)


@pytest.mark.parametrize("payload", ["{not json", "", "[1, 2", "<html>oops</html>"])
def test_malformed_json_is_a_clear_endpoint_error(fake_small: FakeServer, payload: str) -> None:
    fake_small.handler = lambda body: (200, payload)
    with pytest.raises(EndpointError) as info:
        client(fake_small).complete(step_request("p"))
    assert isinstance(info.value, GlimpError)
    message = str(info.value)
    assert fake_small.url in message
    assert "valid chat completion" in message or "expected a text chat completion" in message
    no_secret(info.value)


def test_json_that_is_not_a_completion_is_a_bad_response(fake_small: FakeServer) -> None:
    fake_small.handler = lambda body: {"hello": "world"}
    with pytest.raises(BadResponseError) as info:
        client(fake_small).complete(step_request("p"))
    assert "choices" in str(info.value)
    no_secret(info.value)


@pytest.mark.parametrize("status", [500, 400, 503, 422])
def test_http_errors_include_the_status_code(fake_small: FakeServer, status: int) -> None:
    fake_small.handler = lambda body: (status, '{"error": {"message": "context length exceeded"}}')
    with pytest.raises(EndpointError) as info:
        client(fake_small).complete(step_request("p"))
    message = str(info.value)
    assert f"HTTP {status}" in message
    assert "context length exceeded" in message
    assert fake_small.url in message
    no_secret(info.value)


def test_http_401_blames_the_api_key_without_showing_it(fake_small: FakeServer) -> None:
    fake_small.handler = lambda body: (401, '{"error": {"message": "bad key"}}')
    with pytest.raises(EndpointError, match="401") as info:
        client(fake_small).complete(step_request("p"))
    assert "api_key" in str(info.value)
    no_secret(info.value)


def test_http_404_points_at_base_url_and_model(fake_small: FakeServer) -> None:
    model = ModelClient(endpoint_for(fake_small.url + "/wrong"), "small")
    with pytest.raises(EndpointError, match="404") as info:
        model.complete(step_request("p"))
    assert "base_url" in str(info.value)
    assert "'fake'" in str(info.value)
    no_secret(info.value)


def test_async_http_error_is_an_endpoint_error(fake_small: FakeServer) -> None:
    fake_small.handler = lambda body: (500, "boom")
    with pytest.raises(EndpointError, match="HTTP 500"):
        asyncio.run(client(fake_small).acomplete(step_request("p")))


def test_null_choices_is_a_bad_response(fake_small: FakeServer) -> None:
    fake_small.handler = lambda body: {**chat_response("x"), "choices": None}
    with pytest.raises(GlimpError) as info:
        client(fake_small).complete(step_request("p"))
    no_secret(info.value)


def test_empty_choices_is_a_glimp_error(fake_small: FakeServer) -> None:
    fake_small.handler = lambda body: {**chat_response("x"), "choices": []}
    with pytest.raises(GlimpError):
        client(fake_small).complete(step_request("p"))


def test_timeout_is_an_endpoint_error(fake_small: FakeServer) -> None:
    import time

    def slow(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(1.0)
        return chat_response("x")

    fake_small.handler = slow
    with pytest.raises(EndpointError, match=r"no answer within 0\.2 s") as info:
        client(fake_small, timeout=0.2).complete(step_request("p"))
    no_secret(info.value)


def test_api_key_is_sent_as_bearer_but_not_in_repr(fake_small: FakeServer) -> None:
    model = client(fake_small)
    assert SECRET not in repr(model)
