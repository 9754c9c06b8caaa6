"""``glimp serve`` when one of its two servers dies: which one, how, its log's last lines, the other stopped, exit 1.

The servers are stand-in processes (Python one-liners) wrapped in the real :class:`ManagedServer`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
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


def test_serve_router_two_workers_share_the_socket_and_report_one_set_of_metrics(
    tmp_path, fake_small, fake_large, scripted
):
    """A real ``glimp serve-router --workers 2`` on loopback over the fakes: both worker pids answer (read from
    the JSON log lines), ``/metrics`` from either worker counts every request of both, no token in the log, and
    the metrics folder is removed when the server stops."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.unit.conftest import ScriptStep, unused_port

    chat_path = "/v1/chat/completions"
    scripted([ScriptStep(0.2, "Add 3 and 4."), ScriptStep(2.0, "So the answer is \\boxed{7}.")], answer="7")
    port, token, scrape = unused_port(), "api-token-for-workers", "metrics-token-for-workers"
    root = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve-router.log"
    command = [
        *(sys.executable, "-m", "glimp_graph.cli", "serve-router", "--workers", "2", "--log-format", "json"),
        *("--small-url", fake_small.url + "/v1", "--large-url", fake_large.url + "/v1", "--port", str(port)),
        *("--api-key", "upstream-key-for-workers", "--metrics-token", scrape),
    ]
    temp = tmp_path / "tmp"  # the server's temporary folder, where its metrics folder goes
    temp.mkdir()
    env = {**os.environ, "GLIMP_ROUTER_TOKEN": token, "TMPDIR": str(temp)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[2])
    auth = {"Authorization": f"Bearer {token}"}
    question = {"messages": [{"role": "user", "content": "3 + 4?"}]}

    def ask(_: int) -> int:
        return httpx.post(f"{root}{chat_path}", json=question, headers=auth, timeout=30).status_code

    def runs() -> list[dict[str, Any]]:
        lines = log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and '"event": "run"' in line]

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{root}/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(8):  # rounds of 8 concurrent requests until both workers answered one
                assert set(pool.map(ask, range(8))) == {200}
                sent += 8
                if len({line["pid"] for line in runs()}) == 2:
                    break
        pids = {line["pid"] for line in runs()}
        assert len(pids) == 2 and proc.pid not in pids, pids
        assert httpx.get(f"{root}/metrics", headers=auth, timeout=10).status_code == 401
        for _ in range(4):  # whichever worker answers /metrics, it counts the requests of both
            text = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {scrape}"}, timeout=10).text
            values = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            assert values[("glimp_http_requests_total", (("endpoint", chat_path), ("status", "200")))] == sent
            assert values[("glimp_steps_total", (("model", "large"),))] == sent
        (metrics_dir,) = temp.glob("glimp-metrics-*")
        assert len(list(metrics_dir.glob("*.db"))) >= 2  # a file per worker process (and kind of metric)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    lines = runs()
    assert len(lines) == sent and all(line["status"] == 200 and line["steps"] == 2 for line in lines)
    text = log_path.read_text()
    assert token not in text and scrape not in text and "upstream-key-for-workers" not in text
    assert proc.returncode == 0, text[-3000:]
    assert not list(temp.glob("glimp-metrics-*")), "the metrics folder is left behind"
