"""The default llama-server build never compiles AMX code, even for a CPU that lists AMX (real CMake, real gcc).

A Sapphire Rapids Xeon lists ``amx_tile amx_int8 amx_bf16`` among its flags; ``GGML_NATIVE=ON`` there compiles
ggml's AMX kernels (``ggml-cpu/amx/mmq.cpp``), which died with SIGILL. This configures the vendored llama.cpp
with :func:`cmake_flags` for that CPU's flag list, compiles the AMX translation unit with the exact command CMake
generated, and looks for AMX instructions in the object file; the same compile with AMX switched on (what
``-march=native`` implies on that CPU) must show them, so the check can fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from glimp_graph.serving import llama_server as llama_server_module
from glimp_graph.serving.llama_server import cmake_flags

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(map(shutil.which, ("cmake", "c++", "objdump"))) or os.uname().machine != "x86_64",
        reason="needs cmake, a C++ compiler and objdump on x86-64",
    ),
]

#: /proc/cpuinfo flags of an Intel Xeon Platinum 8480+ (Sapphire Rapids), the ones ggml's options look at.
SAPPHIRE_RAPIDS = [
    "sse4_2",
    "avx",
    "avx2",
    "bmi2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512cd",
    "avx512vl",
    "avx512dq",
    "avx512bw",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_tile",
    "amx_int8",
]
AMX_INSTRUCTION = re.compile(r"\b(ldtilecfg|tilezero|tileloadd|tdpbssd|tdpbusd|tdpbf16ps|tilestored)\b")


@pytest.fixture(scope="module")
def llama_cpp_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = Path(os.environ["GLIMP_CACHE_DIR"]) if os.environ.get("GLIMP_CACHE_DIR") else None
    root = llama_server_module.resolve_cache_dir(cache)
    sdist = llama_server_module._fetch_sdist(root / "src")
    return llama_server_module._extract_llama_cpp(sdist, tmp_path_factory.mktemp("llama-src"))


def _amx_instructions(source: Path, build: Path, flags: list[str]) -> int:
    """Configure with ``flags``, compile ggml-cpu/amx/mmq.cpp as CMake would, count AMX instructions."""
    configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON", *flags]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    entries = json.loads((build / "compile_commands.json").read_text())
    entry = next(e for e in entries if e["file"].endswith("ggml-cpu/amx/mmq.cpp"))
    command = shlex.split(entry["command"])
    obj = Path(command[command.index("-o") + 1])
    obj = obj if obj.is_absolute() else Path(entry["directory"]) / obj
    obj.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(command, cwd=entry["directory"], check=True, capture_output=True, text=True)
    disassembly = subprocess.run(["objdump", "-d", str(obj)], check=True, capture_output=True, text=True).stdout
    return len(AMX_INSTRUCTION.findall(disassembly))


def test_default_build_for_a_sapphire_rapids_cpu_has_no_amx_code(llama_cpp_source: Path, tmp_path: Path) -> None:
    ours = cmake_flags(features=SAPPHIRE_RAPIDS, machine="x86_64")
    assert "-DGGML_AVX512_VNNI=ON" in ours  # the AVX-512 kernels stay: only AMX is left out
    assert _amx_instructions(llama_cpp_source, tmp_path / "ours", ours) == 0
    with_amx = [f.replace("AMX_TILE=OFF", "AMX_TILE=ON").replace("AMX_INT8=OFF", "AMX_INT8=ON") for f in ours]
    assert _amx_instructions(llama_cpp_source, tmp_path / "amx", with_amx) > 0
