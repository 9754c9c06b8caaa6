"""Start, watch and stop ``llama-server`` processes bound to the loopback interface.

Every started server is registered and stopped by an :mod:`atexit` hook; on Linux the child also gets
``PR_SET_PDEATHSIG`` so it receives SIGTERM when the Python thread that started it dies, even on SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

from glimp_graph.serving._paths import resolve_cache_dir, safe_name, tail
from glimp_graph.serving.errors import ServerCrashedError, ServingError
from glimp_graph.serving.llama_server import (
    CRASH_SIGNALS,
    ensure_llama_server,
    llama_server_path,
    logger,
    record_crash,
)

__all__ = ["LlamaServer", "ManagedServer", "check_loopback", "describe_exit", "is_loopback", "stop_all"]

_BIND_FAILURE_RE = re.compile(r"couldn't bind|address already in use", re.IGNORECASE)
_MAX_PORT_TRIES = 3
_POLL_S = 0.1

_registry: set[ManagedServer] = set()
_registry_lock = threading.Lock()


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is a single loopback address (``127.0.0.1``, ``::1``, ...) or ``localhost``.

    Args:
        host: A host name or IP address.

    Returns:
        ``True`` for ``localhost`` and loopback IP addresses; ``False`` for anything else (other names too).

    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_loopback(host: str) -> None:
    """Refuse a listening address other than loopback: local model servers are never reachable from outside.

    Args:
        host: The address a server is asked to listen on.

    Raises:
        ValueError: ``host`` is not a loopback address (see :func:`is_loopback`).

    """
    if not is_loopback(host):
        allowed = "127.0.0.1, ::1 or localhost"
        raise ValueError(f"host {host!r} is not a loopback address; local model servers listen only on {allowed}")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that asks Linux to SIGTERM the child when its parent dies, or ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


class ManagedServer:
    """A model server process on loopback: started, health-checked, and stopped with its parent.

    The shared machinery of :class:`LlamaServer` and :class:`~glimp_graph.serving.VllmServer`: a log file,
    a free port picked again when the server cannot bind it, readiness on ``GET /health``, a registry stopped
    by an :mod:`atexit` hook, the parent-death signal (Linux), and SIGTERM-then-SIGKILL on :meth:`stop`.
    Subclasses build the command line.
    """

    label: ClassVar[str] = "server"
    """Name used in messages (``"llama-server"``, ``"vLLM server"``)."""
    poll_seconds: ClassVar[float] = _POLL_S
    """Interval of the readiness polls."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        host: str,
        port: int,
        alias: str,
        model_path: Path,
        log_path: Path,
        log_file: IO[bytes],
    ) -> None:
        """Wrap an already started process; use the subclass's ``start`` instead of calling this directly.

        Args:
            process: The server process.
            host: Loopback address it listens on.
            port: TCP port it listens on.
            alias: Served model name.
            model_path: What it serves (a GGUF file or a Hugging Face folder).
            log_path: File receiving its stdout and stderr.
            log_file: Open handle of ``log_path`` (closed by :meth:`stop`).

        """
        self._process = process
        self._host = host
        self._port = port
        self._alias = alias
        self._model_path = model_path
        self._log_path = log_path
        self._log_file = log_file

    @staticmethod
    def _new_log(
        log_path: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None, prefix: str
    ) -> Path:
        if log_path is not None:
            log = Path(log_path)
            log.parent.mkdir(parents=True, exist_ok=True)
            return log
        logs_dir = resolve_cache_dir(cache_dir) / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=logs_dir, prefix=prefix, suffix=".log")
        os.close(fd)
        return Path(name)

    @classmethod
    def _launch(
        cls,
        command: Callable[[int], list[str]],
        *,
        host: str,
        port: int | None,
        alias: str,
        model_path: Path,
        log: Path,
        ready_timeout: float,
        env: dict[str, str] | None = None,
        shown_env: str = "",
    ) -> Self:
        """Start ``command(port)`` and wait until it is ready; with ``port=None``, retry on bind failures."""
        tries = 1 if port is not None else _MAX_PORT_TRIES
        last_error: ServingError | None = None
        for _ in range(tries):
            chosen = port if port is not None else _free_port(host)
            cmd = command(chosen)
            log_file = open(log, "wb")  # noqa: SIM115 - closed by stop()
            try:
                log_file.write(f"$ {shown_env}{' '.join(cmd)}\n".encode())
                log_file.flush()
                process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_pdeathsig_preexec(),
                    start_new_session=True,
                )
            except BaseException:
                log_file.close()
                raise
            server = cls(
                process, host=host, port=chosen, alias=alias, model_path=model_path, log_path=log, log_file=log_file
            )
            with _registry_lock:
                _registry.add(server)
            try:
                server._wait_ready(ready_timeout)
                return server
            except ServingError as exc:
                server.stop(timeout=5)
                last_error = exc
                if port is not None or not _BIND_FAILURE_RE.search(tail(log, 50)):
                    raise
            except BaseException:
                server.stop(timeout=5)
                raise
        assert last_error is not None
        raise last_error

    def _wait_ready(self, timeout: float) -> None:
        import urllib.error
        import urllib.request

        url = self._url("/health")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                message = f"{self.label} for {self._alias!r} {describe_exit(code)} before it was ready; "
                message += f"log {self._log_path}:\n{tail(self._log_path, 30)}"
                if code < 0:
                    raise ServerCrashedError(message, signal=-code)
                raise ServingError(message)
            try:
                with opener.open(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass  # not listening yet, or 503 while the model loads
            if time.monotonic() >= deadline:
                raise ServingError(
                    f"{self.label} for {self._alias!r} was not ready after {timeout:g} s; "
                    f"log {self._log_path}:\n{tail(self._log_path, 30)}"
                )
            time.sleep(self.poll_seconds)

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return self._url("/v1")

    def _url(self, path: str) -> str:
        """Return ``http://HOST:PORT`` followed by ``path`` (IPv6 hosts in brackets)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}{path}"

    @property
    def host(self) -> str:
        """Loopback address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """TCP port the server listens on."""
        return self._port

    @property
    def alias(self) -> str:
        """Served model name."""
        return self._alias

    @property
    def model_path(self) -> Path:
        """What the server serves (a GGUF file or a Hugging Face folder)."""
        return self._model_path

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self._process.pid

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The process's exit status (``-N``: killed by signal N), or ``None`` while it runs."""
        return self._process.poll()

    def _signal(self, sig: int) -> None:
        """Send ``sig`` to the server (subclasses may signal its whole process group)."""
        self._process.send_signal(sig)

    def _after_stop(self) -> None:
        """Hook run once the server process has exited."""

    def stop(self, timeout: float = 10) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice.

        Args:
            timeout: Seconds to wait after SIGTERM before killing.

        """
        try:
            if self._process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    self._signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        self._signal(signal.SIGKILL)
                    self._process.wait()
            self._after_stop()
        finally:
            with _registry_lock:
                _registry.discard(self)
            self._log_file.close()

    def __enter__(self) -> Self:
        """Return the running server."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Describe the server (alias, URL, pid, state)."""
        state = "running" if self.running else f"exited({self._process.returncode})"
        return f"{type(self).__name__}(alias={self._alias!r}, base_url={self.base_url!r}, pid={self.pid}, {state})"


class LlamaServer(ManagedServer):
    """A running ``llama-server`` process serving one model on ``127.0.0.1``.

    Create one with :meth:`start`; stop it with :meth:`stop` or by using it as a context manager.

    Example:
        >>> with LlamaServer.start(path, alias="smollm2-135m", binary=binary) as server:  # doctest: +SKIP
        ...     client = ChatOpenAI(base_url=server.base_url, model=server.alias, api_key="none")

    """

    label = "llama-server"

    @classmethod
    def start(
        cls,
        model_path: str | os.PathLike[str],
        *,
        alias: str,
        binary: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        ctx_size: int = 4096,
        threads: int = 2,
        parallel: int = 1,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        ready_timeout: float = 120.0,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> LlamaServer:
        """Start ``llama-server`` for one model and wait until ``GET /health`` answers 200.

        Runs ``BINARY -m FILE -a ALIAS --host HOST --port P -c CTX -t THREADS -np PARALLEL --no-webui
        *extra_args`` with stdout and stderr going to a log file. When ``port`` is ``None`` a free port is
        picked, and picked again (up to 3 tries) if the server cannot bind it.

        Args:
            model_path: The GGUF file to serve.
            alias: Model name the server reports and accepts (the client's ``model``).
            binary: The ``llama-server`` executable; ``None`` means the cached build for this machine (built on
                first use, see :func:`~glimp_graph.serving.ensure_llama_server`). If that build dies by a crash
                signal (SIGILL: an instruction this CPU or its kernel refuses) before it is ready, a portable
                build is made once, the reason is logged in one line (logger ``glimp_graph.serving``), and the
                server is started again with it; the portable build is used on this CPU from then on.
            host: Loopback address to listen on; anything else is refused.
            port: TCP port, or ``None`` for a free one.
            ctx_size: Context size in tokens (shared by all slots).
            threads: CPU threads for generation.
            parallel: Number of server slots (concurrent requests).
            extra_args: More command-line arguments, appended last.
            log_path: Log file (overwritten); ``None`` means a new file under ``<cache_dir>/logs``.
            ready_timeout: Seconds to wait for the health check before giving up.
            cache_dir: Cache root for the binary and the default log file; ``None`` means the default cache.
            progress: Show a progress bar if the binary has to be built.

        Returns:
            The running server.

        Raises:
            ValueError: ``host`` is not a loopback address.
            FileNotFoundError: The model file or the binary does not exist.
            ServingError: The server exited or was not ready in time (it is killed; the message shows the
                log tail).

        """
        check_loopback(host)
        model = Path(model_path)
        if not model.is_file():
            raise FileNotFoundError(f"model file not found: {model}")
        if binary is not None and not Path(binary).is_file():
            raise FileNotFoundError(f"llama-server binary not found: {binary}")
        log = cls._new_log(log_path, cache_dir, f"llama-server-{safe_name(alias)}-")

        def command(exe: Path, chosen: int) -> list[str]:
            return [
                str(exe),
                "-m",
                str(model),
                "-a",
                alias,
                "--host",
                host,
                "--port",
                str(chosen),
                "-c",
                str(ctx_size),
                "-t",
                str(threads),
                "-np",
                str(parallel),
                "--no-webui",
                *extra_args,
            ]

        def launch(exe: Path) -> LlamaServer:
            return cls._launch(
                lambda chosen: command(exe, chosen),
                host=host,
                port=port,
                alias=alias,
                model_path=model,
                log=log,
                ready_timeout=ready_timeout,
            )

        if binary is not None:
            return launch(Path(binary))
        exe = ensure_llama_server(cache_dir, progress=progress)
        try:
            return launch(exe)
        except ServerCrashedError as exc:
            if exc.signal not in CRASH_SIGNALS or exe == llama_server_path(cache_dir, portable=True):
                raise
            reason = (
                f"llama-server built for this CPU was killed by {_signal_name(exc.signal)} before it was ready "
                "(an instruction this machine refuses); building a portable llama-server once and using it "
                "from now on"
            )
        logger.warning(reason)
        record_crash(cache_dir, reason)
        return launch(ensure_llama_server(cache_dir, portable=True, progress=progress))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(code: int) -> str:
    """Say how a process ended, from its exit status.

    Args:
        code: The status as :mod:`subprocess` reports it (``-N``: killed by signal N).

    Returns:
        ``"exited with code 1"`` or ``"was killed by SIGILL (exit code -4)"``.

    """
    if code < 0:
        return f"was killed by {_signal_name(-code)} (exit code {code})"
    return f"exited with code {code}"


def stop_all(timeout: float = 5) -> None:
    """Stop every server started by this process that is still registered.

    Args:
        timeout: Seconds each server gets after SIGTERM before SIGKILL.

    """
    with _registry_lock:
        servers = list(_registry)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout=timeout)


atexit.register(stop_all)
