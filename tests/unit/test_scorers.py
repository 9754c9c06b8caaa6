"""Step scorers through the same graph: drafts, judges, random and fixed scores, against fake servers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from glimp_graph import GlimpConfig, create_glimp_graph
from glimp_graph.entropy import renormalized
from glimp_graph.scorers import SCORERS, Random, TokenEntropy, expected_digit
from tests.unit.conftest import (
    DELIMITER,
    FakeServer,
    chat_response,
    logprobs_for_entropy,
    max_tokens_of,
    prefix_of,
    token_entry,
)
from tests.unit.conftest import endpoint as endpoint_of

QUESTION = "What is 2 + 3?"
# per step: the small model's draft tokens, each with (chosen logprob, top list)
DRAFTS = [
    [
        ("Two", [("Two", math.log(0.9)), ("2", math.log(0.1))]),
        (" plus", [(" plus", math.log(0.8)), (" +", math.log(0.2))]),
    ],
    [("Hmm", [("Hmm", math.log(0.4)), ("So", math.log(0.3)), ("Wait", math.log(0.3))])],
    [("So", [("So", math.log(0.95)), ("Thus", math.log(0.05))]), (" \\boxed{5}", [(" \\boxed{5}", math.log(0.9))])],
]


def _index(body: dict[str, Any]) -> int:
    return prefix_of(body).count(DELIMITER)


def _draft_response(i: int, body: dict[str, Any]) -> dict[str, Any]:
    tokens = DRAFTS[i]
    text = "".join(t for t, _ in tokens)
    response = chat_response(text, stop_reason=DELIMITER, completion_tokens=len(tokens))
    if body.get("logprobs"):
        response["choices"][0]["logprobs"] = {
            "content": [
                {**token_entry(t, dict(top)[t]), "top_logprobs": [token_entry(a, lp) for a, lp in top]}
                for t, top in tokens
            ]
        }
    return response


def _install(small: FakeServer, large: FakeServer, verdicts: list[list[tuple[str, float]]] | None = None) -> None:
    def small_handler(body: dict[str, Any]) -> dict[str, Any]:
        i = _index(body)
        if not body.get("stop"):
            return chat_response(" 5", completion_tokens=1)  # final answer (small-only)
        return _draft_response(i, body)

    def large_handler(body: dict[str, Any]) -> dict[str, Any]:
        if body["messages"][-1]["role"] == "user" and "Rate it" in body["messages"][-1]["content"]:
            step = body["messages"][-1]["content"]
            i = next(k for k, d in enumerate(DRAFTS) if "New step:\n" + "".join(t for t, _ in d) in step)
            top = (verdicts or [[("9", 0.0)]] * 3)[i]
            return chat_response(top[0][0], finish_reason="length", top_logprobs=top)
        if not body.get("stop"):
            return chat_response(" 5", completion_tokens=2)
        i = _index(body)
        return chat_response(f"LARGE{i}" if i < 2 else "So \\boxed{5}", stop_reason=DELIMITER, completion_tokens=3)

    small.handler, large.handler = small_handler, large_handler


def _step_entropy(i: int) -> float:
    return sum(renormalized([lp for _, lp in top]) for _, top in DRAFTS[i]) / len(DRAFTS[i])


def _run(small: FakeServer, large: FakeServer, **config: Any) -> dict[str, Any]:
    return create_glimp_graph(endpoint_of(small), endpoint_of(large), config=config).invoke({"question": QUESTION})


def test_step_entropy_accepts_confident_drafts_and_has_the_large_model_rewrite_the_rest(fake_small, fake_large):
    _install(fake_small, fake_large)
    h = [_step_entropy(i) for i in range(3)]
    tau = (h[0] + h[1]) / 2
    assert h[0] < tau < h[1] and h[2] < tau
    out = _run(fake_small, fake_large, scorer="step-entropy", tau=tau)
    steps = out["glimp_steps"]
    assert [s.model for s in steps] == ["small", "large", "small"]
    assert [s.score for s in steps] == pytest.approx(h)
    assert steps[0].text == "Two plus" and steps[1].text == "LARGE1"  # the accepted draft is the step verbatim
    assert all(s.h_init is None and s.scorer == "step-entropy" for s in steps)
    # one draft request per step on the small server, no continuation requests (the draft is the step)
    drafts = [b for b in fake_small.chat_requests() if b.get("stop")]
    assert len(drafts) == 3 and all(b.get("logprobs") for b in drafts)
    stats = out["glimp_stats"]
    assert stats.scorer == "step-entropy" and stats.probes == 3
    assert stats.small_tokens == 2 + 1 + 2  # every draft token, the rejected one included
    assert stats.large_tokens == 3 + 2


def test_step_perplexity_scores_drafts_by_perplexity(fake_small, fake_large):
    _install(fake_small, fake_large)
    out = _run(fake_small, fake_large, scorer="step-perplexity", tau=math.inf)
    want = [math.exp(-sum(dict(top)[t] for t, top in d) / len(d)) for d in DRAFTS]
    assert [s.score for s in out["glimp_steps"]] == pytest.approx(want)


def test_specreason_routes_on_the_large_models_verdict(fake_small, fake_large):
    verdicts = [
        [("9", math.log(0.9)), ("8", math.log(0.1))],
        [("2", math.log(0.7)), ("3", math.log(0.3))],
        [("9", 0.0)],
    ]
    _install(fake_small, fake_large, verdicts)
    out = _run(fake_small, fake_large, scorer="specreason", tau=3.0)
    steps = out["glimp_steps"]
    assert [s.model for s in steps] == ["small", "large", "small"]
    assert steps[0].score == pytest.approx(9 - (0.9 * 9 + 0.1 * 8))
    assert steps[1].score == pytest.approx(9 - (0.7 * 2 + 0.3 * 3))
    judge = [b for b in fake_large.chat_requests() if "Rate it" in b["messages"][-1]["content"]]
    assert len(judge) == 3 and all(b.get("top_logprobs") and b["max_completion_tokens"] == 1 for b in judge)
    assert out["glimp_stats"].large_tokens == 3 * 1 + 3 + 2  # verdicts, one rewritten step, the final answer


def test_expected_digit_ignores_non_digit_tokens():
    assert expected_digit([("7", math.log(0.5)), ("x", math.log(0.5))]) == pytest.approx(7.0)
    assert expected_digit([("ok", 0.0)]) == 0.0


def test_random_is_reproducible_and_calls_no_model_to_score(fake_small, fake_large):
    _install(fake_small, fake_large)
    first = _run(fake_small, fake_large, scorer=Random(seed=3), tau=0.5)
    second = _run(fake_small, fake_large, scorer=Random(seed=3), tau=0.5)
    assert [s.score for s in first["glimp_steps"]] == [s.score for s in second["glimp_steps"]]
    assert all(0.0 <= s.score < 1.0 for s in first["glimp_steps"])
    assert all((s.score <= 0.5) == (s.model == "small") for s in first["glimp_steps"])
    assert first["glimp_stats"].probes == 0
    assert not any(b.get("logprobs") for b in fake_small.chat_requests())


def test_fixed_scorer_gives_small_only_with_the_small_model_writing_the_answer(fake_small, fake_large):
    _install(fake_small, fake_large)
    out = _run(fake_small, fake_large, scorer="fixed", tau=math.inf, final_model="small")
    assert {s.model for s in out["glimp_steps"]} == {"small"}
    assert fake_large.chat_requests() == []  # the large model is never called
    assert out["glimp_answer"] == "5" and out["glimp_stats"].final_model == "small"
    assert out["glimp_stats"].probes == 0


def test_fixed_scorer_gives_large_only_without_probes(fake_small, fake_large):
    _install(fake_small, fake_large)
    out = _run(fake_small, fake_large, scorer="fixed", tau=-math.inf)
    assert {s.model for s in out["glimp_steps"]} == {"large"}
    assert fake_small.chat_requests() == []


def test_unknown_scorer_is_rejected_by_name():
    with pytest.raises(ValueError, match="'entropy-of-vibes'"):
        GlimpConfig(scorer="entropy-of-vibes")
    assert {"glimp", "step-entropy", "step-perplexity", "specreason", "random", "fixed"} <= set(SCORERS)


# --------------------------------------------------------------------------- a longer glimpse

# per step, the glimpsed tokens with the entropy of each one's distribution
GLIMPSES = [
    [("1", 0.05), (".", 0.01), (" Add", 1.5)],  # a list number says nothing; the third token does: large
    [("So", 0.2), (" the", 0.1), (" sum", 0.3)],  # routine: small continues after the three tokens
    [("\\boxed{5}", 0.1), (".", 0.05), ("\n\n", 2.0)],  # the delimiter inside the glimpse ends the step
]


def _glimpse_response(tokens: list[tuple[str, float]], *, eos: bool = False) -> dict[str, Any]:
    text = "".join(t for t, _ in tokens)
    response = chat_response(text, finish_reason="stop" if eos else "length", completion_tokens=len(tokens))
    content = []
    for t, h in tokens:
        top = logprobs_for_entropy(h, t)
        content.append({**token_entry(t, top[0][1]), "top_logprobs": [token_entry(a, lp) for a, lp in top]})
    response["choices"][0]["logprobs"] = {"content": content}
    return response


def test_token_entropy_rejects_a_glimpse_below_one_token():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
            TokenEntropy(tokens=bad)  # type: ignore[arg-type]
    assert repr(TokenEntropy(tokens=3)) == "TokenEntropy(tokens=3)"


def test_longer_glimpse_scores_the_most_uncertain_token_and_reuses_every_glimpsed_token(fake_small, fake_large):
    small_steps = {1: " is 5."}

    def small_handler(body: dict[str, Any]) -> dict[str, Any]:
        prefix = prefix_of(body)
        i = prefix.count(DELIMITER)
        if body.get("logprobs"):
            assert body["temperature"] == 0 and max_tokens_of(body) == 3
            return _glimpse_response(GLIMPSES[i])
        assert prefix.endswith("So the sum"), prefix  # the continuation starts after the three glimpsed tokens
        assert max_tokens_of(body) == 64 - 3
        return chat_response(small_steps[i], stop_reason=DELIMITER, completion_tokens=4)

    def large_handler(body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("stop"):
            return chat_response(" 5", completion_tokens=1)
        return chat_response("1. Add 2 and 3.", stop_reason=DELIMITER, completion_tokens=6)

    fake_small.handler, fake_large.handler = small_handler, large_handler
    out = _run(fake_small, fake_large, scorer=TokenEntropy(tokens=3), tau=1.0, max_step_tokens=64)
    steps = out["glimp_steps"]
    assert [s.model for s in steps] == ["large", "small", "small"]
    assert [s.text for s in steps] == ["1. Add 2 and 3.", "So the sum is 5.", "\\boxed{5}."]
    assert steps[0].score == pytest.approx(1.5, abs=1e-6)  # the max over the glimpse, not the first token's
    assert steps[0].h_init == pytest.approx(0.05, abs=1e-6)
    assert steps[1].tokens == 3 + 4 and steps[2].tokens == 3
    assert steps[2].end == "delimiter"
    assert out["glimp_stats"].stop_reason == "answer_marker"
    # the delimiter token's entropy (2.0) is about what follows the step: the score stops before it
    assert steps[2].score == pytest.approx(0.1, abs=1e-6)


def test_longer_glimpse_that_meets_end_of_sequence_keeps_its_text(fake_small, fake_large):
    def small_handler(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("logprobs"):
            return _glimpse_response([("Done", 0.1), (".", 0.05)], eos=True)
        raise AssertionError("no continuation after end of sequence")

    fake_small.handler = small_handler
    fake_large.handler = lambda body: chat_response(" 5", completion_tokens=1)
    out = _run(fake_small, fake_large, scorer=TokenEntropy(tokens=4), tau=1.0)
    (step,) = out["glimp_steps"]
    assert (step.model, step.text, step.end, step.tokens) == ("small", "Done.", "eos", 2)
    assert out["glimp_stats"].stop_reason == "end_of_sequence"
