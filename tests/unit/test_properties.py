"""Property-based tests (hypothesis): the estimators' bounds, the settings' validation, the input's validation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from pydantic import ValidationError

from glimp_graph import GlimpConfig, InputError
from glimp_graph.entropy import ESTIMATORS, EXACT_TAIL_TOLERANCE, exact, lower_bound, renormalized, upper_bound
from glimp_graph.errors import EstimatorError
from glimp_graph.nodes.prepare import resolve

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- (a) the estimators


@st.composite
def top_k_logprobs(draw: st.DrawFn) -> list[float]:
    """Log-probabilities of k = 1..50 tokens whose total mass is at most one (sometimes exactly one)."""
    k = draw(st.integers(min_value=1, max_value=50))
    weights = draw(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=k, max_size=k))
    mass = draw(st.one_of(st.just(1.0), st.floats(min_value=1e-3, max_value=1.0)))
    total = math.fsum(weights)
    return [math.log(w / total * mass) for w in weights]


@FAST
@given(top_k_logprobs())
def test_estimators_are_ordered_and_bounded(logprobs: list[float]) -> None:
    k = len(logprobs)
    low = lower_bound(logprobs)
    high = upper_bound(logprobs, vocab_size=k + 1000)
    renorm = renormalized(logprobs)
    assert 0.0 <= low <= high + 1e-12
    assert 0.0 <= renorm <= math.log(k) + 1e-9


@FAST
@given(top_k_logprobs())
def test_exact_only_accepts_a_complete_distribution(logprobs: list[float]) -> None:
    mass = math.fsum(math.exp(lp) for lp in logprobs)
    try:
        value = exact(logprobs)
    except EstimatorError as exc:
        assert mass < 1.0 - EXACT_TAIL_TOLERANCE + 1e-12
        assert "whole distribution" in str(exc)
    else:
        assert mass >= 1.0 - EXACT_TAIL_TOLERANCE - 1e-12
        assert value >= 0.0


# --------------------------------------------------------------------------- (b) the settings

_INT_FIELDS = ("max_step_tokens", "max_thinking_tokens", "max_steps", "final_max_tokens")
_budget = st.one_of(st.sampled_from([0, -1, 1]), st.integers(min_value=-100, max_value=20_000))
_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "tau": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10)),
        "top_k": st.one_of(st.sampled_from([0, -1, -2, 1]), st.integers(min_value=-1000, max_value=1000)),
        "estimator": st.one_of(st.sampled_from(sorted(ESTIMATORS)), st.text(max_size=12)),
        "vocab_size": st.one_of(st.none(), st.integers(min_value=-5, max_value=200_000)),
        "delimiter": st.one_of(st.just(""), st.text(max_size=6)),
        **dict.fromkeys(_INT_FIELDS, _budget),
    },
)


def _shown(value: Any, message: str) -> bool:
    return repr(value) in message or str(value) in message


@settings(max_examples=300, deadline=None)
@given(_SETTINGS)
def test_settings_build_or_name_the_bad_field_and_value(fields: dict[str, Any]) -> None:
    try:
        config = GlimpConfig(**fields)
    except ValidationError as exc:
        message = str(exc)
        assert exc.errors(), message
        for error in exc.errors():
            if error["loc"]:  # a field's own check
                name = str(error["loc"][0])
                assert name in fields, message
                assert name in message and _shown(fields[name], message), message
            else:  # a check across fields names each of them with its value
                merged = GlimpConfig.model_fields
                values = {k: fields.get(k, merged[k].default) for k in ("vocab_size", *_INT_FIELDS, "top_k")}
                across = (
                    f"max_step_tokens={values['max_step_tokens']}" in message
                    and f"max_thinking_tokens={values['max_thinking_tokens']}" in message
                ) or f"vocab_size={values['vocab_size']!r}" in message
                assert across, message
        return
    assert config.max_step_tokens <= config.max_thinking_tokens
    assert not math.isnan(config.tau)
    assert config.top_k == -1 or config.top_k >= 1
    assert config.delimiter
    assert config.estimator in ESTIMATORS
    assert min(getattr(config, f) for f in _INT_FIELDS) >= 1


# --------------------------------------------------------------------------- (c) the input

_ANY_TEXT = st.one_of(
    # hypothesis' text() never draws surrogates: mix lone ones in by hand
    st.lists(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=40).map("".join),
    st.text(alphabet=" \t\n\r\x0b\x0c\u2028\u3000\x85", max_size=20),  # whitespace only
    st.sampled_from(["", "\ud800", "a\udfffb", "ok \ud83d", "x" * 200_000, " " * 50_000 + "q", "What is 2+2?"]),
)


def _check(question: str, call: Any) -> None:
    if not question.strip():
        with pytest.raises(InputError, match="empty or whitespace"):
            call()
        return
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(InputError, match="not valid UTF-8"):
            call()
        return
    return_value = call()
    assert return_value[0] == question


@FAST
@given(_ANY_TEXT)
def test_question_is_returned_or_refused_with_the_reason(question: str) -> None:
    _check(question, lambda: resolve({"question": question}))


@FAST
@given(_ANY_TEXT)
def test_last_human_message_is_returned_or_refused_with_the_reason(question: str) -> None:
    _check(question, lambda: resolve({"messages": [HumanMessage(content=question)]}))


@pytest.mark.parametrize("value", [b"\xff\xfe", bytearray(b"q"), 42, ["q"]])
def test_a_question_that_is_not_text_names_its_type(value: Any) -> None:
    with pytest.raises(InputError, match=type(value).__name__):
        resolve({"question": value})
