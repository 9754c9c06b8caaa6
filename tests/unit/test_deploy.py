"""The ``vllm serve`` command lines for a GPU machine (nothing is started)."""

from __future__ import annotations

import json
import shlex

import pytest

from glimp_graph.serving.deploy import MAX_SHARED_GPU_MEMORY, vllm_commands

SMALL, LARGE = "Qwen/Qwen3-4B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"


def _parse(line: str) -> tuple[dict[str, str], list[str]]:
    """Split ``VAR=x vllm serve MODEL --flag value ...`` into its environment and argv."""
    words = shlex.split(line)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_one_gpu_shares_device_zero_with_a_memory_split():
    small, large = vllm_commands(SMALL, LARGE, gpus=1, gpu_memory_split=(0.2, 0.7))
    (s_env, s_argv), (l_env, l_argv) = _parse(small), _parse(large)
    assert s_env == {"CUDA_VISIBLE_DEVICES": "0"} and l_env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert s_argv[:3] == ["vllm", "serve", SMALL] and l_argv[:3] == ["vllm", "serve", LARGE]
    assert _flag(s_argv, "--gpu-memory-utilization") == "0.2"
    assert _flag(l_argv, "--gpu-memory-utilization") == "0.7"
    assert _flag(s_argv, "--port") == "8001" and _flag(l_argv, "--port") == "8002"
    assert "--enable-prefix-caching" in s_argv and "--enable-prefix-caching" in l_argv
    assert _flag(s_argv, "--max-logprobs") == "20"
    assert "--tensor-parallel-size" not in l_argv and "--speculative-config" not in l_argv


def test_a_gpu_each_without_a_memory_split():
    small, large = vllm_commands(SMALL, LARGE, gpus=2, gpu_memory_split=(0.9, 0.9))  # split unused here
    (s_env, s_argv), (l_env, l_argv) = _parse(small), _parse(large)
    assert s_env["CUDA_VISIBLE_DEVICES"] == "0" and l_env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "--gpu-memory-utilization" not in s_argv + l_argv
    assert "--tensor-parallel-size" not in l_argv


def test_tensor_parallel_large_model_takes_the_other_gpus():
    small, large = vllm_commands(SMALL, LARGE, gpus=5, tensor_parallel=4, max_logprobs=-1)
    (s_env, s_argv), (l_env, l_argv) = _parse(small), _parse(large)
    assert s_env["CUDA_VISIBLE_DEVICES"] == "0"
    assert l_env["CUDA_VISIBLE_DEVICES"] == "1,2,3,4"
    assert _flag(l_argv, "--tensor-parallel-size") == "4"
    assert "--tensor-parallel-size" not in s_argv
    assert _flag(s_argv, "--max-logprobs") == "-1"


def test_speculative_config_goes_to_the_large_model_as_valid_json():
    config = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}
    small, large = vllm_commands(SMALL, LARGE, speculative_config=config, small_port=9001, large_port=9002)
    _, s_argv = _parse(small)
    _, l_argv = _parse(large)
    assert "--speculative-config" not in s_argv
    assert json.loads(_flag(l_argv, "--speculative-config")) == config
    assert _flag(s_argv, "--port") == "9001" and _flag(l_argv, "--port") == "9002"


def test_draft_model_config_survives_shell_quoting():
    config = {"model": "Qwen/Qwen3-0.6B", "method": "draft_model", "num_speculative_tokens": 5}
    _, large = vllm_commands(SMALL, LARGE, gpus=2, speculative_config=config)
    assert "'" in large  # the JSON is quoted as one shell word
    assert json.loads(_flag(_parse(large)[1], "--speculative-config")) == config


@pytest.mark.parametrize("split", [(0.5, 0.5), (0.3, 0.66), (0.9, 0.1)])
def test_memory_split_over_the_limit_is_refused_naming_the_values(split):
    with pytest.raises(ValueError) as info:
        vllm_commands(SMALL, LARGE, gpus=1, gpu_memory_split=split)
    message = str(info.value)
    assert f"{split[0]:g}" in message and f"{split[1]:g}" in message and f"{MAX_SHARED_GPU_MEMORY:g}" in message


def test_memory_split_at_the_limit_is_accepted():
    small, large = vllm_commands(SMALL, LARGE, gpu_memory_split=(0.3, 0.65))
    assert "0.3" in small and "0.65" in large


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gpu_memory_split": (0.0, 0.5)}, "between 0 and 1"),
        ({"gpu_memory_split": (0.2, float("nan"))}, "between 0 and 1"),
        ({"gpus": 0}, "gpus"),
        ({"gpus": 1, "tensor_parallel": 2}, "tensor_parallel=2"),
        ({"gpus": 2, "tensor_parallel": 2}, "need 3"),
        ({"tensor_parallel": 0}, "tensor_parallel"),
        ({"max_logprobs": 0}, "max_logprobs"),
        ({"small_port": 0}, "small_port"),
        ({"small_port": 8000, "large_port": 8000}, "differ"),
        ({"speculative_config": {"method": object()}}, "JSON"),
        ({"speculative_config": {}}, "non-empty"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vllm_commands(SMALL, LARGE, **kwargs)


def test_model_paths_with_spaces_are_quoted():
    small, _ = vllm_commands("/models/my small model", LARGE)
    assert _parse(small)[1][2] == "/models/my small model"
