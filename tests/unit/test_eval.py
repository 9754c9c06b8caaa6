"""Evaluation harness: data, grading, calibration maths, the resumable runner and the summary."""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import os
import threading
from typing import Any

import pytest

from glimp_graph.eval import (
    STRATEGIES,
    Job,
    Problem,
    grade,
    load_problems,
    load_records,
    markdown_table,
    paired,
    quantile,
    routing_profile,
    run_eval,
    sign_test,
    summarize,
)
from glimp_graph.eval.strategies import resolve_scorer
from tests.unit.conftest import FakeServer, is_probe, logprobs_for_entropy
from tests.unit.conftest import endpoint as endpoint_of


def _write(tmp_path, rows: list[Any]) -> Any:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_problems_detects_answer_kinds_and_slices(tmp_path):
    path = _write(
        tmp_path,
        [
            {"id": "a", "question": "q1", "answer": "1,234", "answer_number": "1234", "source": "gsm8k/test"},
            {"id": "b", "question": "q2", "answer": "\\frac{1}{2}", "source": "math500"},
            {"question": "q3", "answer": 7},
        ],
    )
    problems = load_problems(path)
    assert [(p.id, p.kind, p.answer) for p in problems] == [
        ("a", "integer", "1234"),
        ("b", "latex", "\\frac{1}{2}"),
        ("p-3", "integer", "7"),
    ]
    assert [p.id for p in load_problems(path, start=1, limit=1)] == ["b"]


def test_load_problems_names_the_bad_line(tmp_path):
    path = _write(tmp_path, [{"question": "ok", "answer": 1}, "{not json", {"answer": 2}])
    with pytest.raises(ValueError, match=r"p\.jsonl:2"):
        load_problems(path)
    path = _write(tmp_path, [{"question": "ok", "answer": 1}, {"answer": 2}])
    with pytest.raises(ValueError, match=r"p\.jsonl:2: each line needs"):
        load_problems(path)


@pytest.mark.parametrize(
    ("text", "gold", "kind", "ok"),
    [
        ("so the total is \\boxed{18}", "18", "integer", True),
        ("The answer is $1,234.", "1234", "integer", True),
        ("Final answer: 17 apples", "18", "integer", False),
        ("\\boxed{0.5}", "\\frac{1}{2}", "latex", True),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", "latex", True),
        ("\\boxed{x+1}", "x+2", "latex", False),
        ("no answer here", "\\pi", "latex", False),
    ],
)
def test_grade_integer_and_latex(text, gold, kind, ok):
    assert grade(Problem(id="x", question="?", answer=gold, kind=kind), text)[1] is ok


def test_quantile_interpolates():
    assert quantile([0.0, 1.0, 2.0, 3.0], 0.5) == pytest.approx(1.5)
    assert quantile([5.0], 0.9) == 5.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_every_strategy_maps_to_a_valid_config():
    from glimp_graph import GlimpConfig

    for strategy in STRATEGIES.values():
        GlimpConfig(**strategy.config(None))
    assert STRATEGIES["large-only"].config(None)["tau"] == -math.inf
    assert STRATEGIES["small-only"].config(None)["final_model"] == "small"
    assert STRATEGIES["glimp-4"].config(None)["scorer"].tokens == 4
    assert resolve_scorer("glimp-4").tokens == 4
    assert resolve_scorer("glimp") == "glimp"
    assert resolve_scorer("step-entropy") == "step-entropy"


def _answering(server: FakeServer, role: str) -> None:
    def handler(body: dict[str, Any]) -> dict[str, Any]:
        question = body["messages"][-2 if body["messages"][-1]["role"] == "assistant" else -1]["content"]
        n = int(question.rsplit(" ", 1)[1].rstrip("?"))
        if is_probe(body):
            return server.chat("So", body, finish_reason="length", top_logprobs=logprobs_for_entropy(0.3, "So"))
        if body.get("stop"):
            return server.chat(f" \\boxed{{{n + 1}}}", body, stop_reason="\n\n", completion_tokens=4)
        return server.chat(f" {n + 1}", body, completion_tokens=2)

    server.handler = handler


def test_run_eval_records_grades_resumes_and_summarizes(tmp_path, fake_small, fake_large):
    _answering(fake_small, "small")
    _answering(fake_large, "large")
    problems = [
        Problem(id=f"p{i}", question=f"What is {i} plus one? {i}?", answer=str(i + 1), kind="integer") for i in range(3)
    ]
    jobs = [Job("glimp", 1.0), Job("large-only"), Job("small-only")]
    out = tmp_path / "runs.jsonl"
    small, large = endpoint_of(fake_small), endpoint_of(fake_large)
    written = asyncio.run(run_eval(small, large, problems, jobs, out, progress=False))
    assert len(written) == 9 and all(r["correct"] and r["error"] is None for r in written)
    # problem-major order: every job on p0 before p1
    assert [r["id"] for r in written[:3]] == ["p0"] * 3
    again = asyncio.run(run_eval(small, large, problems, jobs, out, progress=False))
    assert again == [] and len(load_records(out)) == 9  # resumed: nothing left to run
    rows = {r["job"]: r for r in summarize(load_records(out))}
    assert rows["glimp@1"]["accuracy"] == 1.0 and rows["large-only"]["latency_ratio"] == pytest.approx(1.0)
    assert rows["large-only"]["large_share"] == 1.0 and rows["small-only"]["large_share"] == 0.0
    assert "| glimp@1 | 3 | 100.0% (43.9%-100.0%) |" in markdown_table(list(rows.values()))
    assert rows["large-only"]["ratio_median"] == pytest.approx(1.0) and rows["large-only"]["stalls"] == 0
    # every record says what measured it: the code, the packages, the servers, the CPU
    prov = written[0]["provenance"]
    assert prov["packages"]["glimp-graph"] and prov["packages"]["langgraph"]
    assert prov["servers"]["small"]["owned_by"] == "vllm" and prov["servers"]["large"]["base_url"] == large.base_url
    assert prov["cpu"]["cores"] >= 1 and prov["cpu"]["model"]
    assert prov["commit"] is None or len(prov["commit"]) == 40
    assert all(r["provenance"] == prov for r in written)


def test_run_eval_records_errors_and_retries_them(tmp_path, fake_small, fake_large):
    fake_small.handler = lambda body: (500, "boom")
    problems = [Problem(id="p", question="What is 1 plus one? 1?", answer="2", kind="integer")]
    out = tmp_path / "runs.jsonl"
    small, large = endpoint_of(fake_small), endpoint_of(fake_large)
    written = asyncio.run(run_eval(small, large, problems, [Job("glimp")], out, progress=False))
    assert written[0]["error"] and "HTTP 500" in written[0]["error"]
    _answering(fake_small, "small")
    _answering(fake_large, "large")
    retried = asyncio.run(run_eval(small, large, problems, [Job("glimp")], out, progress=False))
    assert len(retried) == 1 and retried[0]["correct"]


def test_run_eval_rejects_bad_arguments(tmp_path, fake_small, fake_large):
    small, large = endpoint_of(fake_small), endpoint_of(fake_large)
    with pytest.raises(ValueError, match="'vibes'"):
        asyncio.run(run_eval(small, large, [], [Job("vibes")], tmp_path / "o.jsonl"))
    with pytest.raises(ValueError, match="concurrency must be >= 1, got 0"):
        asyncio.run(run_eval(small, large, [], [Job("glimp")], tmp_path / "o.jsonl", concurrency=0))


def _rec(job: str, pid: str, correct: bool, models: tuple[str, ...] = ("small",), error: str | None = None) -> dict:
    return {
        "job": job,
        "id": pid,
        "correct": correct,
        "error": error,
        "step_records": [{"model": m} for m in models],
    }


def test_sign_test_matches_the_binomial():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 10) == 1.0
    assert sign_test(0, 5) == pytest.approx(2 / 32)  # both tails of 5 coin flips all alike
    assert sign_test(1, 10) == pytest.approx(2 * 11 / 1024)
    assert sign_test(9, 10) == sign_test(1, 10)
    with pytest.raises(ValueError, match="k=4, n=3"):
        sign_test(4, 3)


def test_paired_counts_disagreements_on_common_problems_only():
    records = [
        _rec("a", "p1", True), _rec("b", "p1", True),    # both
        _rec("a", "p2", True), _rec("b", "p2", False),   # only a
        _rec("a", "p3", False), _rec("b", "p3", True),   # only b
        _rec("a", "p4", True), _rec("b", "p4", False),   # only a
        _rec("a", "p5", True),                           # b never ran it: left out
        _rec("a", "p6", True), _rec("b", "p6", True, error="boom"),  # b failed: left out
    ]  # fmt: skip
    p = paired(records, "a", "b")
    assert (p.n, p.both, p.only_a, p.only_b) == (4, 1, 2, 1)
    assert p.diff == pytest.approx(0.25)
    assert p.diff_se == pytest.approx(math.sqrt(((0.75**2) * 2 + 0.25**2 + 1.25**2) / 3) / 2)
    assert p.p_value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'a' and 'zz'"):
        paired(records, "a", "zz")


def test_routing_profile_by_position():
    records = [
        _rec("g", "p1", True, ("large", "small", "small", "large")),
        _rec("g", "p2", False, ("small", "small", "small")),
        _rec("other", "p1", True, ("large",)),
    ]
    prof = routing_profile(records, "g")
    assert prof["runs"] == 2
    assert prof["first"] == 0.5
    assert prof["last"] == 0.5
    assert prof["middle"] == 0.0
    assert prof["switches"] == 1.0  # (2 + 0) / 2
    assert prof["accuracy_first_large"] == 1.0
    assert prof["accuracy_first_small"] == 0.0
    assert routing_profile(records, "nobody")["first"] is None


CAL_STEPS = [(0.1, "First, 2 + 3."), (0.5, "That is 5."), (1.2, "Check: 5 - 3 = 2."), (2.0, "So \\boxed{5}.")]


def test_calibrate_picks_the_quantile_of_the_small_models_own_scores(fake_small, fake_large, scripted):
    from glimp_graph.eval import calibrate
    from glimp_graph.scorers import TokenEntropy
    from tests.unit.conftest import ScriptStep

    model = scripted([ScriptStep(h, text) for h, text in CAL_STEPS], answer="5")
    problems = [Problem(id="p0", question="What is 2 + 3?", answer="5", kind="integer", source="t")]
    small, large = endpoint_of(fake_small), endpoint_of(fake_large)
    result = asyncio.run(calibrate(small, large, problems, scorer="glimp", target_large_share=0.25))
    assert result.scores == pytest.approx([0.1, 0.5, 1.2, 2.0], abs=1e-6)
    assert result.tau == pytest.approx(quantile([0.1, 0.5, 1.2, 2.0], 0.75), abs=1e-6)
    assert result.share_above() == 0.25 and result.problems == 1
    # the calibration run is the small model's own reasoning: the large model writes nothing but the answer
    assert all(not body.get("stop") for body in fake_large.chat_requests())
    # a scorer instance is calibrated as given, and named by its repr
    one = asyncio.run(calibrate(small, large, problems, scorer=TokenEntropy(tokens=1), target_large_share=0.5))
    assert one.scorer == "TokenEntropy(tokens=1)" and one.tau == pytest.approx(0.85, abs=1e-6)
    rnd = asyncio.run(calibrate(small, large, problems, scorer="random", target_large_share=0.3))
    assert rnd.tau == pytest.approx(0.7) and rnd.scores == []
    with pytest.raises(ValueError, match=r"1\.5"):
        asyncio.run(calibrate(small, large, problems, target_large_share=1.5))
    assert model.errors == []


def test_cli_calibrate_prints_the_histogram_tau_and_held_out_share(tmp_path, fake_small, fake_large, scripted):
    from click.testing import CliRunner

    from glimp_graph.cli import main
    from tests.unit.conftest import ScriptStep

    scripted([ScriptStep(h, text) for h, text in CAL_STEPS], answer="5")
    data = tmp_path / "p.jsonl"
    data.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n' * 2)
    result = CliRunner().invoke(
        main,
        [
            "calibrate",
            "--dataset", str(data), "--limit", "1", "--target-large-share", "0.25",
            "--holdout-start", "1", "--holdout-limit", "1",
            "--small-url", fake_small.url + "/v1", "--large-url", fake_large.url + "/v1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tau = quantile([0.1, 0.5, 1.2, 2.0], 0.75)
    assert f"glimp: tau={tau:.4f} for a large-step share of 25% (4 steps of 1 problems)" in result.output
    assert "held-out (1 problems): large-step share 25%" in result.output


def test_label_names_the_code_state():
    from glimp_graph.eval import label

    assert label(None) == "unknown" and label({}) == "unknown"
    assert label({"commit": "0123456789abcdef", "dirty": False}) == "0123456"
    assert label({"commit": "0123456789abcdef", "tree": "fedcba9876543210", "dirty": False}) == "code fedcba9"
    assert label({"commit": "0123456789abcdef", "dirty": True, "diff_sha": "feedbeef0000"}) == "0123456+dirty.feedbee"
    assert label({"commit": None, "version": "0.1.0"}) == "glimp-graph 0.1.0"
    assert label({"commit": None, "recorded_in": "ac662ce", "source": "sidecar"}).startswith("unrecorded")


def test_load_records_takes_old_records_provenance_from_the_sidecar(tmp_path):
    from glimp_graph.eval import mixed_jobs, states_by_job

    out = tmp_path / "runs.jsonl"
    rows = [_rec("a", "p1", True), _rec("a", "p2", True), {**_rec("a", "p3", True), "provenance": {"commit": "f" * 40}}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "provenance" not in load_records(out)[0]  # no sidecar: nothing made up
    sidecar = tmp_path / "runs.provenance.json"
    sidecar.write_text(json.dumps({"batches": [{"lines": [1, 1], "recorded_in": "abc1234", "note": "old"}]}))
    records = load_records(out)
    assert records[0]["provenance"] == {"recorded_in": "abc1234", "note": "old", "source": "sidecar"}
    assert "provenance" not in records[1]  # line 2 is described by no batch
    assert records[2]["provenance"] == {"commit": "f" * 40}  # a record's own provenance wins
    assert states_by_job(records)["a"] == {"unrecorded (results committed in abc1234)": 1, "unknown": 1, "fffffff": 1}
    assert set(mixed_jobs(records)) == {"a"}
    sidecar.write_text(json.dumps({"batches": [{"lines": [3, 1]}]}))
    with pytest.raises(ValueError, match=r"runs\.provenance\.json: expected"):
        load_records(out)


def test_code_version_outside_a_checkout_gives_the_package_version(tmp_path):
    from glimp_graph.eval.provenance import code_version, process_binary

    outside = tmp_path / "glimp_graph"
    outside.mkdir()
    info = code_version(outside)
    assert info["commit"] is None and info["dirty"] is None and info["version"]
    here = code_version()
    assert here["commit"] is None or (len(here["commit"]) == 40 and isinstance(here["dirty"], bool))
    assert process_binary(os.getpid()).startswith("python")
    assert process_binary(2**22 + 12345) is None


def test_server_info_reads_owned_by_and_llama_cpp_build(tmp_path):
    from glimp_graph import Endpoint
    from glimp_graph.eval.provenance import server_info

    answers = {
        "/v1/models": {"data": [{"id": "other", "owned_by": "x"}, {"id": "m", "owned_by": "llamacpp"}]},
        "/props": {"build_info": "b7000-abcdef1"},
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = answers.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {"error": "no route"}).encode())

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        info = asyncio.run(server_info(Endpoint(base_url=url, model="m")))
    finally:
        server.shutdown()
        server.server_close()
    assert info == {"base_url": url, "model": "m", "owned_by": "llamacpp", "build_info": "b7000-abcdef1"}
    down = asyncio.run(server_info(Endpoint(base_url=url, model="m"), timeout=1.0))  # nothing listens: no fields
    assert down == {"base_url": url, "model": "m"}


def test_cli_eval_prints_robust_figures_stalls_and_code_states(tmp_path, fake_small, fake_large):
    from click.testing import CliRunner

    from glimp_graph.cli import main

    _answering(fake_small, "small")
    _answering(fake_large, "large")
    data = tmp_path / "p.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} plus one? {i}?", "answer": i + 1}) + "\n" for i in range(3))
    )
    out = tmp_path / "runs.jsonl"
    report = tmp_path / "summary.md"
    result = CliRunner().invoke(
        main,
        [
            "eval", "--dataset", str(data), "--strategies", "glimp,large-only", "--out", str(out),
            "--report", str(report),
            "--small-url", fake_small.url + "/v1", "--large-url", fake_large.url + "/v1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| glimp | 3 | 100.0% (43.9%-100.0%) |" in result.output
    assert "median per problem (95% CI)" in result.output and "No stalled steps" in result.output
    records = load_records(out)
    assert [r["row"] for r in records] == [0, 0, 1, 1, 2, 2]
    state = records[0]["provenance"]
    expected = f"- glimp: {label_of(state)} (3)"
    assert expected in result.output and "MIXED" not in result.output
    assert report.read_text().startswith("| strategy |")


def label_of(provenance: dict) -> str:
    from glimp_graph.eval import label

    return label(provenance)


def test_code_version_in_a_checkout_marks_a_dirty_package_by_its_diff(tmp_path):
    import subprocess

    from glimp_graph.eval.provenance import code_version

    package = tmp_path / "glimp_graph"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("results\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(tmp_path)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    clean = code_version(package)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False and clean["diff_sha"] is None
    (tmp_path / "notes.txt").write_text("more results\n")  # files beside the package do not count
    assert code_version(package)["dirty"] is False
    (package / "a.py").write_text("x = 2\n")
    edited = code_version(package)
    assert edited["commit"] == clean["commit"] and edited["dirty"] is True and edited["diff_sha"]
    (package / "b.py").write_text("y = 1\n")  # a new, untracked module changes the code too
    assert code_version(package)["diff_sha"] != edited["diff_sha"]


def test_a_commit_outside_the_package_keeps_its_code_state(tmp_path):
    import subprocess

    from glimp_graph.eval.provenance import code_version, label

    package = tmp_path / "glimp_graph"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(tmp_path)]

    def commit(message: str) -> dict:
        for args in (["add", "."], ["commit", "-qm", message]):
            subprocess.run([*git, *args], check=True, capture_output=True)
        return code_version(package)

    subprocess.run([*git, "init", "-q"], check=True, capture_output=True)
    first = commit("code")
    (tmp_path / "results.jsonl").write_text("{}\n")
    results = commit("results of the first half")  # a measurement resumed after this is the same code
    assert results["commit"] != first["commit"] and results["tree"] == first["tree"] and len(first["tree"]) == 40
    assert label(results) == label(first) == f"code {first['tree'][:7]}"
    (package / "a.py").write_text("x = 2\n")
    changed = commit("change the code")
    assert changed["tree"] != first["tree"] and label(changed) != label(first)
