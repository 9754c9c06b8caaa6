"""``glimp serve`` when one of its two servers dies: which one, how, its log's last lines, the other stopped, exit 1.

The servers are stand-in processes (Python one-liners) wrapped in the real :class:`ManagedServer`. ``glimp
serve-router``'s options and one graph behind them, with uvicorn standing in; a real ``--workers 2`` process tree is
tested in ``tests/integration/test_serve_router_workers_real.py`` (three processes that each import the stack).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from glimp_graph.cli import main
from glimp_graph.serving.process import ManagedServer

DIES = (
    "import os, signal, sys; print('loading model'); print('GGML_ASSERT: out of memory'); sys.stdout.flush(); "
    "os.kill(os.getpid(), signal.SIGKILL)"
)
EXITS = "import sys; print('main: error: invalid argument: --bogus'); sys.exit(3)"
LIVES = "import time; time.sleep(600)"


def _server(script: str, alias: str, log: Path) -> ManagedServer:
    log_file = open(log, "wb")  # noqa: SIM115 - closed by ManagedServer.stop
    process = subprocess.Popen([sys.executable, "-c", script], stdout=log_file, stderr=subprocess.STDOUT)
    if script != LIVES:
        # the stand-in dies before ``glimp serve`` looks at it (as a server may die any time after it was ready),
        # so the command finds it dead at its first look, not one of its 1 s polls later
        process.wait(timeout=60)
    return ManagedServer(
        process, host="127.0.0.1", port=9, alias=alias, model_path=log, log_path=log, log_file=log_file
    )


def _fake_local_models(tmp_path: Path, scripts: dict[str, str], seen: list[Any]) -> type:
    class FakeLocalModels:
        """Stands in for :class:`~glimp_graph.serving.LocalModels` with stand-in server processes."""

        def __init__(self, small: str, large: str, **kwargs: Any) -> None:
            self.names = {"small": small, "large": large}
            self.exited = False
            seen.append(self)

        def __enter__(self) -> FakeLocalModels:
            self.small = _server(scripts["small"], self.names["small"], tmp_path / "small.log")
            self.large = _server(scripts["large"], self.names["large"], tmp_path / "large.log")
            return self

        def __exit__(self, *exc: object) -> None:
            self.large.stop(timeout=5)
            self.small.stop(timeout=5)
            self.exited = True

    return FakeLocalModels


@pytest.mark.parametrize("dead", ["small", "large"])
def test_serve_names_the_server_that_died_its_signal_and_its_log_then_stops_the_other(tmp_path, monkeypatch, dead):
    scripts = {"small": LIVES, "large": LIVES, dead: DIES}
    seen: list[Any] = []
    monkeypatch.setattr("glimp_graph.serving.LocalModels", _fake_local_models(tmp_path, scripts, seen))
    result = CliRunner().invoke(main, ["serve", "--local-small", "smollm2-135m", "--local-large", "qwen2.5-coder-0.5b"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    alias = {"small": "smollm2-135m", "large": "qwen2.5-coder-0.5b"}[dead]
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.output
    assert f"{dead} model's server ({alias}) was killed by SIGKILL" in error[0]
    other = {"small": "large", "large": "small"}[dead]
    assert f"the {other} model's server was stopped" in error[0]
    assert str(tmp_path / f"{dead}.log") in result.output
    assert "GGML_ASSERT: out of memory" in result.output
    (models,) = seen
    assert models.exited
    assert not models.small.running and not models.large.running


def test_serve_reports_a_plain_exit_code(tmp_path, monkeypatch):
    seen: list[Any] = []
    scripts = {"small": LIVES, "large": EXITS}
    monkeypatch.setattr("glimp_graph.serving.LocalModels", _fake_local_models(tmp_path, scripts, seen))
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1, result.output
    assert "large model's server (qwen2.5-coder-1.5b) exited with code 3" in result.output
    assert "invalid argument: --bogus" in result.output
    assert seen[0].exited and not seen[0].small.running


# --------------------------------------------------------------------------- glimp serve-router


def test_serve_router_serves_one_graph_with_the_options(monkeypatch, fake_small, fake_large, scripted):
    """``glimp serve-router`` builds one graph and hands create_app its options (uvicorn stands in)."""
    import uvicorn
    from starlette.testclient import TestClient

    from tests.unit.conftest import ScriptStep

    scripted([ScriptStep(0.2, "Add 3 and 4."), ScriptStep(2.0, "So the answer is \\boxed{7}.")], answer="7")
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append({"app": app, **kwargs}))
    args = [
        "serve-router",
        *("--small-url", fake_small.url + "/v1", "--large-url", fake_large.url + "/v1"),
        *("--model-name", "glimp", "--tau", "1.0", "--keep-alive", "2.5", "--port", "8123"),
        *("--metrics-token", "scrape-me", "--log-format", "json"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "GlimpRouter on http://127.0.0.1:8123/v1 (model 'glimp')" in result.output
    (run,) = served
    assert run["host"] == "127.0.0.1" and run["port"] == 8123
    assert run["log_config"]["formatters"]["glimp"] == {"()": "glimp_graph.metrics.JsonFormatter"}
    settings = run["app"].state.glimp
    assert settings.keepalive_seconds == 2.5 and set(settings.endpoints) == {"small", "large"}
    assert settings.authorization is None and settings.metrics_authorization == b"Bearer scrape-me"
    question = {"messages": [{"role": "user", "content": "3 + 4?"}]}
    with TestClient(run["app"]) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/health?deep=1").json()["endpoints"] == {"small": "ok", "large": "ok"}
        routes = {}
        for model in ("glimp", "glimp@1e9", "glimp@-1e9"):
            r = client.post("/v1/chat/completions", json={**question, "model": model})
            assert r.status_code == 200, r.text
            routes[model] = [s["model"] for s in r.json()["glimp"]["steps"]]
    assert routes == {"glimp": ["small", "large"], "glimp@1e9": ["small", "small"], "glimp@-1e9": ["large", "large"]}


def test_serve_router_keep_alive_must_be_positive():
    result = CliRunner().invoke(main, ["serve-router", "--keep-alive", "0"])
    assert result.exit_code == 2 and "--keep-alive" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "value"), [("--workers", "0"), ("--log-format", "xml")], ids=["workers", "log-format"]
)
def test_serve_router_bad_operations_options_are_usage_errors(option, value):
    result = CliRunner().invoke(main, ["serve-router", option, value])
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output
