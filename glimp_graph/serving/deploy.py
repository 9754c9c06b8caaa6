"""Shell commands that serve the small and the large model with ``vllm serve`` on a GPU machine.

Nothing here starts anything: :func:`vllm_commands` only writes the two command lines (see ``docs/DEPLOY.md``
for the layouts, and for scaling past one machine with vLLM's own parallelism and LangGraph's server).

Example:
    >>> for line in vllm_commands("Qwen/Qwen3-4B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", gpus=2):
    ...     print(line)
    CUDA_VISIBLE_DEVICES=0 vllm serve Qwen/Qwen3-4B --host 127.0.0.1 --port 8001 --enable-prefix-caching --max-logprobs 20
    CUDA_VISIBLE_DEVICES=1 vllm serve deepseek-ai/DeepSeek-R1-Distill-Qwen-32B --host 127.0.0.1 --port 8002 --enable-prefix-caching

"""  # noqa: E501

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MAX_SHARED_GPU_MEMORY", "vllm_commands"]

MAX_SHARED_GPU_MEMORY = 0.95
"""Most of one GPU's memory the two servers may claim together when they share it."""


def vllm_commands(
    small_model: str,
    large_model: str,
    *,
    gpus: int = 1,
    gpu_memory_split: tuple[float, float] = (0.25, 0.65),
    tensor_parallel: int = 1,
    speculative_config: Mapping[str, Any] | None = None,
    small_port: int = 8001,
    large_port: int = 8002,
    max_logprobs: int = 20,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Return the ``vllm serve`` command lines for the small and the large model, in that order.

    Layouts:

    * ``gpus=1``: both servers share GPU 0 (``CUDA_VISIBLE_DEVICES=0``); each claims its part of the GPU's
      memory with ``--gpu-memory-utilization`` (``gpu_memory_split``; vLLM's default, 0.9 each, would not fit).
    * ``gpus>=2``: the small model gets GPU 0, the large model GPUs ``1..tensor_parallel``
      (``--tensor-parallel-size``); each takes vLLM's default share of its own GPUs, so
      ``gpu_memory_split`` is not used.

    Both servers get ``--enable-prefix-caching`` (every step re-sends the growing trace). The small model
    gets ``--max-logprobs`` (the probe asks for top-k log-probabilities; ``-1`` allows the whole vocabulary,
    for the exact entropy). ``speculative_config`` (token-level speculative decoding, e.g.
    ``{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}`` or a draft model) goes to the
    large model as ``--speculative-config '<json>'``; step routing composes with it.

    Args:
        small_model: Model name or path for the small model.
        large_model: Model name or path for the large model.
        gpus: GPUs on the machine to use (1: shared; 2 or more: a GPU each, more for tensor parallelism).
        gpu_memory_split: ``(small, large)`` fractions of the shared GPU's memory (``gpus=1`` only); they
            must sum to at most :data:`MAX_SHARED_GPU_MEMORY`.
        tensor_parallel: GPUs the large model is split over (``gpus`` must be at least ``1 + tensor_parallel``).
        speculative_config: vLLM speculative-decoding settings for the large model, or ``None``.
        small_port: Port of the small model's server.
        large_port: Port of the large model's server.
        max_logprobs: ``--max-logprobs`` of the small model's server (``-1``: the whole vocabulary).
        host: Address both servers listen on (``0.0.0.0`` to reach them from other machines).
        extra_args: More arguments appended to both commands.

    Returns:
        Two shell command lines (quoted with :func:`shlex.quote`): small model first, then large.

    Raises:
        ValueError: A setting is out of range: the memory split (naming both values and their sum), ports,
            GPU counts, ``max_logprobs``, or a speculative config that is not JSON-serializable.

    """
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be >= 1, got {tensor_parallel}")
    if max_logprobs != -1 and max_logprobs < 1:
        raise ValueError(f"max_logprobs must be >= 1, or -1 for the whole vocabulary, got {max_logprobs}")
    for name, port in (("small_port", small_port), ("large_port", large_port)):
        if not 1 <= port <= 65535:
            raise ValueError(f"{name} must be a TCP port (1-65535), got {port}")
    if small_port == large_port:
        raise ValueError(f"small_port and large_port must differ, both are {small_port}")
    spec_json = _speculative_json(speculative_config)

    small_flags: list[str] = []
    large_flags: list[str] = []
    if gpus == 1:
        if tensor_parallel != 1:
            raise ValueError(
                f"tensor_parallel={tensor_parallel} needs its own GPUs: use gpus >= {1 + tensor_parallel} "
                "(the small model keeps GPU 0)"
            )
        small_mem, large_mem = _check_split(gpu_memory_split)
        small_gpus, large_gpus = "0", "0"
        small_flags += ["--gpu-memory-utilization", f"{small_mem:g}"]
        large_flags += ["--gpu-memory-utilization", f"{large_mem:g}"]
    else:
        if gpus < 1 + tensor_parallel:
            raise ValueError(
                f"gpus={gpus} is too few for a GPU for the small model plus tensor_parallel={tensor_parallel} "
                f"for the large one (need {1 + tensor_parallel})"
            )
        small_gpus = "0"
        large_gpus = ",".join(str(i) for i in range(1, 1 + tensor_parallel))
    if tensor_parallel > 1:
        large_flags += ["--tensor-parallel-size", str(tensor_parallel)]
    small_flags += ["--max-logprobs", str(max_logprobs)]
    if spec_json is not None:
        large_flags += ["--speculative-config", spec_json]

    return [
        _command(small_model, small_gpus, host, small_port, small_flags, extra_args),
        _command(large_model, large_gpus, host, large_port, large_flags, extra_args),
    ]


def _check_split(split: Sequence[float]) -> tuple[float, float]:
    if len(split) != 2:
        raise ValueError(f"gpu_memory_split must be (small, large), got {tuple(split)!r}")
    small, large = float(split[0]), float(split[1])
    for name, value in (("small", small), ("large", large)):
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ValueError(f"gpu_memory_split {name} share must be between 0 and 1, got {value!r}")
    total = small + large
    if total > MAX_SHARED_GPU_MEMORY + 1e-9:
        raise ValueError(
            f"gpu_memory_split small={small:g} + large={large:g} = {total:g} exceeds {MAX_SHARED_GPU_MEMORY:g} "
            "of the shared GPU (leave room for CUDA contexts and activations)"
        )
    return small, large


def _speculative_json(config: Mapping[str, Any] | None) -> str | None:
    if config is None:
        return None
    if not isinstance(config, Mapping) or not config:
        raise ValueError(f"speculative_config must be a non-empty mapping, got {config!r}")
    try:
        return json.dumps(dict(config), separators=(", ", ": "), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"speculative_config is not JSON-serializable: {exc}") from exc


def _command(model: str, gpus: str, host: str, port: int, flags: Sequence[str], extra: Sequence[str]) -> str:
    args = ["vllm", "serve", model, "--host", host, "--port", str(port), "--enable-prefix-caching", *flags, *extra]
    return f"CUDA_VISIBLE_DEVICES={gpus} " + " ".join(shlex.quote(a) for a in args)
