"""Every ``glimp`` error is one line naming the bad value and the fix: exit 2 for usage, 1 for runtime failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from glimp_graph.cli import main
from glimp_graph.serving import ServingError

DEAD = "http://127.0.0.1:9/v1"
URLS = ["--small-url", DEAD, "--large-url", DEAD]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text('{"question": "1+1?", "answer": "2"}\n')
    return path


def _command(name: str, dataset: Path, *extra: str) -> list[str]:
    """``glimp NAME`` with its required arguments (no URLs), then ``extra``."""
    required = {
        "ask": ["ask", "What is 2+2?"],
        "serve": ["serve"],
        "serve-router": ["serve-router"],
        "eval": ["eval", "--dataset", str(dataset), "--out", str(dataset.with_name("out.jsonl"))],
        "calibrate": ["calibrate", "--dataset", str(dataset)],
    }
    return [*required[name], *extra]


def _invoke(args: list[str], **env: str) -> Result:
    clean = {k: None for k in ("GLIMP_SMALL_URL", "GLIMP_LARGE_URL", "GLIMP_SMALL_MODEL", "GLIMP_LARGE_MODEL")}
    return CliRunner().invoke(main, args, env={**clean, **env})


def _error_line(result: Result, code: int) -> str:
    """The one error line of a failed command, checked to be alone and without a traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no uncaught exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("command", ["ask", "serve-router", "eval", "calibrate"])
def test_a_url_without_a_scheme_is_a_usage_error_naming_the_option_and_the_fix(command, dataset):
    args = _command(command, dataset, "--small-url", "localhost:8001/v1", "--large-url", "http://127.0.0.1:9/v1")
    line = _error_line(_invoke(args), 2)
    assert "--small-url" in line and "'localhost:8001/v1'" in line and "http://localhost:8001/v1" in line


def test_a_url_from_the_environment_names_the_variable(dataset):
    result = _invoke(_command("ask", dataset), GLIMP_SMALL_URL=DEAD, GLIMP_LARGE_URL="ftp://127.0.0.1/v1")
    line = _error_line(result, 2)
    assert "GLIMP_LARGE_URL" in line and "'ftp://127.0.0.1/v1'" in line and "http://" in line


@pytest.mark.parametrize("command", ["ask", "serve", "serve-router", "eval", "calibrate"])
@pytest.mark.parametrize("option", ["--local-small", "--local-large"])
def test_an_unknown_local_model_is_a_usage_error_listing_the_known_ones(command, option, dataset):
    line = _error_line(_invoke(_command(command, dataset, option, "qwen-tiny")), 2)
    assert option in line and "'qwen-tiny'" in line and "smollm2-135m" in line


def test_fetch_rejects_an_unknown_model_by_name():
    line = _error_line(_invoke(["fetch", "qwen-tiny"]), 2)
    assert "'qwen-tiny'" in line and "qwen2.5-coder-0.5b" in line


@pytest.mark.parametrize(
    ("command", "extra", "option", "value"),
    [
        ("ask", ["--tau", "x"], "--tau", "'x'"),
        ("ask", ["--tau", "nan"], "--tau", "'nan'"),
        ("serve-router", ["--tau", "high"], "--tau", "'high'"),
        ("ask", ["--estimator", "median"], "--estimator", "'median'"),
        ("ask", ["--top-k", "0"], "--top-k", "0"),
        ("ask", ["--prompt", "chatty"], "--prompt", "'chatty'"),
        ("serve-router", ["--max-step-tokens", "0"], "--max-step-tokens", "0"),
        ("serve-router", ["--port", "70000"], "--port", "70000"),
        ("eval", ["--max-steps", "0"], "--max-steps", "0"),
        ("eval", ["--threshold", "glimp=0.5,x"], "--threshold", "'x'"),
        ("eval", ["--threshold", "glimp"], "--threshold", "'glimp'"),
        ("eval", ["--strategies", "glimp,vibes"], "--strategies", "'vibes'"),
        ("eval", ["--concurrency", "0"], "--concurrency", "0"),
        ("calibrate", ["--scorer", "vibes"], "--scorer", "'vibes'"),
        ("calibrate", ["--target-large-share", "1.5"], "--target-large-share", "1.5"),
        ("calibrate", ["--final-max-tokens", "-3"], "--final-max-tokens", "-3"),
        ("ask", ["--max-step-tokens", "300", "--max-thinking-tokens", "100"], "--max-thinking-tokens", "100"),
        ("ask", ["--estimator", "upper"], "--vocab-size", "--top-k=20"),
    ],
)
def test_a_bad_option_value_is_one_usage_error_line_naming_the_option_and_the_value(
    command, extra, option, value, dataset
):
    line = _error_line(_invoke(_command(command, dataset, *URLS, *extra)), 2)
    assert option in line and value in line


@pytest.mark.parametrize(
    ("extra", "option", "value"),
    [
        (["--speculative-config", "{ngram}"], "--speculative-config", "'{ngram}'"),
        (["--speculative-config", "[1]"], "--speculative-config", "'[1]'"),
        (["--memory-split", "0.3,lots"], "--memory-split", "'0.3,lots'"),
        (["--memory-split", "0.3"], "--memory-split", "'0.3'"),
        (["--gpus", "0"], "--gpus", "0"),
        (["--memory-split", "0.7,0.6"], "--memory-split", "1.3"),
        (["--gpus", "1", "--tensor-parallel", "2"], "--tensor-parallel", "--gpus >= 3"),
    ],
)
def test_serve_vllm_bad_values_are_usage_errors_naming_the_option(extra, option, value):
    line = _error_line(_invoke(["serve", "--backend", "vllm", *extra]), 2)
    assert option in line and value in line


def test_an_empty_question_is_a_usage_error():
    line = _error_line(_invoke(["ask", "  ", *URLS]), 2)
    assert "question" in line and "empty" in line


def test_a_malformed_dataset_is_a_usage_error_naming_the_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"answer": "3"}\n')
    for args in (["eval", "--out", str(tmp_path / "o.jsonl")], ["calibrate"]):
        line = _error_line(_invoke([*args, "--dataset", str(data), *URLS]), 2)
        assert "--dataset" in line and f"{data}:2" in line


def test_calibrate_with_no_problems_in_range_is_a_usage_error(dataset):
    line = _error_line(_invoke(["calibrate", "--dataset", str(dataset), "--start", "5", *URLS]), 2)
    assert "--start" in line and "5" in line


class _BrokenLocalModels:
    """Stands in for :class:`~glimp_graph.serving.LocalModels`: starting the servers fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _BrokenLocalModels:
        raise ServingError("llama-server for 'qwen2.5-coder-0.5b' exited with code 1 before it was ready")

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize("command", ["ask", "serve", "serve-router", "eval", "calibrate"])
def test_a_server_that_fails_to_start_is_a_runtime_error_line(command, dataset, monkeypatch):
    monkeypatch.setattr("glimp_graph.serving.LocalModels", _BrokenLocalModels)
    line = _error_line(_invoke(_command(command, dataset)), 1)
    assert line.startswith("error: llama-server for 'qwen2.5-coder-0.5b' exited with code 1")


@pytest.mark.parametrize("command", ["ask", "calibrate"])
def test_an_unreachable_server_is_a_runtime_error_naming_its_url(command, dataset):
    line = _error_line(_invoke(_command(command, dataset, *URLS)), 1)
    assert DEAD in line and "cannot connect" in line
