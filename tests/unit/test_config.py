"""Settings validation: every bad value is rejected early, with the value in the message."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from glimp_graph import R1, STEPS, Endpoint, GlimpConfig, create_glimp_graph

GOOD_ENDPOINT = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}


@pytest.mark.parametrize(
    ("settings", "in_message"),
    [
        ({"tau": math.nan}, "nan"),
        ({"top_k": 0}, "got 0"),
        ({"top_k": -2}, "got -2"),
        ({"estimator": "shannon"}, "'shannon'"),
        ({"delimiter": ""}, "delimiter"),
        ({"estimator": "upper"}, "vocab_size=None"),
        ({"estimator": "upper", "vocab_size": 20, "top_k": 20}, "vocab_size=20"),
        ({"max_step_tokens": 100, "max_thinking_tokens": 50}, "max_step_tokens=100"),
        ({"max_step_tokens": -1}, "-1"),
        ({"max_thinking_tokens": -5}, "-5"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": -3}, "-3"),
        ({"final_max_tokens": -7}, "-7"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"prompt": "chatml"}, "'chatml'"),
    ],
)
def test_invalid_router_settings_are_rejected(settings: dict[str, Any], in_message: str) -> None:
    with pytest.raises(ValidationError) as info:
        GlimpConfig(**settings)
    assert in_message in str(info.value)


def test_max_step_tokens_over_the_budget_names_both_values() -> None:
    with pytest.raises(ValidationError, match="max_step_tokens=100 exceeds max_thinking_tokens=50"):
        GlimpConfig(max_step_tokens=100, max_thinking_tokens=50)


def test_unknown_estimator_lists_the_choices() -> None:
    with pytest.raises(ValidationError, match=r"unknown estimator 'shannon'.*renormalized"):
        GlimpConfig(estimator="shannon")


@pytest.mark.parametrize("tau", [math.inf, -math.inf, 0.0, 3.5, -1.0])
def test_tau_accepts_numbers_and_infinities(tau: float) -> None:
    assert GlimpConfig(tau=tau).tau == tau


def test_defaults_and_presets() -> None:
    config = GlimpConfig()
    assert (config.tau, config.top_k, config.estimator, config.delimiter) == (1.0, 20, "renormalized", "\n\n")
    assert config.prompt == STEPS
    assert GlimpConfig(prompt="r1").prompt == R1
    assert GlimpConfig(top_k=-1).top_k == -1
    assert GlimpConfig(estimator="upper", vocab_size=21, top_k=20).vocab_size == 21


def test_config_is_frozen() -> None:
    config = GlimpConfig()
    with pytest.raises(ValidationError):
        config.tau = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://host/v1", "", "localhost"])
def test_bad_base_url_is_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Endpoint(base_url=url, model="m")
    assert repr(url) in str(info.value)


def test_base_url_trailing_slash_is_dropped() -> None:
    assert Endpoint(base_url="http://h:1/v1/", model="m").base_url == "http://h:1/v1"


@pytest.mark.parametrize(
    ("settings", "in_message"),
    [
        ({"model": "  "}, "model"),
        ({"temperature": -0.1}, "-0.1"),
        ({"top_p": 0.0}, "top_p"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "-1"),
        ({"server": "tgi"}, "'tgi'"),
    ],
)
def test_invalid_endpoint_settings_are_rejected(settings: dict[str, Any], in_message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Endpoint(**{**GOOD_ENDPOINT, **settings})
    assert in_message in str(info.value)


def test_api_key_is_secret() -> None:
    ep = Endpoint(**GOOD_ENDPOINT, api_key="sk-secret-123")
    assert isinstance(ep.api_key, SecretStr)
    assert ep.api_key.get_secret_value() == "sk-secret-123"
    assert "sk-secret-123" not in repr(ep)
    assert "sk-secret-123" not in str(ep)
    assert "sk-secret-123" not in ep.model_dump_json()


def test_factory_validates_mappings_early() -> None:
    with pytest.raises(ValidationError, match="nan"):
        create_glimp_graph(GOOD_ENDPOINT, GOOD_ENDPOINT, config={"tau": math.nan})
    with pytest.raises(ValidationError, match="'nowhere'"):
        create_glimp_graph({"base_url": "nowhere", "model": "m"}, GOOD_ENDPOINT)
    # mappings and models are both accepted; nothing is contacted at build time
    graph = create_glimp_graph(GOOD_ENDPOINT, Endpoint(**GOOD_ENDPOINT), config=GlimpConfig(tau=0.5))
    assert graph.name == "glimp_router"


def test_factory_does_not_leak_the_api_key() -> None:
    graph = create_glimp_graph({**GOOD_ENDPOINT, "api_key": "sk-secret-123"}, GOOD_ENDPOINT)
    assert "sk-secret-123" not in repr(graph)


def test_unknown_settings_are_rejected_by_name() -> None:
    # a misspelt or misplaced setting must not be silently ignored (temperature belongs to the Endpoint)
    with pytest.raises(ValidationError) as info:
        GlimpConfig(temperature=0.0)
    assert "temperature" in str(info.value)
    with pytest.raises(ValidationError) as info:
        Endpoint(**GOOD_ENDPOINT, tau=1.0)
    assert "tau" in str(info.value)
    with pytest.raises(ValidationError) as info:
        create_glimp_graph(GOOD_ENDPOINT, GOOD_ENDPOINT, config={"taau": 1.0})
    assert "taau" in str(info.value)
