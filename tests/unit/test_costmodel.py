"""The cost model: fitting, the replay of recorded runs, projection under other profiles, and the two commands."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from glimp_graph.cli import main
from glimp_graph.eval import costmodel as cm
from glimp_graph.eval.costmodel import (
    ANSWER_PREFIX_TOKENS,
    JUDGE_HEAD_TOKENS,
    JUDGE_TAIL_TOKENS,
    CallCost,
    Profile,
    ProfilePlan,
    Sample,
    ServerCost,
)
from tests.unit.conftest import FakeServer, endpoint, prefix_of

TRUE = CallCost(overhead_s=0.020, prefill_s_per_token=0.004, decode_s_per_token=0.017)


def grid(cost: CallCost, noise: float = 0.0, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [
        Sample(n, g, cost.seconds(n, g) * (1 + rng.uniform(-noise, noise)))
        for n in (1, 64, 192, 384)
        for g in (1, 24, 96)
    ]


# --------------------------------------------------------------------------- fitting


def test_fit_recovers_known_rates_exactly_without_noise():
    fit = cm.fit_call_cost(grid(TRUE))
    assert fit.cost.overhead_s == pytest.approx(TRUE.overhead_s, abs=1e-9)
    assert fit.cost.prefill_s_per_token == pytest.approx(TRUE.prefill_s_per_token, rel=1e-9)
    assert fit.cost.decode_s_per_token == pytest.approx(TRUE.decode_s_per_token, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0) and fit.points == 12 and fit.rmse_s < 1e-9
    assert len(fit.residuals) == 12


def test_fit_recovers_rates_under_noise_and_reports_it():
    fit = cm.fit_call_cost(grid(TRUE, noise=0.03, seed=1))
    assert fit.cost.prefill_s_per_token == pytest.approx(TRUE.prefill_s_per_token, rel=0.05)
    assert fit.cost.decode_s_per_token == pytest.approx(TRUE.decode_s_per_token, rel=0.05)
    assert 0.99 < fit.r2 < 1.0 and 0 < fit.max_rel_residual < 0.5


def test_absolute_and_relative_fits_agree_on_exact_data_and_relative_refuses_zero_times():
    absolute = cm.fit_call_cost(grid(TRUE), relative=False)
    assert absolute.cost.decode_s_per_token == pytest.approx(TRUE.decode_s_per_token, rel=1e-9)
    with pytest.raises(ValueError, match="times must be > 0"):
        cm.fit_call_cost([*grid(TRUE)[:4], Sample(5, 5, 0.0)])


def test_a_relative_fit_keeps_short_calls_right_when_long_ones_are_noisy():
    # one long cell 10% slow (a busy machine): the absolute fit pays for it on the one-token calls
    samples = [Sample(s.new_prompt_tokens, s.generated_tokens, s.seconds * (1.1 if s.seconds > 2 else 1.0))
               for s in grid(TRUE)]  # fmt: skip
    short = next(s for s in samples if s.generated_tokens == 1 and s.new_prompt_tokens == 1)
    for relative, limit in ((True, 0.05), (False, None)):
        fit = cm.fit_call_cost(samples, relative=relative)
        error = abs(fit.cost.seconds(1, 1) - short.seconds) / short.seconds
        if limit is not None:
            assert error < limit
        else:
            assert error > 0.2


def test_a_negative_overhead_is_set_to_zero_and_the_rates_refitted():
    zero = CallCost(0.0, 0.004, 0.017)
    samples = [
        Sample(s.new_prompt_tokens, s.generated_tokens, s.seconds * (0.8 if s.seconds < 0.05 else 1.0))
        for s in grid(zero)
    ]  # fmt: skip  (the shortest calls measured fast: the intercept goes below 0)
    fit = cm.fit_call_cost(samples)
    assert fit.cost.overhead_s == 0.0
    assert fit.cost.decode_s_per_token == pytest.approx(0.017, rel=0.1)
    assert fit.cost.prefill_s_per_token == pytest.approx(0.004, rel=0.1)


def test_cpu_contention_is_the_busy_time_the_watched_processes_did_not_use():
    before = {"wall": 0.0, "busy": 100.0, "steal": 1.0, "cores": 2, "pids": {"7": 10.0}, "self": 0.0}
    after = {"wall": 10.0, "busy": 115.0, "steal": 1.5, "cores": 2, "pids": {"7": 22.0}, "self": 0.0}
    got = cm.cpu_contention(before, after)
    assert got == {"seconds": 10.0, "servers_cores": 1.2, "other_cores": 0.3, "steal_cores": 0.05, "cores": 2}
    assert cm.cpu_contention(before, {**after, "pids": {}}) is None  # a watched process is gone


def test_cell_medians_ignore_one_slow_call_per_cell():
    samples, cells = [], []
    for n in (1, 100):
        for g in (1, 50):
            for k in range(3):
                slow = 20.0 if k == 1 else 1.0  # one call of each cell stalled
                samples.append(Sample(n, g, TRUE.seconds(n, g) * slow))
                cells.append((n, g))
    fit = cm.fit_call_cost(cm.cell_summary(samples, cells))
    assert fit.cost.decode_s_per_token == pytest.approx(TRUE.decode_s_per_token, rel=1e-6)
    fastest = cm.fit_call_cost(cm.cell_summary(samples, cells, "min"))
    assert fastest.cost.decode_s_per_token == pytest.approx(TRUE.decode_s_per_token, rel=1e-6)
    samples[0] = Sample(1, 1, TRUE.seconds(1, 1) * 0.5)  # one call of a cell ran fast: min takes it, median not
    assert cm.cell_summary(samples, cells, "min")[0].seconds == pytest.approx(TRUE.seconds(1, 1) * 0.5)
    assert cm.cell_summary(samples, cells)[0].seconds == pytest.approx(TRUE.seconds(1, 1))
    with pytest.raises(ValueError, match="statistic must be"):
        cm.cell_summary(samples, cells, "mean")  # type: ignore[arg-type]


def test_fit_refuses_too_few_points():
    with pytest.raises(ValueError, match=r"from 3 measurement\(s\): need at least 4"):
        cm.fit_call_cost(grid(TRUE)[:3])


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([Sample(64, g, 1.0 + g) for g in (1, 2, 3, 4)], "same new-prompt length"),
        ([Sample(n, 8, 1.0 + n) for n in (1, 2, 3, 4)], "same generated length"),
        ([Sample(2 * g, g, 1.0 + g) for g in (1, 2, 3, 4)], "vary together"),
    ],
)
def test_fit_refuses_lengths_that_cannot_tell_the_rates_apart(samples, message):
    with pytest.raises(ValueError, match=message):
        cm.fit_call_cost(samples)


def test_profile_plan_rejects_a_grid_too_small_to_fit():
    with pytest.raises(ValueError, match="at least two new-prompt"):
        ProfilePlan(new_tokens=(0,), generated_tokens=(1, 8))
    with pytest.raises(ValueError, match="repeats"):
        ProfilePlan(repeats=0)


# --------------------------------------------------------------------------- profiles


def profile(small: CallCost, large: CallCost, *, name: str = "p", logprobs: CallCost | None = None) -> Profile:
    return Profile(
        name=name,
        description=name,
        source="measured",
        small=ServerCost("s", small, logprobs),
        large=ServerCost("l", large),
    )


CPU = profile(CallCost(0.010, 0.004, 0.017), CallCost(0.010, 0.011, 0.028), name="cpu")
GPU = profile(CallCost(0.001, 0.00002, 0.00225), CallCost(0.002, 0.0003, 0.0271), name="gpu")


def test_profile_round_trips_through_its_file(tmp_path):
    p = profile(TRUE, CallCost(0.03, 0.01, 0.03), logprobs=CallCost(0.05, 0.004, 0.02))
    path = p.save(tmp_path / "p.json")
    back = cm.load_profile(path)
    assert back.small == p.small and back.large == p.large and back.source == "measured"
    assert back.small.cost(logprobs=True).overhead_s == 0.05 and back.large.cost(logprobs=True) == back.large.plain


def test_load_profile_names_the_shipped_ones_for_an_unknown_name():
    shipped = cm.shipped_profiles()
    assert "cpu-epyc-qwen-coder" in shipped and any(s.startswith("h200-floor-") for s in shipped)
    with pytest.raises(ValueError, match=r"no shipped profile of that name.*cpu-epyc-qwen-coder"):
        cm.load_profile("no-such-profile")


def test_load_profile_rejects_a_file_that_is_not_a_profile(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": cm.FORMAT, "source": "measured", "servers": {"small": {}, "large": {}}}))
    with pytest.raises(ValueError, match=r"servers\.small\.plain\.overhead_s must be a finite number"):
        cm.load_profile(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        cm.load_profile(bad)
    bad.write_text("{}")
    with pytest.raises(ValueError, match="is not a glimp cost profile"):
        cm.load_profile(bad)


def test_shipped_profiles_load_and_the_gpu_ones_say_they_are_a_floor():
    for name in cm.shipped_profiles():
        p = cm.load_profile(name)
        for role in ("small", "large"):
            cost = p.server(role).plain
            assert cost.decode_s_per_token > 0 and cost.prefill_s_per_token > 0 and cost.overhead_s >= 0
        assert p.large.plain.decode_s_per_token > p.small.plain.decode_s_per_token
        if name.startswith("h200-floor-"):
            assert p.source == "kernel-floor" and "not vLLM measurements" in p.note


def test_kernel_floor_profile_prices_a_one_token_call_as_the_benchmarks_prefill():
    small = {"model": "a", "decode_ms_per_token": 2.0, "prefill64_graph_ms": 5.0, "prefill256_graph_ms": 8.0,
             "prefill1024_graph_ms": 20.0}  # fmt: skip
    large = {"model": "b", "decode_ms_per_token": 20.0, "prefill64_graph_ms": 40.0, "prefill256_graph_ms": 80.0}
    p = cm.kernel_floor_profile(small, large, name="f", description="d", device="X1")
    assert p.small.plain.decode_s_per_token == pytest.approx(0.002)
    assert p.small.plain.seconds(256, 1) * 1000 == pytest.approx(8.0, abs=0.3)
    # two chunks: F(N) = 26.67 ms + 0.2083 ms x N exactly; the first token is F(N), so overhead = 26.67 - 20
    assert p.large.plain.seconds(256, 1) * 1000 == pytest.approx(80.0)
    assert p.large.plain.overhead_s * 1000 == pytest.approx(40 - 64 * 40 / 192 - 20)
    assert p.note.startswith("X1: a floor from a kernel benchmark")
    slow = {**large, "decode_ms_per_token": 30.0}  # an intercept below one decode step: no negative overhead
    assert cm.kernel_floor_profile(small, slow, name="f", description="", device="").large.plain.overhead_s == 0.0
    with pytest.raises(ValueError, match="two prefill"):
        cm.kernel_floor_profile({"model": "a", "decode_ms_per_token": 2.0}, large, name="f", description="", device="")


# --------------------------------------------------------------------------- replaying a recorded run


def record(job: str, strategy: str, scorer: str, steps: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "job": job,
        "strategy": strategy,
        "scorer": scorer,
        "id": "p0",
        "latency_s": 1.0,
        "error": None,
        "final_model": "small" if strategy == "small-only" else "large",
        "final_tokens": 4,
        "probe_seconds": 0.0,
        "final_seconds": 0.0,
        "small_tokens": sum(n for m, n in steps if m == "small"),
        "step_records": [{"model": m, "tokens": n, "seconds": 0.0, "probe_seconds": 0.0} for m, n in steps],
    }
    rec.update(extra)
    return rec


def test_glimp_calls_read_only_what_each_server_has_not_cached():
    rec = record("glimp@1", "glimp", "glimp", [("small", 10), ("large", 20), ("small", 5)])
    calls = [(c.role, c.kind, c.new_prompt_tokens, c.generated_tokens) for c in cm.trace_calls(rec, prompt_tokens=50)]
    assert calls == [
        ("small", "probe", 50, 1),  # the question
        ("small", "step", 1, 9),  # continues from the probed token
        ("small", "probe", 1, 1),  # only the delimiter is new
        ("large", "step", 50 + 11, 20),  # the question and the small model's step
        ("small", "probe", 21, 1),  # the large model's step and the delimiter
        ("small", "step", 1, 4),
        ("large", "final", 1 + 5 + ANSWER_PREFIX_TOKENS, 4),  # a delimiter, the last small step, the answer prefix
    ]


def test_standalone_runs_read_the_question_once_then_one_token_per_step():
    rec = record("large-only", "large-only", "fixed", [("large", 10), ("large", 20)])
    calls = [(c.role, c.kind, c.new_prompt_tokens, c.generated_tokens) for c in cm.trace_calls(rec, prompt_tokens=50)]
    assert calls == [("large", "step", 50, 10), ("large", "step", 1, 20), ("large", "final", ANSWER_PREFIX_TOKENS, 4)]
    small = record("small-only", "small-only", "fixed", [("small", 10)])
    assert [c.role for c in cm.trace_calls(small)] == ["small", "small"]  # small-only answers with the small model


def test_a_four_token_glimpse_is_reused_by_the_small_step():
    rec = record("glimp-4@1", "glimp-4", "glimp", [("small", 10), ("small", 3)])
    calls = [(c.kind, c.new_prompt_tokens, c.generated_tokens) for c in cm.trace_calls(rec, prompt_tokens=0)]
    assert calls == [("probe", 1, 4), ("step", 1, 6), ("probe", 1, 3), ("final", 10 + 1 + 3 + ANSWER_PREFIX_TOKENS, 4)]


def test_drafting_strategies_draft_every_step_and_the_large_model_rewrites_rejected_ones():
    rec = record("step-entropy@1", "step-entropy", "step-entropy", [("small", 10), ("large", 20)], small_tokens=10 + 7)
    calls = [
        (c.role, c.kind, c.new_prompt_tokens, c.generated_tokens, c.logprobs)
        for c in cm.trace_calls(rec, prompt_tokens=50)
    ]
    assert calls == [
        ("small", "draft", 50, 10, True),  # accepted: the draft is the step
        ("small", "draft", 1, 7, True),  # rejected: its 7 tokens are the rest of small_tokens
        ("large", "step", 50 + 11, 20, False),
        ("large", "final", ANSWER_PREFIX_TOKENS, 4, False),
    ]


def test_specreason_judges_in_a_conversation_of_its_own():
    rec = record(
        "specreason@3", "specreason", "specreason", [("small", 10), ("small", 5), ("large", 8)], small_tokens=18
    )
    p0 = cm.PROMPT_TOKENS + 20  # a question 20 tokens longer than the default's
    calls = [(c.role, c.kind, c.new_prompt_tokens, c.generated_tokens) for c in cm.trace_calls(rec, prompt_tokens=p0)]
    question = cm.QUESTION_TOKENS + 20
    assert calls == [
        ("small", "draft", p0, 10),
        ("large", "judge", JUDGE_HEAD_TOKENS + question + 10 + JUDGE_TAIL_TOKENS, 1),  # its header, the question
        ("small", "draft", 1, 5),
        ("large", "judge", 11 + 5 + JUDGE_TAIL_TOKENS, 1),  # the accepted step, then the new draft
        ("small", "draft", 1, 3),
        ("large", "judge", 6 + 3 + JUDGE_TAIL_TOKENS, 1),
        ("large", "step", p0 + 17, 8),  # the main conversation: the whole prompt and both small steps
        ("large", "final", ANSWER_PREFIX_TOKENS, 4),
    ]


def test_the_initial_prompt_is_what_the_recorded_prompt_tokens_leave_over():
    rec = record("glimp@1", "glimp", "glimp", [("small", 10), ("large", 20), ("small", 5)])
    calls = cm.trace_calls(rec, prompt_tokens=0)
    for role in ("small", "large"):  # what a server would report: each call's prompt is P0 + its position
        rec[f"{role}_prompt_tokens"] = sum(117 + c.position for c in calls if c.role == role)
    assert cm.initial_prompt_tokens(rec) == 117
    assert cm.trace_calls(rec)[0].new_prompt_tokens == 117  # the default reads it from the record
    del rec["small_prompt_tokens"], rec["large_prompt_tokens"]
    assert cm.initial_prompt_tokens(rec) is None
    assert cm.trace_calls(rec)[0].new_prompt_tokens == cm.PROMPT_TOKENS


def test_llama_cpp_restores_a_prompt_an_earlier_job_on_the_problem_left_when_its_context_was_short():
    p0 = cm.PROMPT_TOKENS
    short = record("large-only", "large-only", "fixed", [("large", 20)] * 3)  # leaves ~p0 + 62 tokens
    later = record("random@0.5", "random", "random", [("small", 10), ("large", 10)])
    long = record("large-only", "large-only", "fixed", [("large", 200)] * 3, id="p1")  # leaves > 4 x p0
    after_long = record("random@0.5", "random", "random", [("large", 10)], id="p1")
    other = record("large-only", "large-only", "fixed", [("large", 10)], id="p2")
    restored = cm.restored_prompts([short, later, long, after_long, other])
    assert restored == [frozenset(), frozenset({"large"}), frozenset(), frozenset(), frozenset()]
    calls = cm.trace_calls(later, restored=restored[1])
    assert (calls[0].role, calls[0].new_prompt_tokens) == ("small", p0)  # the small server never saw it
    assert (calls[1].role, calls[1].new_prompt_tokens) == ("large", 11)  # only the small step: the prompt was held
    both = [short, later]
    run = {c.job: c for c in cm.validate(both, CPU)}["random@0.5"].predicted_total_s
    held = {c.job: c for c in cm.validate(both, CPU, prompt_cache="llama.cpp")}["random@0.5"].predicted_total_s
    assert run - held == pytest.approx(CPU.large.plain.prefill_s_per_token * p0)
    with pytest.raises(ValueError, match="prompt_cache must be"):
        cm.validate(both, CPU, prompt_cache="vllm")  # type: ignore[arg-type]


def test_a_record_without_steps_or_with_an_unknown_scorer_is_refused():
    with pytest.raises(ValueError, match="keeps no step_records"):
        cm.trace_calls({"job": "j", "id": "p"})
    with pytest.raises(ValueError, match="unknown scorer 'oracle'"):
        cm.trace_calls(record("j", "x", "oracle", [("small", 1)]))


def test_prediction_adds_up_the_calls_with_the_log_probability_rates_for_probes():
    p = profile(CallCost(0.01, 0.001, 0.01), CallCost(0.02, 0.002, 0.03), logprobs=CallCost(0.1, 0.001, 0.01))
    rec = record("glimp@1", "glimp", "glimp", [("small", 10)])
    got = cm.predict_record(rec, p, prompt_tokens=0)
    probe = 0.1 + 0.001 * 1 + 0.01 * 1
    step = 0.01 + 0.001 * 1 + 0.01 * 9
    final = 0.02 + 0.002 * (10 + ANSWER_PREFIX_TOKENS) + 0.03 * 4  # the large server reads the whole trace
    assert got.probes == pytest.approx(probe) and got.steps == pytest.approx(step) and got.final == pytest.approx(final)
    assert got.seconds == pytest.approx(probe + step + final)
    assert cm.predict_record(rec, p, prompt_tokens=0, call_overhead_s=0.5).seconds == pytest.approx(got.seconds + 1.5)


# --------------------------------------------------------------------------- projection


def switching_results() -> list[dict[str, Any]]:
    """Per problem: large-only, and a routed run with half its steps small, switching writer at every step."""
    out = []
    for i in range(5):
        large = record("large-only", "large-only", "fixed", [("large", 60)] * 6, id=f"p{i}", latency_s=10.0)
        routed = [("small", 60), ("large", 60)] * 3
        glimp = record("glimp@1", "glimp", "glimp", routed, id=f"p{i}", latency_s=9.0)
        out += [glimp, large]
    return out


def test_the_projected_ratio_flips_between_a_cpu_and_a_gpu_profile():
    results = switching_results()
    on_cpu = {r.job: r for r in cm.project(results, CPU)}
    on_gpu = {r.job: r for r in cm.project(results, GPU)}
    # on the CPU each switch makes the other server read a 60-token step at a slow prefill: routing costs more
    assert on_cpu["glimp@1"].ratio_median > 1.0 and on_cpu["glimp@1"].ratio_total > 1.0
    # on the GPU the small model is 12x cheaper per token and reading a step costs a few ms: routing pays
    assert on_gpu["glimp@1"].ratio_median < 0.7
    assert on_cpu["large-only"].ratio_median == pytest.approx(1.0)
    for rows in (on_cpu, on_gpu):
        g = rows["glimp@1"]
        assert g.ideal_ratio_median < g.ratio_median  # the ideal mix pays no probe and no switch
        assert rows["large-only"].ideal_ratio_total == pytest.approx(1.0)
        assert g.recorded_ratio_median == pytest.approx(0.9) and g.n == 5


def test_projection_needs_large_only_runs():
    results = [r for r in switching_results() if r["job"] != "large-only"]
    with pytest.raises(ValueError, match="no large-only runs"):
        cm.project(results, CPU)


def test_validation_compares_medians_and_totals_per_job():
    results = switching_results()
    checks = {c.job: c for c in cm.validate(results, CPU, prompt_tokens=60)}
    large = checks["large-only"]
    expected = cm.predict_record(results[1], CPU, prompt_tokens=60).seconds
    assert large.predicted_median_s == pytest.approx(expected) and large.measured_total_s == pytest.approx(50.0)
    assert large.total_error == pytest.approx(5 * expected / 50.0 - 1)
    table = cm.validation_table(list(checks.values()))
    assert "| large-only | 5 | 10.00 |" in table


# --------------------------------------------------------------------------- the profiling run (fake server)


def counting_server(fake: FakeServer) -> FakeServer:
    """A fake server that counts one prompt token per character of the prefix and generates max_tokens."""

    def handler(body: dict[str, Any]) -> Any:
        prefix = prefix_of(body)
        n = body.get("max_completion_tokens") or body.get("max_tokens") or 1
        top = [("1", -0.1)] if body.get("logprobs") else None
        return fake.chat("x", body, completion_tokens=n, prompt_tokens=20 + len(prefix), top_logprobs=top)

    fake.handler = handler
    return fake


def test_measure_server_warms_the_base_then_sends_fresh_new_text(fake_small):
    plan = ProfilePlan(new_tokens=(0, 40), generated_tokens=(1, 8), repeats=2, base_tokens=100, top_k=5,
                       logprob_new_tokens=(0, 40), logprob_generated_tokens=(1, 8))  # fmt: skip
    got = cm.asyncio.run(cm.measure_server(endpoint(counting_server(fake_small)), "small", plan))
    assert len(got["plain"]) == 8 and len(got["logprobs"]) == 8
    for row in got["plain"] + got["logprobs"]:
        assert row["generated_tokens"] == row["target_generated"]
        if row["target_new"] == 0:
            assert row["new_prompt_tokens"] == 1  # a fully cached prompt still reads its last token
        else:
            assert abs(row["new_prompt_tokens"] - row["target_new"]) <= 8
    bodies = fake_small.chat_requests()
    measured = [b for b in bodies if (b.get("max_completion_tokens") or b.get("max_tokens")) == 8]
    tails = [prefix_of(b) for b in measured if len(prefix_of(b)) > 110]
    assert len(tails) == len(set(tails)) == 4  # no two measurements share their new text
    assert all(b.get("top_logprobs") == 5 for b in bodies if b.get("logprobs"))
    assert sum(1 for b in bodies if b.get("logprobs")) == 8


def test_a_contended_call_is_measured_again_and_left_out_of_the_fit(fake_small, monkeypatch):
    plan = ProfilePlan(new_tokens=(0, 40), generated_tokens=(1, 8), repeats=1, base_tokens=60, top_k=0, retries=2)
    busy = iter([3.0, 3.0])  # the first two measured calls saw other work on 1.5 cores; then none

    def contention(before, after):
        return {"seconds": 1.0, "servers_cores": 1.0, "other_cores": next(busy, 0.0), "steal_cores": 0.0, "cores": 2}

    monkeypatch.setattr(cm, "cpu_contention", contention)
    rows = cm.asyncio.run(
        cm.measure_server(endpoint(counting_server(fake_small)), "small", plan, watch_pids=[os.getpid()])
    )["plain"]
    assert len(rows) == 4 + 2 and [r["contended"] for r in rows[:3]] == [True, True, False]
    assert rows[0]["target_new"] == rows[1]["target_new"] == rows[2]["target_new"]  # the same cell, again
    slow = [dict(r, seconds=100.0) if r["contended"] else r for r in rows]
    assert cm.fit_samples(slow).cost == cm.fit_samples([r for r in rows if not r["contended"]]).cost


def test_measure_profile_fits_both_servers_and_keeps_the_samples(tmp_path, fake_small, fake_large):
    plan = ProfilePlan(new_tokens=(0, 40), generated_tokens=(1, 8), repeats=1, base_tokens=60, top_k=0)
    small, large = endpoint(counting_server(fake_small)), endpoint(counting_server(fake_large))
    p = cm.run_measure_profile(small, large, plan=plan, name="fake", provenance={"cpu": {"model": "x"}})
    assert p.source == "measured" and p.name == "fake" and p.small.logprobs is None
    assert p.extra["provenance"] == {"cpu": {"model": "x"}} and len(p.extra["samples"]["large"]["plain"]) == 4
    assert set(p.extra["fits"]["small"]) == {"plain"}
    assert cm.load_profile(p.save(tmp_path / "fake.json")).name == "fake"


# --------------------------------------------------------------------------- the commands


def write_results(path: Path, results: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in results))
    return path


def test_glimp_project_prints_the_projection_with_the_floor_note(tmp_path):
    results = write_results(tmp_path / "runs.jsonl", switching_results())
    out = CliRunner().invoke(main, ["project", "--results", str(results), "--profile", "h200-floor-r1-32b-qwen3-4b"])
    assert out.exit_code == 0, out.output
    assert "NOTE: NVIDIA H200: a floor from a kernel benchmark" in out.output and "not vLLM measurements" in out.output
    assert "| glimp@1 | 5 |" in out.output and "| large-only | 5 |" in out.output and "ideal mix" in out.output


def test_glimp_project_reads_a_profile_file_and_validates(tmp_path):
    results = write_results(tmp_path / "runs.jsonl", switching_results())
    path = CPU.save(tmp_path / "cpu.json")
    out = CliRunner().invoke(main, ["project", "--results", str(results), "--profile", str(path), "--validate"])
    assert out.exit_code == 0, out.output
    assert "Predicted against measured" in out.output and "| glimp@1 | 5 | 9.00 |" in out.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--results", "missing.jsonl", "--profile", "cpu-epyc-qwen-coder"], "does not exist"),
        (["--results", "{results}", "--profile", "h100-nonsense"], "no shipped profile of that name; give a profile"),
        (["--results", "{bad}", "--profile", "cpu-epyc-qwen-coder"], "is not a JSONL file of evaluation records"),
        (["--results", "{nolarge}", "--profile", "cpu-epyc-qwen-coder"], "no large-only runs"),
    ],
)
def test_glimp_project_errors_are_one_clear_line(tmp_path, args, message):
    files = {
        "{results}": write_results(tmp_path / "runs.jsonl", switching_results()),
        "{bad}": tmp_path / "bad.jsonl",
        "{nolarge}": write_results(tmp_path / "nolarge.jsonl", switching_results()[:1]),
    }
    files["{bad}"].write_text("not json\n")
    argv = ["project", *[str(files.get(a, a)) for a in args]]
    out = CliRunner().invoke(main, argv)
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output


def test_glimp_profile_rejects_a_bad_grid_before_starting_anything():
    out = CliRunner().invoke(main, ["profile", "--new-tokens", "0,abc", "--small-url", "http://x:1/v1",
                                    "--large-url", "http://x:2/v1"])  # fmt: skip
    assert out.exit_code == 2 and "expected comma-separated token counts" in out.output
    out = CliRunner().invoke(main, ["profile", "--new-tokens", "64", "--small-url", "http://x:1/v1",
                                    "--large-url", "http://x:2/v1"])  # fmt: skip
    assert out.exit_code == 2 and "at least two new-prompt" in out.output


def test_glimp_profile_writes_a_profile_from_two_endpoints(tmp_path, fake_small, fake_large):
    counting_server(fake_small), counting_server(fake_large)
    target = tmp_path / "mine.json"
    argv = ["profile", "--small-url", fake_small.url + "/v1", "--large-url", fake_large.url + "/v1",
            "--small-model", "fake", "--large-model", "fake", "--new-tokens", "0,40", "--generated-tokens", "1,8",
            "--repeats", "1", "--base-tokens", "60", "--top-k", "3", "--name", "mine",
            "--out", str(target)]  # fmt: skip
    out = CliRunner().invoke(main, argv)
    assert out.exit_code == 0, out.output
    saved = cm.load_profile(target)
    assert saved.name == "mine" and saved.small.logprobs is not None
    assert saved.extra["provenance"]["servers"]["small"]["base_url"] == fake_small.url + "/v1"
    assert "| small | fake | plain |" in out.output and f"wrote {target}" in out.output
    assert math.isfinite(saved.large.plain.decode_s_per_token)
