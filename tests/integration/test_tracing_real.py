"""LangSmith tracing, proven offline: a local sink plays the LangSmith API and records every byte sent to it.

The graph runs in a subprocess configured the way users do it (``LANGSMITH_TRACING``, ``LANGSMITH_ENDPOINT``,
``LANGSMITH_API_KEY``), against the real SmolLM2 servers; the test then rebuilds the run tree from what the sink
received (``POST /runs/multipart`` parts, or ``POST /runs/batch`` JSON).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LANGSMITH_KEY = "lsv2_pt_fake0000000000000000000000000000_0123456789"
ENDPOINT_KEY = "sk-test-secret-7f3a9c1d2e4b5a6978"

CHILD = r"""
import json, os
from langchain_core.tracers.langchain import wait_for_all_tracers
from glimp_graph import Endpoint, create_glimp_graph

small = Endpoint(base_url=os.environ["SMALL_URL"], model="small", api_key=os.environ["ENDPOINT_KEY"], temperature=0.0)
large = Endpoint(base_url=os.environ["LARGE_URL"], model="large", api_key=os.environ["ENDPOINT_KEY"], temperature=0.0)
config = {"tau": float(os.environ["TAU"]), "max_step_tokens": 32, "max_thinking_tokens": 96, "max_steps": 3,
          "final_max_tokens": 16}
graph = create_glimp_graph(small, large, config=config)
out = graph.invoke({"question": "What is 17 * 3?"})
wait_for_all_tracers()
print(json.dumps({"steps": [s.model_dump() for s in out["glimp_steps"]], "answer": out["glimp_answer"]}))
"""


class Sink:
    """A stand-in LangSmith API on 127.0.0.1 that accepts everything and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                sink.requests.append((self.command, self.path, dict(self.headers.items()), body))
                return body

            def do_GET(self) -> None:
                self._record()
                if self.path.startswith("/info"):
                    self._reply(200, {"version": "0.0.0-sink", "instance_flags": {}, "batch_ingest_config": {}})
                else:
                    self._reply(200, {})

            def do_POST(self) -> None:
                self._record()
                self._reply(202 if "/runs" in self.path else 200, {})

            do_PATCH = do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def runs(self) -> dict[str, dict[str, Any]]:
        """Every run the client sent, its creation and update merged, by id."""
        runs: dict[str, dict[str, Any]] = defaultdict(dict)
        for method, path, headers, body in self.requests:
            if method == "POST" and path.startswith("/runs/multipart"):
                head = f"Content-Type: {headers.get('Content-Type') or headers.get('content-type')}\r\n\r\n"
                message = BytesParser(policy=HTTP).parsebytes(head.encode() + body)
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    _kind, run_id, *field = name.split(".")
                    value = json.loads(part.get_payload(decode=True) or b"null")
                    if field:
                        runs[run_id][field[0]] = value
                    else:
                        runs[run_id].update({k: v for k, v in value.items() if v is not None})
            elif method == "POST" and path.startswith("/runs/batch"):
                batch = json.loads(body)
                for run in [*(batch.get("post") or []), *(batch.get("patch") or [])]:
                    runs[str(run["id"])].update({k: v for k, v in run.items() if v is not None})
            elif method == "POST" and path.rstrip("/") == "/runs":
                run = json.loads(body)
                runs[str(run["id"])].update(run)
            elif method == "PATCH" and path.startswith("/runs/"):
                runs[path.split("/")[2]].update({k: v for k, v in json.loads(body).items() if v is not None})
        for run_id, run in runs.items():
            run.setdefault("id", run_id)
        return dict(runs)


@pytest.fixture
def sink():
    server = Sink()
    yield server
    server.close()


@pytest.mark.parametrize("tau", ["inf", "-inf"])
def test_langsmith_run_tree_sent_offline(smol_pair, sink, tau):
    small, large = smol_pair
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))} | {
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_ENDPOINT": sink.url,
        "LANGSMITH_API_KEY": LANGSMITH_KEY,
        "LANGSMITH_PROJECT": "glimp-offline-test",
        "SMALL_URL": small.base_url,
        "LARGE_URL": large.base_url,
        "ENDPOINT_KEY": ENDPOINT_KEY,
        "TAU": tau,
    }
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = result["steps"]
    role = "small" if tau == "inf" else "large"
    assert steps and {s["model"] for s in steps} == {role}

    paths = {(m, p.split("?")[0]) for m, p, _, _ in sink.requests}
    assert ("POST", "/runs/multipart") in paths or ("POST", "/runs/batch") in paths, paths

    # no secret in any byte of any body; the endpoint key not in the headers either (the LangSmith key is
    # the sink's credential: it travels only in the x-api-key header)
    for method, path, headers, body in sink.requests:
        assert LANGSMITH_KEY.encode() not in body, (method, path)
        assert ENDPOINT_KEY.encode() not in body, (method, path)
        assert ENDPOINT_KEY not in json.dumps(headers), (method, path)
        assert LANGSMITH_KEY not in json.dumps({k: v for k, v in headers.items() if k.lower() != "x-api-key"})
    sent_keys = {
        v for _, p, h, _ in sink.requests if p.startswith("/runs") for k, v in h.items() if k.lower() == "x-api-key"
    }
    assert sent_keys == {LANGSMITH_KEY}

    runs = sink.runs()
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert [r["name"] for r in roots] == ["glimp_router"], [r.get("name") for r in roots]
    root = roots[0]
    assert root.get("end_time") and not root.get("error")
    assert root["outputs"]["glimp_answer"] == result["answer"]

    children = defaultdict(list)
    for run in runs.values():
        if run.get("parent_run_id"):
            children[str(run["parent_run_id"])].append(run)
    nodes = sorted(children[str(root["id"])], key=lambda r: r["dotted_order"])
    names = [n["name"] for n in nodes]
    n = len(steps)
    assert names[0] == "prepare" and names[-1] == "final_answer", names
    assert names.count("probe") == n and names.count("route") == n and names.count(f"{role}_step") == n, names

    llm = sorted((r for r in runs.values() if r.get("run_type") == "llm"), key=lambda r: r["dotted_order"])
    assert all(str(r["trace_id"]) == str(root["id"]) for r in llm)
    llm_names = [r["name"] for r in llm]
    assert llm_names.count("probe") == n and llm_names[-1] == "final_answer", llm_names
    for run in llm:
        parent = runs[str(run["parent_run_id"])]
        assert parent["name"] == run["name"], (parent["name"], run["name"])  # each model call under its node
        tags = run.get("tags") or []
        metadata = (run.get("extra") or {}).get("metadata") or {}
        expected_role = "small" if run["name"] in ("probe", "small_step") else "large"
        assert "glimp" in tags and f"glimp:{expected_role}" in tags, (run["name"], tags)
        assert metadata.get("glimp_role") == expected_role
        assert "glimp_step" in metadata and "glimp_tau" in metadata, metadata
        if run["name"] in ("small_step", "large_step"):
            assert metadata["glimp_route"] == run["name"].split("_")[0]
            assert "glimp_h_init" in metadata
            step = steps[metadata["glimp_step"]]
            assert step["model"] == metadata["glimp_route"]
            assert metadata["glimp_h_init"] == pytest.approx(step["h_init"])
        if run["name"] == "final_answer":
            assert metadata["glimp_route"] == "large" and metadata["glimp_step"] == n
    step_calls = [r for r in llm if r["name"] in ("small_step", "large_step")]
    called = {((r.get("extra") or {}).get("metadata") or {})["glimp_step"] for r in step_calls}
    assert called and called <= {s["index"] for s in steps}  # a step after an end-of-sequence probe needs no call
