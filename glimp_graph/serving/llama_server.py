"""Build (once) and find llama.cpp's ``llama-server`` binary.

The source is the llama.cpp tree vendored in the ``llama-cpp-python`` sdist on PyPI, so no network access
beyond PyPI is needed. The binary is cached under ``<cache>/bin`` with a name keyed by the version, the CMake
flags, the architecture and the CPU (model name and the kernel's feature flags), so only the first run pays for
the build (minutes) and two CPUs that share a cache folder never run each other's binaries.

Two builds exist (see :func:`cmake_flags`):

- the **default** build: on x86-64, ``GGML_NATIVE=OFF`` with each instruction-set option of ggml switched on
  exactly when the kernel lists the feature in ``/proc/cpuinfo``, and AMX always off. ``GGML_NATIVE=ON`` compiles
  with ``-march=native``, which on Xeons of the 4th generation and later turns ggml's AMX kernels on; those run
  AMX instructions that a Linux process must first request from the kernel, and the build died with SIGILL at its
  first matrix product. Naming the features from the kernel's own list keeps AVX-512/VNNI/BF16 speed and never
  compiles in an instruction the kernel did not report. On other architectures, and where there is no
  ``/proc/cpuinfo`` to read (not Linux), it is ggml's native build.
- the **portable** build: x86-64's common tiers only, no AVX-512, no AMX: x86-64-v3 (AVX2, FMA, F16C, BMI2:
  every x86 server CPU since about 2015) when the kernel lists all of it, else SSE4.2, else plain x86-64. A
  baseline-only build decoded about 10-20x slower on the Qwen 0.5B here (docs/ARCHITECTURE.md), so the tier is
  kept where the CPU has it. On other architectures it is ggml's build without native tuning. It is
  built once, automatically, when a server of the default build dies by a crash signal before it is ready
  (:func:`record_crash`), or on request (``glimp fetch --portable``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import signal
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from glimp_graph.serving._commands import pip_download, run_logged
from glimp_graph.serving._paths import file_lock, resolve_cache_dir, sha256_file, tail
from glimp_graph.serving.errors import ServingError

__all__ = [
    "CRASH_SIGNALS",
    "LLAMA_CPP_PYTHON_VERSION",
    "build_llama_server",
    "cmake_flags",
    "ensure_llama_server",
    "find_llama_server",
    "llama_server_path",
    "record_crash",
]

logger = logging.getLogger("glimp_graph.serving")

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""Version of the ``llama-cpp-python`` sdist whose vendored llama.cpp is built."""
#: sha256 of the pinned sdist (llama_cpp_python-0.3.36.tar.gz); pip checks it before preparing the archive.
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

#: Signals that mean "this binary cannot run on this machine" when a server dies of one before it is ready.
#: SIGKILL and SIGTERM are not among them: they come from outside (the OOM killer, a user), not from the build.
CRASH_SIGNALS: frozenset[int] = frozenset({signal.SIGILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE})

_BASE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)
#: ggml's x86 instruction-set options and the ``/proc/cpuinfo`` flags each one compiles in (ggml's
#: ggml-cpu/CMakeLists.txt: GGML_AVX512 adds -mavx512f/cd/vl/dq/bw; the extensions need AVX512F too).
_X86_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512f", "avx512vbmi")),
    ("GGML_AVX512_VNNI", ("avx512f", "avx512_vnni")),
    ("GGML_AVX512_BF16", ("avx512f", "avx512_bf16")),
)
#: The portable build's tiers, best first: the options switched on and the flags each needs (x86-64-v3, v2).
_X86_PORTABLE_TIERS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (
        ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_BMI2", "GGML_FMA", "GGML_F16C"),
        ("sse4_2", "avx", "avx2", "bmi2", "fma", "f16c"),
    ),
    (("GGML_SSE42",), ("sse4_2",)),
)
#: Never compiled in: AMX needs a per-process permission from the kernel (see the module docstring).
_X86_ALWAYS_OFF: tuple[str, ...] = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def _is_x86_64(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """Return the first ``model name`` and ``flags`` values of ``/proc/cpuinfo`` (empty when unavailable).

    Read once per process: every binary path (default, portable, the crash marker) is keyed by it.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in ("model name", "flags") and key not in found:
            found[key] = value.strip()
        if len(found) == 2:
            break
    return found


def cpu_features() -> frozenset[str]:
    """Return the CPU feature flags the kernel reports (``/proc/cpuinfo``), empty where there is no such file.

    Returns:
        The flags, e.g. ``{"avx2", "avx512f", ...}``.

    """
    return frozenset(_cpuinfo().get("flags", "").split())


def cmake_flags(
    *, portable: bool = False, features: Iterable[str] | None = None, machine: str | None = None
) -> list[str]:
    """Return the CMake configure flags of the default or the portable build.

    Args:
        portable: ``True`` for the portable build (x86-64: the best of x86-64-v3, SSE4.2 or the baseline that
            ``features`` cover; no AVX-512, no AMX).
        features: CPU feature flags to build for; ``None`` means :func:`cpu_features` of this machine.
        machine: The architecture (``platform.machine()``); ``None`` means this machine's.

    Returns:
        The ``-D`` flags, in order.

    """
    have = frozenset(cpu_features() if features is None else features)
    if not _is_x86_64(machine) or not (have or portable):
        # other architectures, or no kernel feature list to name (no /proc/cpuinfo: not Linux): ggml's own choice
        return [*_BASE_FLAGS, f"-DGGML_NATIVE={'OFF' if portable else 'ON'}"]
    if portable:
        tier = next((options for options, needs in _X86_PORTABLE_TIERS if set(needs) <= have), ())
        isa = [f"-D{option}={'ON' if option in tier else 'OFF'}" for option, _ in _X86_OPTIONS]
    else:
        isa = [f"-D{option}={'ON' if set(needs) <= have else 'OFF'}" for option, needs in _X86_OPTIONS]
    return [*_BASE_FLAGS, "-DGGML_NATIVE=OFF", *isa, *(f"-D{option}=OFF" for option in _X86_ALWAYS_OFF)]


def _build_key(*, portable: bool) -> str:
    info = _cpuinfo()
    parts = [
        LLAMA_CPP_PYTHON_VERSION,
        *cmake_flags(portable=portable),
        platform.machine(),
        info.get("model name", platform.processor()),
        info.get("flags", ""),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def llama_server_path(cache_dir: str | os.PathLike[str] | None = None, *, portable: bool = False) -> Path:
    """Return where the cached binary for this version, build kind and CPU lives (it may not exist).

    Args:
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        portable: Whether the path is for the portable build or the default one.

    Returns:
        ``<cache>/bin/llama-server-<version>-<key>`` (``-portable`` appended for the portable build).

    """
    root = resolve_cache_dir(cache_dir)
    suffix = "-portable" if portable else ""
    return root / "bin" / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-{_build_key(portable=portable)}{suffix}"


def _crash_marker(cache_dir: str | os.PathLike[str] | None) -> Path:
    default = llama_server_path(cache_dir)
    return default.with_name(default.name + ".crashed")


def record_crash(cache_dir: str | os.PathLike[str] | None, reason: str) -> None:
    """Remember that the default build cannot run on this CPU, so the portable one is used from now on.

    Args:
        cache_dir: Cache root; ``None`` means the default cache.
        reason: One line saying what happened (kept in the marker file next to the binary).

    """
    marker = _crash_marker(cache_dir)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(reason + "\n", encoding="utf-8")


def _needs_portable(cache_dir: str | os.PathLike[str] | None) -> bool:
    return _crash_marker(cache_dir).is_file()


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_llama_server(cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the cached ``llama-server`` binary this machine should run, or ``None`` if it is not built yet.

    That is the default build for this CPU, unless a server of it died by a crash signal here
    (:func:`record_crash`); then it is the portable build.

    Args:
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.

    Returns:
        The binary's path, or ``None``.

    """
    path = llama_server_path(cache_dir, portable=_needs_portable(cache_dir))
    return path if _is_executable(path) else None


def ensure_llama_server(
    cache_dir: str | os.PathLike[str] | None = None, *, portable: bool | None = None, progress: bool = True
) -> Path:
    """Return the binary this machine should run (see :func:`find_llama_server`), building it if needed.

    Args:
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        portable: ``True`` or ``False`` forces that build; ``None`` picks the default build unless it crashed
            on this CPU before.
        progress: Show a progress bar while building.

    Returns:
        Path of the executable.

    Raises:
        ServingError: The build failed (see :func:`build_llama_server`).

    """
    if portable is None:
        portable = _needs_portable(cache_dir)
    return build_llama_server(cache_dir, portable=portable, progress=progress)


def _find_cmake() -> str:
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake  # type: ignore[import-not-found]

        candidate = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if _is_executable(candidate):
            return str(candidate)
    except (ImportError, AttributeError):
        pass
    raise ServingError(
        "building llama-server needs CMake, which was not found: install it with `pip install cmake` "
        "(or your system's package manager, e.g. `apt-get install cmake`)"
    )


def _check_compilers() -> None:
    if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        raise ServingError(
            "building llama-server needs a C++ compiler (c++, g++ or clang++), none was found: install one, "
            "e.g. `apt-get install g++` or `xcode-select --install`"
        )
    if not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        raise ServingError(
            "building llama-server needs a C compiler (cc, gcc or clang), none was found: install one, "
            "e.g. `apt-get install gcc`"
        )


def _generator_args() -> list[str]:
    if shutil.which("make") or shutil.which("gmake"):
        return []  # CMake's default (Unix Makefiles) prints "[ NN%]" progress lines
    if shutil.which("ninja"):
        return ["-G", "Ninja"]
    hint = "install one (e.g. `apt-get install make`)"
    raise ServingError(f"building llama-server needs `make` or `ninja`; {hint}")


def _fetch_sdist(src_dir: Path) -> Path:
    """Return the pinned sdist in ``src_dir``, downloading it (sha256-checked by pip) when it is missing."""
    sdist = src_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if sdist.is_file():
        if sha256_file(sdist) == LLAMA_CPP_PYTHON_SHA256:
            return sdist
        sdist.unlink()  # a cached file that is not the pinned one is never built
    src_dir.mkdir(parents=True, exist_ok=True)
    requirement = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    with tempfile.TemporaryDirectory(prefix="glimp-sdist-", dir=src_dir) as tmp:
        os.replace(pip_download(requirement, Path(tmp), sdist=True, sha256=LLAMA_CPP_PYTHON_SHA256), sdist)
    return sdist


def _extract_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Extract ``<top>/vendor/llama.cpp`` from the sdist into ``dest`` and return the source root."""
    marker = "/vendor/llama.cpp/"
    with tarfile.open(sdist, "r:gz") as archive:
        members = [m for m in archive.getmembers() if marker in m.name + "/"]
        if not members:
            raise ServingError(f"{sdist.name} has no vendor/llama.cpp tree")
        kwargs: dict[str, object] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(dest, members=members, **kwargs)  # type: ignore[arg-type]
    top = members[0].name.split("/", 1)[0]
    root = dest / top / "vendor" / "llama.cpp"
    if not (root / "CMakeLists.txt").is_file():
        raise ServingError(f"{sdist.name}: vendor/llama.cpp has no CMakeLists.txt")
    return root


def build_llama_server(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    portable: bool = False,
    progress: bool = True,
    jobs: int | None = None,
) -> Path:
    """Return the cached ``llama-server`` binary, building it from source on first use.

    The build downloads the ``llama-cpp-python`` sdist (kept in ``<cache>/src``), configures its vendored
    llama.cpp with :func:`cmake_flags`, builds only the ``llama-server`` target, and atomically copies the
    binary to :func:`llama_server_path`. The build output goes to ``<cache>/logs/llama-server-build.log``.
    A file lock makes concurrent callers wait for one build. About 7 minutes on 2 cores.

    Args:
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        portable: Build the portable binary instead of the default one (see :func:`cmake_flags`).
        progress: Show a tqdm progress bar driven by the build's ``[ NN%]`` lines.
        jobs: Parallel compile jobs; ``None`` means ``os.cpu_count()``.

    Returns:
        Path of the executable.

    Raises:
        ServingError: CMake, a compiler or make is missing, the sdist download failed, or the build failed
            (the message names the log file and shows its last 30 lines).

    """
    root = resolve_cache_dir(cache_dir)
    target = llama_server_path(root, portable=portable)
    if _is_executable(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root / "bin" / ".llama-server-build.lock"):
        if _is_executable(target):
            return target
        _build(root, target, portable=portable, progress=progress, jobs=jobs or os.cpu_count() or 1)
    return target


def _build(root: Path, target: Path, *, portable: bool, progress: bool, jobs: int) -> None:
    from tqdm.auto import tqdm

    cmake = _find_cmake()
    _check_compilers()
    generator = _generator_args()
    sdist = _fetch_sdist(root / "src")
    log_path = root / "logs" / "llama-server-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    build_root = Path(tempfile.mkdtemp(prefix="llama-server-build-", dir=root))
    try:
        with (
            open(log_path, "w", encoding="utf-8") as log,
            tqdm(
                total=100,
                desc="build llama-server" + (" (portable)" if portable else ""),
                unit="%",
                disable=not progress,
            ) as bar,
        ):
            source = _extract_llama_cpp(sdist, build_root / "src")
            build_dir = build_root / "build"
            configure = [
                cmake,
                "-S",
                str(source),
                "-B",
                str(build_dir),
                *generator,
                *cmake_flags(portable=portable),
            ]
            rc = run_logged(configure, log)
            if rc == 0:
                build = [cmake, "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)]
                rc = run_logged(build, log, bar=bar)
            if rc != 0:
                raise ServingError(
                    f"building llama-server failed (exit {rc}); full log: {log_path}\n"
                    f"--- last 30 lines ---\n{tail(log_path, 30)}"
                )
            if bar.n < 100:
                bar.update(100 - bar.n)
        built = build_dir / "bin" / "llama-server"
        if not _is_executable(built):
            raise ServingError(f"the build finished but {built} is missing; full log: {log_path}")
        _install_binary(built, target)
    finally:
        shutil.rmtree(build_root, ignore_errors=True)


def _install_binary(built: Path, target: Path) -> None:
    """Copy ``built`` to ``target`` atomically (copy to a temp file in the same folder, then rename)."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(built, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
