"""``glimp serve-router --workers 2`` as a real process tree: uvicorn's worker processes share the socket and report
one set of metrics.

The model servers are the unit tests' fake OpenAI servers (what is real here is the router: its command, its worker
processes, their shared metrics folder). It lives with the integration tests because it starts three Python
processes that each import the whole stack (seconds, not the unit suite's milliseconds).
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

from tests.unit import conftest as unit
from tests.unit.conftest import ScriptStep, unused_port

# The unit tier's fake servers and scripted model, as fixtures of this module (pytest collects the fixtures a module
# holds, wherever they were defined).
fake_small, fake_large, scripted = unit.fake_small, unit.fake_large, unit.scripted

pytestmark = pytest.mark.integration


def test_serve_router_two_workers_share_the_socket_and_report_one_set_of_metrics(
    tmp_path, fake_small, fake_large, scripted
):
    """A real ``glimp serve-router --workers 2`` on loopback over the fakes: both worker pids answer (read from
    the JSON log lines), ``/metrics`` from either worker counts every request of both, no token in the log, and
    the metrics folder is removed when the server stops."""
    from prometheus_client.parser import text_string_to_metric_families

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
