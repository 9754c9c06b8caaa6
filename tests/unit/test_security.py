"""Security properties: the API key stays secret (but is sent), and local model servers are started on loopback only.

That real servers then LISTEN on 127.0.0.1 only (their sockets, read from /proc) is tested in
``tests/integration/test_loopback_real.py`` (llama-server) and ``tests/integration/test_router_server_real.py``
(``glimp serve-router``). The third property, pinned weights (a sha256 mismatch aborts and leaves no file), is
tested in ``tests/unit/test_serving.py::test_sha256_mismatch_aborts_and_leaves_no_file``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.load import dumpd, dumps
from pydantic import SecretStr

from glimp_graph import Endpoint, EndpointError, GlimpConfig, create_glimp_graph
from glimp_graph.endpoints import ModelClient, Request
from glimp_graph.serving import LlamaServer
from tests.unit.conftest import FakeServer, ScriptStep, chat_response, endpoint, unused_port

SECRET = "sk-secret-xyz"
REQUEST = Request(messages=[{"role": "user", "content": "q"}], prefix="", max_tokens=4, run_name="final_answer")


# --------------------------------------------------------------------------- the key is a secret


def test_api_key_is_a_secretstr_hidden_from_repr_str_and_json() -> None:
    ep = Endpoint(base_url="http://127.0.0.1:1/v1", model="m", api_key=SECRET)
    assert isinstance(ep.api_key, SecretStr) and ep.api_key.get_secret_value() == SECRET
    for text in (repr(ep), str(ep), ep.model_dump_json(), json.dumps(ep.model_dump(), default=str)):
        assert SECRET not in text


def test_api_key_is_absent_from_the_built_graph_and_its_clients() -> None:
    ep = Endpoint(base_url="http://127.0.0.1:1/v1", model="m", api_key=SECRET)
    config = GlimpConfig(tau=0.5)
    graph = create_glimp_graph(ep, ep, config=config)
    drawn = graph.get_graph()
    texts = [
        repr(graph),
        str(graph),
        config.model_dump_json(),
        json.dumps(drawn.to_json(), default=str),
        drawn.draw_mermaid(),
        json.dumps(graph.get_input_jsonschema()),
        json.dumps(graph.get_output_jsonschema()),
    ]
    client = ModelClient(ep, "small")
    # what LangChain serializes for traces (LangSmith) and the chat model's own repr
    texts += [repr(client), repr(client._llm), str(client._llm), dumps(client._llm), json.dumps(dumpd(client._llm))]
    for text in texts:
        assert SECRET not in text


# --------------------------------------------------------------------------- ... not in errors


def _error_of(ep: Endpoint) -> EndpointError:
    with pytest.raises(EndpointError) as info:
        ModelClient(ep, "large").complete(REQUEST)
    return info.value


def _chain(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(("status", "kind"), [(401, "API key"), (500, "HTTP 500")])
def test_api_key_is_not_in_endpoint_errors(fake_large: FakeServer, status: int, kind: str) -> None:
    fake_large.handler = lambda body: (status, json.dumps({"error": {"message": "nope"}}))
    exc = _error_of(endpoint(fake_large, api_key=SECRET))
    assert kind in str(exc)
    assert SECRET not in _chain(exc)


def test_api_key_is_not_in_connection_errors() -> None:
    ep = Endpoint(base_url=f"http://127.0.0.1:{unused_port()}/v1", model="m", api_key=SECRET, max_retries=0)
    exc = _error_of(ep)
    assert "cannot connect" in str(exc)
    assert SECRET not in _chain(exc)


# --------------------------------------------------------------------------- ... not in logs


def _records_text(records: list[logging.LogRecord]) -> str:
    out = []
    for r in records:
        out += [r.name, r.getMessage(), repr(r.args), r.exc_text or "", repr(r.__dict__)]
    return "\n".join(out)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_api_key_is_not_logged_at_debug_during_a_run(
    scripted: Any, fake_small: FakeServer, fake_large: FakeServer, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    import asyncio

    scripted([ScriptStep(0.1, "Step one."), ScriptStep(2.0, "So \\boxed{42}.")], answer="42")
    graph = create_glimp_graph(
        endpoint(fake_small, api_key=SECRET), endpoint(fake_large, api_key=SECRET), config={"tau": 1.0}
    )
    caplog.set_level(logging.DEBUG)  # the root logger: openai, httpx, httpcore, langchain, langgraph
    for name in ("openai", "httpx", "httpcore", "httpx2", "httpcore2"):  # openai 3 ships httpx2
        caplog.set_level(logging.DEBUG, logger=name)
    if mode == "sync":
        out = graph.invoke({"question": "What is 6 * 7?"})
    else:
        out = asyncio.run(graph.ainvoke({"question": "What is 6 * 7?"}))
    assert out["glimp_answer"] == "42"
    names = {r.name.split(".")[0] for r in caplog.records}
    # the HTTP clients did log at DEBUG (requests, headers sent, responses): the check is not vacuous
    assert "openai" in names and any(n.startswith("httpcore") for n in names), names
    assert SECRET not in _records_text(caplog.records)


def test_api_key_is_not_logged_when_the_server_refuses_it(
    fake_large: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_large.handler = lambda body: (401, json.dumps({"error": {"message": "bad key"}}))
    caplog.set_level(logging.DEBUG)
    _error_of(endpoint(fake_large, api_key=SECRET, max_retries=1))
    assert caplog.records
    assert SECRET not in _records_text(caplog.records)


# --------------------------------------------------------------------------- ... but it is sent


class _HeaderRecorder:
    """A tiny OpenAI-compatible server that records the headers of every request (FakeServer does not)."""

    def __init__(self) -> None:
        self.headers: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                recorder.headers.append(("GET", self.path, dict(self.headers.items())))
                self._reply({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "vllm"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.headers.append(("POST", self.path, dict(self.headers.items())))
                self._reply(chat_response("hi", stop_reason=None))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def header_server() -> Iterator[_HeaderRecorder]:
    server = _HeaderRecorder()
    yield server
    server.close()


def test_api_key_is_sent_as_the_bearer_token(header_server: _HeaderRecorder) -> None:
    ep = Endpoint(base_url=header_server.url, model="m", api_key=SECRET, max_retries=0, timeout=5)
    assert ModelClient(ep, "small").complete(REQUEST).text == "hi"
    methods = [(method, path) for method, path, _ in header_server.headers]
    assert methods == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]
    for _, _, headers in header_server.headers:
        auth = {k.lower(): v for k, v in headers.items()}["authorization"]
        assert auth == f"Bearer {SECRET}"


# --------------------------------------------------------------------------- local servers: loopback only


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_local_server_refuses_to_bind_beyond_loopback(tmp_path: Path, host: str) -> None:
    # the refusal comes before anything is looked at: no model or binary is needed
    with pytest.raises(ValueError, match="loopback"):
        LlamaServer.start(tmp_path / "m.gguf", alias="m", binary=tmp_path / "nope", host=host)


ARGV_SERVER = """\
#!{python}
import http.server, json, sys
args = sys.argv[1:]
open(sys.argv[0] + ".argv.json", "w").write(json.dumps(args))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
http.server.HTTPServer((host, port), H).serve_forever()
"""


def test_local_server_is_started_with_host_127_0_0_1(tmp_path: Path) -> None:
    # the stand-in binds whatever --host it is given: this checks the command line and the URL, not the socket
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    binary = tmp_path / "fake-llama-server"
    binary.write_text(ARGV_SERVER.format(python=sys.executable))
    binary.chmod(0o755)
    with LlamaServer.start(model, alias="m", binary=binary, cache_dir=tmp_path, ready_timeout=10) as server:
        argv = json.loads(Path(f"{binary}.argv.json").read_text())
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert server.base_url.startswith("http://127.0.0.1:")
