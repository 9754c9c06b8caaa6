"""bench/run_report.py renders its prose from the data: a claim flips when the data does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from glimp_graph.eval import load_records
from tests.helpers import load_bench

ROOT = Path(__file__).resolve().parents[2]
N = 40


@pytest.fixture(scope="module")
def report() -> Any:
    return load_bench("run_report")


CALIBRATION = {"target_large_share": 0.25, "problems": "synthetic rows", "taus": {"glimp": 0.8, "random": 0.75}}
JOBS = {"glimp@0.8": ("glimp", 0.8), "small-only": ("small-only", None), "large-only": ("large-only", None)}
JOBS["random@0.75"] = ("random", 0.75)


def _steps(models: str) -> list[dict[str, Any]]:
    """One step per letter (s: small, l: large): arithmetic steps open with a list number, prose with a word."""
    out = []
    for k, m in enumerate(models):
        model = "large" if m == "l" else "small"
        arithmetic = k % 2 == 0
        out.append(
            {
                "model": model,
                "tokens": 40,
                "seconds": 40 * (0.028 if model == "large" else 0.017),
                "probe_seconds": 0.02,
                "text": f"{k + 1}. 2 + 3 = 5" if arithmetic else "So we think about it.",
                "probe_token": f"{k + 1}." if arithmetic else "So",
                "h_init": 0.1 if arithmetic else 0.9,
                "score": 0.1 if arithmetic else 0.9,
                "end": "stop",
            }
        )
    return out


def _records(
    *,
    glimp_speed: float = 0.8,
    glimp_right: Callable[[int], bool] = lambda i: i % 4 == 0,
    stall_row: int | None = None,
    provenance: Callable[[str, int], dict | None] = lambda job, i: None,
    glimp_models: str = "slss",
) -> list[dict[str, Any]]:
    records = []
    for i in range(N):
        base = 10.0 + (i % 7)
        spec = {
            "glimp@0.8": (glimp_speed * base, glimp_right(i), glimp_models),
            "small-only": (0.5 * base, i % 5 == 0, "ssss"),
            "large-only": (base, i % 2 == 0, "llll"),
            "random@0.75": (0.8 * base, i % 4 == 0, "sssl"),
        }
        for job, (latency, right, models) in spec.items():
            strategy, threshold = JOBS[job]
            steps = _steps(models)
            if job == "large-only" and i == stall_row:
                steps[0]["seconds"] = 40 * 0.028 * 100  # a server that froze on this step
                latency += steps[0]["seconds"]
            record = {
                "job": job,
                "strategy": strategy,
                "threshold": threshold,
                "id": f"q{i:03d}",
                "row": i,
                "latency_s": latency,
                "error": None,
                "correct": right,
                "steps": len(steps),
                "large_steps": models.count("l"),
                "small_tokens": 40 * models.count("s"),
                "large_tokens": 40 * models.count("l"),
                "probe_seconds": 0.1 if strategy == "glimp" else 0.0,
                "final_seconds": 0.3,
                "step_records": steps,
                "scorer": {"glimp": "glimp", "random": "random"}.get(strategy, "fixed"),
                "final_tokens": 4,
            }
            prov = provenance(job, i)
            if prov is not None:
                record["provenance"] = prov
            records.append(record)
    return records


def _render(report: Any, records: list[dict[str, Any]], *flags: str, **sections: Any) -> str:
    args = report.parse_args(
        ["--n", str(N), "--sweep-shares", "--random-shares", "--gpu-costs", "/nonexistent", *flags]
    )
    text, rows, _ = report.render(records, CALIBRATION, args, figures=False, **sections)
    assert {r["job"] for r in rows} == set(JOBS)
    return text


def test_headline_and_target_flip_with_the_latency(report):
    fast = _render(report, _records(glimp_speed=0.6))
    assert "takes a median 0.60x `large-only`'s time" in fast
    assert "faster than `large-only`" in fast
    assert "- `glimp` latency <= 0.75 x `large-only`: met" in fast
    slow = _render(report, _records(glimp_speed=1.4))
    assert "slower than `large-only`" in slow and "faster than `large-only`" not in slow
    assert "- `glimp` latency <= 0.75 x `large-only`: MISSED" in slow
    assert "keeps none of it" in slow and "keeps none of it" not in fast


def test_significance_claims_flip_with_the_disagreements(report):
    same = _render(report, _records(glimp_right=lambda i: i % 4 == 0))  # right exactly where random is
    assert "disagree on 0 of 40 problems, none significantly" in same
    assert "not distinguishable in accuracy from `random`" in same
    better = _render(report, _records(glimp_right=lambda i: True))  # right everywhere: 30 wins, no loss
    assert "1 of 1 significantly (`random@0.75`)" in better
    assert "more accurate than `random`" in better
    assert "more accurate than `large-only`" in better and "less accurate than `large-only`" in same


def test_stalls_are_listed_and_named_in_the_headline_never_averaged_in_silently(report):
    clean = _render(report, _records())
    assert "Neither job has a stalled step" in clean and "No stalled steps" in clean
    stalled = _render(report, _records(stall_row=3))
    assert "| large-only | 3 | q003 | 1 | large |" in stalled
    assert "counts 1 stalled step of these two jobs" in stalled and "on row 3" in stalled
    # the headline's median barely moves; the ratio of means does
    assert "takes a median 0.80x" in clean and "takes a median 0.80x" in stalled


def test_signal_claims_are_computed_from_the_steps(report):
    text = _render(report, _records())
    # glimp's large step is always its second, a prose step: it favours prose; random's is its fourth (prose too)
    assert "`glimp@0.8` 50% of prose steps vs 0% of arithmetic ones" in text
    assert "open most of the computing steps" in text


def test_mixed_commits_are_refused_unless_asked_and_then_said(report):
    def two_commits(job: str, i: int) -> dict:
        return {"commit": "a" * 40 if i < N // 2 else "b" * 40, "dirty": False}

    records = _records(provenance=two_commits)
    with pytest.raises(report.MixedCommits, match=r"aaaaaaa \(20\).*bbbbbbb \(20\).*--mix-commits"):
        _render(report, records)
    text = _render(report, records, "--mix-commits")
    assert "rendered with `--mix-commits`" in text
    assert "**This report pools records of different code states in one row**" in text
    assert "| large-only | aaaaaaa | aaaaaaa | 0-19 | 20 |" in text
    assert "| glimp@0.8 | bbbbbbb | bbbbbbb | 20-39 | 20 |" in text
    one = _render(report, _records(provenance=lambda job, i: {"commit": "c" * 40, "dirty": False}))
    assert "pools records" not in one and "| glimp@0.8 | ccccccc | ccccccc | 0-39 | 40 |" in one


def test_commits_that_left_the_package_alone_are_one_code_state(report):
    def two_commits_one_tree(job: str, i: int) -> dict:
        return {"commit": "a" * 40 if i < N // 2 else "b" * 40, "tree": "e" * 40, "dirty": False}

    text = _render(report, _records(provenance=two_commits_one_tree))  # no --mix-commits needed
    assert "pools records" not in text and "| glimp@0.8 | code eeeeeee | aaaaaaa, bbbbbbb | 0-39 | 40 |" in text
    assert "at code state `unknown`: not what measured them" in text
    same = _render(report, _records(provenance=two_commits_one_tree), rendered_at="code eeeeeee")
    assert "at code state `code eeeeeee`: the state that measured every record below" in same

    def two_trees(job: str, i: int) -> dict:
        return {"commit": "a" * 40, "tree": "e" * 40 if i < N // 2 else "f" * 40, "dirty": False}

    with pytest.raises(report.MixedCommits, match=r"code eeeeeee \(20\).*code fffffff \(20\)"):
        _render(report, _records(provenance=two_trees))


def test_the_sidecar_gives_old_records_their_provenance(report, tmp_path):
    results = tmp_path / "runs.jsonl"
    records = _records()
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    half = len(records) // 2
    (tmp_path / "runs.provenance.json").write_text(
        json.dumps(
            {
                "batches": [
                    {"lines": [1, half], "commit": None, "recorded_in": "1111111", "note": "first half"},
                    {"lines": [half + 1, len(records)], "commit": None, "recorded_in": "2222222"},
                ]
            }
        )
    )
    loaded = load_records(results)
    with pytest.raises(report.MixedCommits, match=r"unrecorded \(results committed in 1111111\)"):
        _render(report, loaded)
    text = _render(report, loaded, "--mix-commits")
    assert "- `unrecorded (results committed in 1111111)`: first half" in text
    assert "not recorded in 160 of the 160 records" in text


def test_the_projection_prices_the_recorded_routing_under_each_profile(report):
    text = _render(report, _records())
    assert "## Projection: the same routing on other hardware" in text
    assert "| glimp@0.8 | " in text and "`h200-floor-r1-32b-qwen3-4b`" in text
    assert "`glimp@0.8`'s routing would take a median" in text and "(faster)" in text
    # every step to the large model, plus the probes: no faster than large-only anywhere
    slow = _render(report, _records(glimp_models="llll"))
    assert "(not faster)" in slow


def test_math500_and_earlier_jobs_get_their_own_sections(report):
    math = [r for r in _records(glimp_right=lambda i: i % 2 == 0) if r["job"] != "small-only"]
    earlier = [r for r in _records() if r["job"] == "large-only"]
    earlier += [
        {**r, "job": "step-entropy@0.3", "strategy": "step-entropy"} for r in _records() if r["job"] == "glimp@0.8"
    ]
    text = _render(report, _records(), math_records=math, earlier=earlier)
    assert "## MATH-500" in text
    # glimp is right on the even rows, random on every fourth: 20 vs 10 right, 10 only by glimp
    assert f"`glimp@0.8` against `random@0.75` on the same {N} problems: right on 20 vs 10" in text
    section = text.split("## Earlier jobs")[1].split("\n## ")[0]
    assert "| step-entropy@0.3 | 40 |" in section and "| glimp@0.8 |" not in section
    assert "## MATH-500" not in _render(report, _records()) and "## Earlier jobs" not in _render(report, _records())


def test_measured_jobs_and_calibration_rows_are_checked_up_front(report, capsys):
    with pytest.raises(SystemExit):
        report.parse_args(["--jobs", "glimp,bogus"])
    assert "--jobs bogus: choose from glimp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.parse_args(["--n", "100", "--calibration-start", "90"])
    assert "outside the evaluated rows" in capsys.readouterr().err
    assert report.parse_args(["--jobs", "glimp, large-only"]).jobs == ["glimp", "large-only"]
