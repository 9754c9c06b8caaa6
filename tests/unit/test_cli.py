"""The command line, without model servers: argument checking and the vLLM deployment commands."""

from __future__ import annotations

import json

from click.testing import CliRunner

from glimp_graph.cli import main
from tests.unit.conftest import ScriptStep, unused_port


def test_serve_vllm_prints_two_commands_with_the_routing_flags():
    result = CliRunner().invoke(
        main,
        ["serve", "--backend", "vllm", "--gpus", "2", "--speculative-config", '{"method": "ngram"}'],
    )
    assert result.exit_code == 0, result.output
    small, large = result.output.strip().splitlines()
    assert small.startswith("CUDA_VISIBLE_DEVICES=0 vllm serve") and "--max-logprobs 20" in small
    assert large.startswith("CUDA_VISIBLE_DEVICES=1 vllm serve") and "--enable-prefix-caching" in large
    spec = large.split("--speculative-config ", 1)[1].strip("'")
    assert json.loads(spec) == {"method": "ngram"}


def test_serve_vllm_rejects_a_memory_split_over_the_gpu():
    result = CliRunner().invoke(main, ["serve", "--backend", "vllm", "--memory-split", "0.5,0.6"])
    assert result.exit_code == 2 and "0.5" in result.output and "0.6" in result.output


def test_ask_needs_both_urls_or_none():
    result = CliRunner().invoke(main, ["ask", "What is 2+2?", "--small-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 2 and "--large-url" in result.output


def test_ask_rejects_a_bad_tau_by_value():
    result = CliRunner().invoke(
        main, ["ask", "q", "--small-url", "http://127.0.0.1:9/v1", "--large-url", "http://127.0.0.1:9/v1", "--tau", "x"]
    )
    assert result.exit_code == 2 and "'x'" in result.output


def test_ask_reports_an_unreachable_endpoint_by_url():
    url = "http://127.0.0.1:9/v1"
    result = CliRunner().invoke(main, ["ask", "What is 2+2?", "--small-url", url, "--large-url", url])
    assert result.exit_code == 1 and url in result.output and "cannot connect" in result.output


def test_eval_rejects_unknown_strategies(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--dataset",
            str(data),
            "--strategies",
            "glimp,vibes",
            "--out",
            str(tmp_path / "o.jsonl"),
            "--small-url",
            "http://127.0.0.1:9/v1",
            "--large-url",
            "http://127.0.0.1:9/v1",
        ],
    )
    assert result.exit_code == 2 and "vibes" in result.output


def test_ask_with_the_small_server_down_prints_the_steps_and_says_the_large_model_took_over(scripted, fake_large):
    scripted([ScriptStep(0.2, "First, 2 + 2 = 4."), ScriptStep(0.2, "The answer is \\boxed{4}.")], answer="4")
    small_url = f"http://127.0.0.1:{unused_port()}/v1"
    result = CliRunner().invoke(
        main, ["ask", "What is 2+2?", "--small-url", small_url, "--large-url", f"{fake_large.url}/v1"]
    )
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert "[  0] large" in result.output and "First, 2 + 2 = 4." in result.output
    assert "[  1] large" in result.output and "Answer: 4" in result.output
    assert "H=  -- (small model down)" in result.output
    fallback = [line for line in result.output.splitlines() if "small model unavailable" in line]
    assert len(fallback) == 1, result.output
    assert "the large model writes the remaining steps" in fallback[0] and small_url in fallback[0]
