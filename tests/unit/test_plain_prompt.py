"""The ``plain`` prompt preset: steps asked for as plain sentences, selectable wherever a preset is."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

import glimp_graph
from glimp_graph import PLAIN, PRESETS, STEPS, GlimpConfig
from glimp_graph.cli import main
from glimp_graph.eval import load_records
from glimp_graph.eval.runner import check_prompts
from tests.helpers import load_bench
from tests.unit.conftest import FakeServer, ScriptedModel, ScriptStep
from tests.unit.test_graph import QUESTION, THREE, build, no_errors

Scripted = Callable[..., ScriptedModel]

PLAIN_STEPS = [
    ScriptStep(0.2, "First write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(2.0, "That is 30 + 21."),
    ScriptStep(0.2, "So the answer is \\boxed{51}."),
]


def user_messages(*servers: FakeServer) -> set[str]:
    """The user message of every request the servers received."""
    return {m["content"] for s in servers for b in s.requests for m in b["messages"] if m["role"] == "user"}


def system_messages(*servers: FakeServer) -> set[str]:
    return {m["content"] for s in servers for b in s.requests for m in b["messages"] if m["role"] == "system"}


def test_plain_is_a_preset_that_differs_from_steps_only_in_its_instruction() -> None:
    assert PRESETS["plain"] is PLAIN is glimp_graph.PLAIN
    assert list(PRESETS) == ["steps", "plain", "r1"]
    same = set(type(STEPS).model_fields) - {"name", "user"}
    assert {f: getattr(PLAIN, f) for f in same} == {f: getattr(STEPS, f) for f in same}
    text = PLAIN.user_message(QUESTION)
    assert text.endswith("\n\n" + QUESTION)
    # the steps are still separated by the delimiter the router stops at, and the answer is still boxed
    assert "two newline characters (\\n\\n)" in text and "\\boxed{}" in text
    for asked in ("plain sentences", "not number", "Step 1:", "bold", "Markdown"):
        assert asked in text
    assert text != STEPS.user_message(QUESTION)


def test_plain_is_selectable_by_name_in_the_config() -> None:
    assert GlimpConfig(prompt="plain").prompt == PLAIN


def test_a_graph_built_with_plain_sends_its_text(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    model = scripted(PLAIN_STEPS, answer="51")
    out = build(fake_small, fake_large, prompt="plain").invoke({"question": QUESTION})
    no_errors(fake_small, fake_large, model=model)
    assert [s.model for s in out["glimp_steps"]] == ["small", "large", "small"]
    # every call, probes, steps and the final answer, on both servers, carries the plain instruction
    assert user_messages(fake_small) == user_messages(fake_large) == {PLAIN.user_message(QUESTION)}
    assert system_messages(fake_small, fake_large) == {STEPS.system}


def test_plain_is_selectable_per_run_through_the_context(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(THREE, answer="51")
    graph = build(fake_small, fake_large)  # built with the default, steps
    graph.invoke({"question": QUESTION}, context={"prompt": "plain"})
    assert user_messages(fake_small, fake_large) == {PLAIN.user_message(QUESTION)}
    fake_small.reset()
    fake_large.reset()
    graph.invoke({"question": QUESTION})  # the next run is back to the graph's preset
    assert user_messages(fake_small, fake_large) == {STEPS.user_message(QUESTION)}


@pytest.mark.parametrize("command", ["ask", "eval", "calibrate", "serve-router"])
def test_the_cli_names_every_preset(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    shown = result.output.split("--prompt", 1)[1].split("[default: steps]", 1)[0]
    for name in PRESETS:
        assert name in shown


def _eval(tmp_path: Any, small: FakeServer, large: FakeServer, *extra: str) -> Any:
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"id": "p0", "question": QUESTION, "answer": "51"}) + "\n")
    return CliRunner().invoke(
        main,
        [
            "eval", "--dataset", str(data), "--strategies", "glimp,random", "--out", str(tmp_path / "runs.jsonl"),
            "--small-url", small.url + "/v1", "--large-url", large.url + "/v1", *extra,
        ],
    )  # fmt: skip


def test_glimp_eval_runs_plain_and_its_records_name_the_prompt(
    tmp_path: Any, fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    model = scripted(PLAIN_STEPS, answer="51")
    result = _eval(tmp_path, fake_small, fake_large, "--prompt", "plain")
    assert result.exit_code == 0, result.output
    no_errors(fake_small, fake_large, model=model)
    assert user_messages(fake_small, fake_large) == {PLAIN.user_message(QUESTION)}
    records = load_records(tmp_path / "runs.jsonl")
    assert [(r["job"], r["prompt"], r["correct"]) for r in records] == [
        ("glimp", "plain", True),
        ("random", "plain", True),
    ]


def test_glimp_eval_refuses_to_resume_a_file_of_another_prompt(
    tmp_path: Any, fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    scripted(PLAIN_STEPS, answer="51")
    assert _eval(tmp_path, fake_small, fake_large).exit_code == 0  # the default, steps
    fake_small.reset()
    fake_large.reset()
    result = _eval(tmp_path, fake_small, fake_large, "--prompt", "plain")
    assert result.exit_code == 2
    assert "'--out'" in result.output and "'steps' prompt" in result.output and "'plain'" in result.output
    assert "Traceback" not in result.output
    # refused before any model call: the steps records would otherwise stand in for the plain runs
    assert fake_small.requests == [] and fake_large.requests == []


def test_check_prompts_passes_records_of_the_same_prompt_or_none() -> None:
    records = [{"job": "glimp", "prompt": "plain"}, {"job": "random"}, {"job": "small-only", "prompt": "steps"}]
    check_prompts(records, {"glimp": "plain", "random": "plain"}, "runs.jsonl")  # small-only is not run
    with pytest.raises(ValueError, match=r"runs\.jsonl holds glimp records made with the 'plain' prompt"):
        check_prompts(records, {"glimp": "steps"}, "runs.jsonl")


def test_glimp_calibrate_runs_plain(
    tmp_path: Any, fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted
) -> None:
    model = scripted(PLAIN_STEPS, answer="51")
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": QUESTION, "answer": "51"}) + "\n")
    result = CliRunner().invoke(
        main,
        [
            "calibrate", "--dataset", str(data), "--limit", "1", "--prompt", "plain",
            "--small-url", fake_small.url + "/v1", "--large-url", fake_large.url + "/v1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "glimp: tau=" in result.output and "(3 steps of 1 problems)" in result.output
    no_errors(fake_small, fake_large, model=model)
    assert user_messages(fake_small) == {PLAIN.user_message(QUESTION)}


def _runs(job: str, right: Callable[[int], bool], large_steps: int, n: int = 100) -> list[dict]:
    return [
        {"job": job, "id": f"q{i}", "error": None, "correct": right(i), "steps": 4, "large_steps": large_steps}
        for i in range(n)
    ]


def test_the_paired_comparison_reads_its_verdict_from_the_records() -> None:
    check = load_bench("plain_prompt_check")
    steps = _runs("glimp@0.7994", lambda i: i % 4 == 0, 1) + _runs("random@0.75", lambda i: i % 4 == 0, 1)
    # glimp right on every even problem, random on every fourth: 25 problems only glimp got right
    better = _runs("glimp@1.5", lambda i: i % 2 == 0, 1) + _runs("random@0.75", lambda i: i % 4 == 0, 1)
    text = "\n".join(check.paired_section(better, steps, "glimp: tau=1.5 for a large-step share of 25%"))
    assert "right on 50 vs 25; only one of them right on 25 (25 glimp, 0 random)" in text
    assert "Reading: H_init carries signal under `plain`" in text
    assert "Under `steps` (at the same share) the same comparison gave 0 vs 0 (p = 1.00): a different verdict." in text
    same = _runs("glimp@1.5", lambda i: i % 4 == 0, 1) + _runs("random@0.75", lambda i: i % 4 == 1, 1)
    text = "\n".join(check.paired_section(same, steps, None))
    assert "not distinguishable from random at the same share" in text and "the same verdict" in text
    # no significant difference either way is one verdict, whichever job was right on more problems
    glimp_leans = _runs("glimp@1.5", lambda i: i % 4 == 0 or i in (2, 6), 1) + _runs(
        "random@0.75", lambda i: i % 4 == 1, 1
    )
    random_leans = _runs("glimp@0.7994", lambda i: i % 10 == 0, 1)
    random_leans += _runs("random@0.75", lambda i: i % 10 == 0 or i % 50 == 1, 1)
    text = "\n".join(check.paired_section(glimp_leans, random_leans, None))
    assert "(27 glimp, 25 random)" in text and "gave 0 vs 2 (p = 0.50): the same verdict." in text
    apart = _runs("glimp@1.5", lambda i: i % 2 == 0, 2) + _runs("random@0.75", lambda i: i % 4 == 0, 1)
    text = "\n".join(check.paired_section(apart, steps, None))
    assert "large-step shares 25% apart (50% vs 25%)" in text and "No random job ran at glimp's realised share" in text
    assert "Reading:" not in text
    assert "(not run yet)" in "\n".join(check.paired_section([], steps, None))
