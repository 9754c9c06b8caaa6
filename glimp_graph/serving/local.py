"""Run a small and a large real model locally, one ``llama-server`` process each."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from glimp_graph.serving.process import LlamaServer
from glimp_graph.serving.weights import ModelSpec, fetch_model, get_spec

__all__ = ["LocalModels"]


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class LocalModels:
    """Context manager that serves a small and a large model on loopback for the duration of a block.

    On entry it fetches both weights (see :func:`~glimp_graph.serving.fetch_model`), finds or builds
    ``llama-server`` (see :func:`~glimp_graph.serving.ensure_llama_server`; a build that dies by SIGILL on this
    CPU is replaced by a portable one, once) and starts one server per model
    (the same model for both gives two processes). On exit, or when the second start fails, every started
    server is stopped. Entered from the main thread, it also turns SIGTERM into :class:`SystemExit` inside
    the block so that ``finally`` clauses (and the shutdown of the servers) run; the previous handler is
    restored on exit.

    Example:
        >>> with LocalModels() as models:  # doctest: +SKIP
        ...     small_url, large_url = models.small.base_url, models.large.base_url

    Attributes:
        small: The small model's server (set inside the block).
        large: The large model's server (set inside the block).

    """

    def __init__(
        self,
        small: str | ModelSpec = "qwen2.5-coder-0.5b",
        large: str | ModelSpec = "qwen2.5-coder-1.5b",
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        threads: int = 2,
        ctx_size: int = 4096,
        *,
        binary: str | os.PathLike[str] | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        """Describe the two servers; nothing starts until the block is entered.

        Args:
            small: Name in :data:`~glimp_graph.serving.MODELS` (or a spec) of the small model.
            large: Name (or spec) of the large model; may equal ``small``.
            cache_dir: Cache root for weights, binary and logs; ``None`` means the default cache.
            progress: Show progress bars while fetching and building.
            threads: CPU threads per server.
            ctx_size: Context size in tokens per server.
            binary: An existing ``llama-server`` to use instead of the cached or built one (no fallback).
            ready_timeout: Seconds each server may take to become ready.

        Raises:
            KeyError: A model name is unknown.

        """
        self._small_spec = get_spec(small)
        self._large_spec = get_spec(large)
        self._cache_dir = cache_dir
        self._progress = progress
        self._threads = threads
        self._ctx_size = ctx_size
        self._binary = Path(binary) if binary is not None else None
        self._ready_timeout = ready_timeout
        self._small: LlamaServer | None = None
        self._large: LlamaServer | None = None
        self._old_handler: Any = None
        self._handler_installed = False

    @property
    def small(self) -> LlamaServer:
        """The small model's running server.

        Raises:
            RuntimeError: Used outside the ``with`` block.

        """
        if self._small is None:
            raise RuntimeError("LocalModels.small is only available inside the `with` block")
        return self._small

    @property
    def large(self) -> LlamaServer:
        """The large model's running server.

        Raises:
            RuntimeError: Used outside the ``with`` block.

        """
        if self._large is None:
            raise RuntimeError("LocalModels.large is only available inside the `with` block")
        return self._large

    def __enter__(self) -> Self:
        """Fetch, build and start both servers (stopping any started one if a later step fails)."""
        self._install_sigterm()
        try:
            small_path = fetch_model(self._small_spec, self._cache_dir, progress=self._progress)
            large_path = fetch_model(self._large_spec, self._cache_dir, progress=self._progress)
            self._small = self._start(small_path, self._small_spec.alias)
            self._large = self._start(large_path, self._large_spec.alias)
        except BaseException:
            self._shutdown()
            raise
        return self

    def _start(self, model_path: Path, alias: str) -> LlamaServer:
        return LlamaServer.start(
            model_path,
            alias=alias,
            binary=self._binary,
            progress=self._progress,
            ctx_size=self._ctx_size,
            threads=self._threads,
            ready_timeout=self._ready_timeout,
            cache_dir=self._cache_dir,
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop both servers and restore the previous SIGTERM handler."""
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            for attr in ("_large", "_small"):
                server: LlamaServer | None = getattr(self, attr)
                setattr(self, attr, None)
                if server is not None:
                    server.stop()
        finally:
            self._restore_sigterm()

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_handler = signal.signal(signal.SIGTERM, _raise_system_exit)
        self._handler_installed = True

    def _restore_sigterm(self) -> None:
        if self._handler_installed:
            old = self._old_handler if self._old_handler is not None else signal.SIG_DFL
            signal.signal(signal.SIGTERM, old)
            self._handler_installed = False
            self._old_handler = None

    def __repr__(self) -> str:
        """Describe the pair and whether it is running."""
        return (
            f"LocalModels(small={self._small_spec.name!r}, large={self._large_spec.name!r}, "
            f"running={self._small is not None and self._large is not None})"
        )
