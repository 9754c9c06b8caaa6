"""Contract of the private ``ChatOpenAI._create_chat_result`` that ``endpoints._ChatOpenAI`` overrides.

The override keeps vLLM's ``stop_reason`` (it tells a step ended by the delimiter from one ended by the end of
sequence). It relies on a private method of ``langchain-openai``: its name, its arguments, that the chat API
path calls it with the response, and what it puts into the message. These tests feed it chat completions
recorded from a real vLLM server (``data/vllm_chat_completions.json``, recorded by
``tests/integration/test_vllm_real.py`` with ``GLIMP_RECORD_VLLM=1``, which also checks that the live server
still answers in that shape), so that a ``langchain-openai`` release that changes the method fails here.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletion

from glimp_graph.endpoints import ModelClient, Request, TokenLogprob, _ChatOpenAI
from tests.unit.conftest import FakeServer, endpoint, prefix_of

RECORDED = json.loads((Path(__file__).with_name("data") / "vllm_chat_completions.json").read_text(encoding="utf-8"))
EXCHANGES = {e["name"]: e for e in RECORDED["exchanges"]}
END = {"delimiter": "delimiter", "eos": "eos", "probe": "length"}


def choice_of(name: str) -> dict[str, Any]:
    return EXCHANGES[name]["response"]["choices"][0]


def entries(logprobs: dict[str, Any]) -> list[TokenLogprob]:
    """The tokens of an OpenAI ``logprobs`` object with their log-probabilities and top alternatives."""
    return [
        TokenLogprob(t["token"], t["logprob"], [(a["token"], a["logprob"]) for a in t["top_logprobs"]])
        for t in logprobs["content"]
    ]


def test_the_recording_has_what_the_contract_is_about() -> None:
    assert RECORDED["server"].startswith("vllm")
    assert {name: (choice_of(name)["finish_reason"], choice_of(name)["stop_reason"]) for name in EXCHANGES} == {
        "delimiter": ("stop", "\n\n"),
        "eos": ("stop", None),
        "probe": ("length", None),
    }
    assert all(choice_of(name)["logprobs"]["content"][0]["top_logprobs"] for name in EXCHANGES)


def test_the_overridden_method_keeps_its_name_and_arguments() -> None:
    assert callable(getattr(ChatOpenAI, "_create_chat_result", None))
    assert list(inspect.signature(ChatOpenAI._create_chat_result).parameters) == [
        "self",
        "response",
        "generation_info",
    ]


@pytest.mark.parametrize("as_object", [False, True], ids=["dict", "ChatCompletion"])
@pytest.mark.parametrize("name", list(EXCHANGES))
def test_create_chat_result_keeps_what_the_client_reads(name: str, as_object: bool) -> None:
    response = copy.deepcopy(EXCHANGES[name]["response"])
    choice, usage = response["choices"][0], response["usage"]
    llm = _ChatOpenAI(model=RECORDED["model"], base_url="http://127.0.0.1:9/v1", api_key="none")
    result = llm._create_chat_result(ChatCompletion.model_validate(response) if as_object else response)

    assert len(result.generations) == 1
    generation = result.generations[0]
    message = generation.message
    assert message.content == choice["message"]["content"]
    # what the caller's message carries: langchain-core merges the generation info into the response metadata
    meta = {**(generation.generation_info or {}), **message.response_metadata}
    assert meta["finish_reason"] == choice["finish_reason"]
    assert meta["stop_reason"] == choice["stop_reason"]
    assert entries(meta["logprobs"]) == entries(choice["logprobs"])
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == usage["prompt_tokens"]
    assert message.usage_metadata["output_tokens"] == usage["completion_tokens"]


@pytest.mark.parametrize("name", list(EXCHANGES))
def test_a_recorded_answer_through_the_client(fake_small: FakeServer, name: str) -> None:
    """The whole path: the client's HTTP call, langchain-openai's parsing, the override, the Completion."""
    exchange = EXCHANGES[name]
    request_body, response = exchange["request"], exchange["response"]
    fake_small.handler = lambda body: copy.deepcopy(response)
    messages = list(request_body["messages"])
    prefix = ""
    if request_body.get("continue_final_message"):
        prefix = messages.pop()["content"]
    request = Request(
        messages=messages,
        prefix=prefix,
        max_tokens=request_body["max_tokens"],
        stop=request_body.get("stop"),
        temperature=0.0,
        top_logprobs=request_body["top_logprobs"],
    )
    client = ModelClient(endpoint(fake_small), "small")
    choice, usage = response["choices"][0], response["usage"]
    tokens = entries(choice["logprobs"])
    for done in (client.complete(request), asyncio.run(client.acomplete(request))):
        assert done.text == choice["message"]["content"]
        assert done.end == END[name]
        assert done.tokens == usage["completion_tokens"]
        assert done.prompt_tokens == usage["prompt_tokens"]
        assert done.top_logprobs == tokens[0].top
        assert done.logprobs == tokens
    sent = fake_small.chat_requests()[-1]
    assert prefix_of(sent) == prefix
    assert sent["top_logprobs"] == request_body["top_logprobs"] and sent["logprobs"] is True
