"""Operations of the OpenAI face: each Prometheus metric, the rule that guards ``GET /metrics``, the run's log line.

Every metric test takes a snapshot of the app's registry before and after one request and checks the exact set
of samples that changed (time-valued buckets and sums only for their consistency).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from glimp_graph import create_glimp_graph
from glimp_graph.metrics import (
    ACCESS_LOGGER,
    CANCELLED,
    GlimpMetrics,
    JsonFormatter,
    RunObserver,
    error_kind,
    log_config,
)
from glimp_graph.router_server import create_app
from tests.unit.conftest import FakeServer, ScriptStep, endpoint, is_probe
from tests.unit.test_router_server import CHAT, StubGraph

# h = 0.15, 1.7, 0.15 at tau 1.0: small, large, small; no value on a bucket boundary
STEPS = [
    ScriptStep(0.15, "First, write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(1.7, "That is 30 + 21."),
    ScriptStep(0.15, "So the answer is \\boxed{51}."),
]
TIMED = ("glimp_probe_seconds", "glimp_run_seconds", "glimp_first_token_seconds")
CHAT_PATH = "/v1/chat/completions"

API_TOKEN = "router-secret-token-7f3a"
METRICS_TOKEN = "scrape-secret-token-91c2"
UPSTREAM_KEY = "sk-upstream-secret-key-55d0"

Key = tuple[str, frozenset[tuple[str, str]]]


def samples(metrics: GlimpMetrics) -> dict[Key, float]:
    """Every sample of the registry (``*_created`` timestamps left out)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def changes(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    """The samples that moved, by how much (timed histograms: their counts only, buckets checked to add up)."""
    moved = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    out = {}
    for (name, labels), delta in moved.items():
        if name.startswith(TIMED) and not name.endswith("_count"):
            if name.endswith("_bucket") and dict(labels)["le"] == "+Inf":
                count = moved[(name.removesuffix("_bucket") + "_count", labels - {("le", "+Inf")})]
                assert delta == count, (name, labels)
            continue
        out[(name, labels)] = delta
    return out


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


def run_samples(mode: str, outcome: str) -> dict[Key, float]:
    return {key("glimp_run_seconds_count", mode=mode, outcome=outcome): 1.0}


def request_sample(status: int, path: str = CHAT_PATH) -> dict[Key, float]:
    return {key("glimp_http_requests_total", endpoint=path, status=str(status)): 1.0}


def error_sample(kind: str, role: str = "") -> dict[Key, float]:
    return {key("glimp_errors_total", kind=kind, role=role): 1.0}


def h_init_samples(values: list[float]) -> dict[Key, float]:
    """The ``glimp_h_init_nats`` samples that ``values`` move."""
    out = {key("glimp_h_init_nats_count"): float(len(values)), key("glimp_h_init_nats_sum"): pytest.approx(sum(values))}
    for le in (*(str(b) for b in (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)), "+Inf"):
        n = sum(v <= float(le) for v in values)
        if n:
            out[key("glimp_h_init_nats_bucket", le=le)] = float(n)
    return out


def share_samples(share: float) -> dict[Key, float]:
    out = {key("glimp_run_large_share_count"): 1.0, key("glimp_run_large_share_sum"): pytest.approx(share)}
    for le in ("0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0", "+Inf"):
        if share <= float(le):
            out[key("glimp_run_large_share_bucket", le=le)] = 1.0
    return out


def token_samples(stats: dict[str, Any]) -> dict[Key, float]:
    values = {
        ("small", "completion"): stats["small_tokens"],
        ("large", "completion"): stats["large_tokens"],
        ("small", "prompt"): stats["small_prompt_tokens"],
        ("large", "prompt"): stats["large_prompt_tokens"],
    }
    return {key("glimp_tokens_total", model=m, kind=k): float(v) for (m, k), v in values.items() if v}


@pytest.fixture
def app_client(fake_small: FakeServer, fake_large: FakeServer, scripted) -> Iterator[Any]:
    """``app_client(base_url=..., small=..., large=..., **create_app kwargs)`` -> (client, metrics)."""
    scripted(STEPS, answer="51")
    opened: list[TestClient] = []

    def make(base_url: str = "http://testserver", small: dict | None = None, large: dict | None = None, **kwargs):
        ends = endpoint(fake_small, **(small or {})), endpoint(fake_large, **(large or {}))
        graph = create_glimp_graph(*ends, config={"tau": 1.0})
        kwargs.setdefault("endpoints", {"small": ends[0], "large": ends[1]})
        app = create_app(graph, **kwargs)
        client = TestClient(app, base_url=base_url)
        client.__enter__()
        opened.append(client)
        return client, app.state.glimp.metrics

    yield make
    for client in opened:
        client.__exit__(None, None, None)


# --------------------------------------------------------------------------- each metric


def test_a_plain_run_counts_exactly_its_steps_h_init_probes_share_tokens_and_latency(app_client):
    client, metrics = app_client()
    before = samples(metrics)
    r = client.post(CHAT_PATH, json=CHAT)
    assert r.status_code == 200, r.text
    stats = r.json()["glimp"]["stats"]
    h_values = [s["h_init"] for s in r.json()["glimp"]["steps"]]
    expected = {
        **request_sample(200),
        key("glimp_steps_total", model="small"): 2.0,
        key("glimp_steps_total", model="large"): 1.0,
        **h_init_samples(h_values),
        key("glimp_probe_seconds_count"): 3.0,
        **share_samples(1 / 3),
        **token_samples(stats),
        **run_samples("plain", "ok"),
    }
    assert changes(before, samples(metrics)) == expected
    assert [round(h, 2) for h in h_values] == [0.15, 1.7, 0.15]


def test_a_stream_counts_the_same_and_its_time_to_first_token(app_client):
    client, metrics = app_client()
    before = samples(metrics)
    r = client.post(CHAT_PATH, json={**CHAT, "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    final = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")][-1]
    stats = final["glimp"]["stats"]
    expected = {
        **request_sample(200),
        key("glimp_steps_total", model="small"): 2.0,
        key("glimp_steps_total", model="large"): 1.0,
        **h_init_samples([s["h_init"] for s in final["glimp"]["steps"]]),
        key("glimp_probe_seconds_count"): 3.0,
        **share_samples(1 / 3),
        **token_samples(stats),
        key("glimp_first_token_seconds_count"): 1.0,
        **run_samples("stream", "ok"),
    }
    assert changes(before, samples(metrics)) == expected


def test_other_routes_count_their_requests_only(app_client):
    client, metrics = app_client(base_url="http://127.0.0.1")
    before = samples(metrics)
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert changes(before, samples(metrics)) == {
        **request_sample(200, "/health"),
        **request_sample(200, "/v1/models"),
        **request_sample(200, "/metrics"),
    }


def test_an_upstream_failure_counts_its_kind_and_role(app_client, fake_large):
    fake_large.handler = lambda body: (500, json.dumps({"error": {"message": "the GPU fell over"}}))
    client, metrics = app_client()
    before = samples(metrics)
    r = client.post(CHAT_PATH, json=CHAT)
    assert r.status_code == 502, r.text
    # a failed plain run has no output: its error and latency are counted, not its steps
    assert changes(before, samples(metrics)) == {
        **request_sample(502),
        **error_sample("upstream", "large"),
        **run_samples("plain", "error"),
    }


def test_a_failed_stream_counts_the_steps_it_wrote_and_its_error(app_client, fake_large):
    scripted_handler = fake_large.handler
    fake_large.handler = lambda body: (
        (400, json.dumps({"error": {"message": "no"}})) if not body.get("stop") else scripted_handler(body)
    )
    client, metrics = app_client()
    before = samples(metrics)
    r = client.post(CHAT_PATH, json={**CHAT, "stream": True})
    assert r.status_code == 200 and '"upstream_error"' in r.text
    moved = changes(before, samples(metrics))
    assert moved == {
        **request_sample(200),  # the stream had started: its status was 200
        key("glimp_steps_total", model="small"): 2.0,
        key("glimp_steps_total", model="large"): 1.0,
        **h_init_samples([0.15, 1.7, 0.15]),
        key("glimp_probe_seconds_count"): 3.0,
        **error_sample("upstream", "large"),
        **run_samples("stream", "error"),
    }


def test_a_model_that_does_not_answer_in_time_is_a_timeout(app_client, fake_large):
    scripted_handler = fake_large.handler

    def slow(body: dict[str, Any]) -> Any:
        time.sleep(1.0)
        return scripted_handler(body)

    fake_large.handler = slow
    client, metrics = app_client(large={"timeout": 0.2})
    before = samples(metrics)
    r = client.post(CHAT_PATH, json=CHAT)
    assert r.status_code == 502 and "no answer within" in r.json()["error"]["message"]
    assert changes(before, samples(metrics)) == {
        **request_sample(502),
        **error_sample("timeout", "large"),
        **run_samples("plain", "error"),
    }


def test_the_small_model_dropped_mid_run_is_a_fallback_not_an_error(app_client, fake_small):
    scripted_handler = fake_small.handler
    fake_small.handler = lambda body: (
        (503, json.dumps({"error": {"message": "overloaded"}})) if not is_probe(body) else scripted_handler(body)
    )
    client, metrics = app_client()
    before = samples(metrics)
    r = client.post(CHAT_PATH, json=CHAT)
    assert r.status_code == 200, r.text
    stats = r.json()["glimp"]["stats"]
    assert stats["small_failure"]
    moved = changes(before, samples(metrics))
    assert moved[key("glimp_small_fallbacks_total")] == 1.0
    assert not [k for k in moved if k[0] == "glimp_errors_total"]
    assert moved[key("glimp_run_seconds_count", mode="plain", outcome="ok")] == 1.0


def test_refused_requests_count_input_and_auth_errors_but_no_run(app_client):
    client, metrics = app_client(api_token=API_TOKEN)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    before = samples(metrics)
    assert client.post(CHAT_PATH, content=b"{not json", headers=auth).status_code == 400
    assert client.post(CHAT_PATH, json={**CHAT, "max_tokens": 10**6}, headers=auth).status_code == 400
    assert client.post(CHAT_PATH, json=CHAT, headers={"Authorization": "Bearer wrong"}).status_code == 401
    moved = changes(before, samples(metrics))
    assert moved == {
        key("glimp_http_requests_total", endpoint=CHAT_PATH, status="400"): 2.0,
        key("glimp_errors_total", kind="input", role=""): 2.0,
        **request_sample(401),
        **error_sample("auth"),
    }


def test_a_prompt_too_long_for_a_model_is_an_input_error_naming_the_model(app_client, fake_large):
    message = {"error": {"message": "This model's maximum context length is 8192 tokens"}}
    fake_large.handler = lambda body: (400, json.dumps(message))
    client, metrics = app_client()
    before = samples(metrics)
    assert client.post(CHAT_PATH, json=CHAT).status_code == 400
    assert changes(before, samples(metrics)) == {
        **request_sample(400),
        **error_sample("input", "large"),
        **run_samples("plain", "error"),
    }


class BrokenGraph(StubGraph):
    """A graph with a bug: every run raises a plain exception."""

    async def ainvoke(self, inputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("a bug in a node")

    async def astream(self, inputs: dict[str, Any], **kwargs: Any):  # type: ignore[override]
        raise RuntimeError("a bug in a node")
        yield {}


@pytest.mark.parametrize("stream", [False, True])
def test_an_internal_error_is_a_500_counted_as_internal(stream):
    app = create_app(BrokenGraph())
    metrics = app.state.glimp.metrics
    before = samples(metrics)
    with TestClient(app) as client:
        r = client.post(CHAT_PATH, json={**CHAT, "stream": stream})
    if stream:
        assert r.status_code == 200 and '"server_error"' in r.text and "a bug" not in r.text
    else:
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error" and "a bug" not in r.text
    mode = "stream" if stream else "plain"
    assert changes(before, samples(metrics)) == {
        **request_sample(r.status_code),
        **error_sample("internal"),
        **run_samples(mode, "error"),
    }


def test_two_apps_in_one_process_count_apart():
    first, second = create_app(StubGraph()), create_app(StubGraph())
    with TestClient(first) as client:
        assert client.post(CHAT_PATH, json=CHAT).status_code == 200
    assert samples(first.state.glimp.metrics)[key("glimp_http_requests_total", endpoint=CHAT_PATH, status="200")]
    assert not [k for k in samples(second.state.glimp.metrics) if k[0] == "glimp_http_requests_total"]


def test_error_kinds_of_the_library_errors():
    from glimp_graph.errors import ContextLengthError, EndpointError, EndpointUnavailableError, InputError

    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as cause:
            raise EndpointUnavailableError("small", "http://x/v1", "no answer within 5 s") from cause
    except EndpointUnavailableError as exc:
        timed_out = exc
    assert error_kind(timed_out) == ("timeout", "small")
    assert error_kind(EndpointUnavailableError("large", "http://x/v1", "HTTP 503")) == ("upstream", "large")
    assert error_kind(EndpointError("large", "http://x/v1", "HTTP 404")) == ("upstream", "large")
    assert error_kind(ContextLengthError("large", "http://x/v1", "too long")) == ("input", "large")
    assert error_kind(InputError("empty question")) == ("input", "")
    assert error_kind(KeyError("x")) == ("internal", "")


def test_a_run_that_ends_before_its_answer_is_cancelled():
    metrics = GlimpMetrics()
    observer = RunObserver(metrics, request_id="chatcmpl-1")
    observer.begin(model="glimp-router", stream=True, tau=0.5)
    record = observer.finish()
    assert record["status"] == CANCELLED and record["outcome"] == "cancelled" and record["error_kind"] == "cancelled"
    assert observer.finish() is record  # once
    moved = changes({}, samples(metrics))
    assert moved == {**error_sample("cancelled"), **run_samples("stream", "cancelled")}


def test_multiprocess_dir_needs_prometheus_in_multiprocess_mode(tmp_path):
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        GlimpMetrics(multiprocess_dir=tmp_path)


# --------------------------------------------------------------------------- who may read /metrics


def test_metrics_without_any_token_are_served_on_loopback_only(app_client):
    loopback, _ = app_client(base_url="http://127.0.0.1:8000")
    r = loopback.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "glimp_http_requests_total" in r.text
    public, _ = app_client(base_url="http://10.1.2.3:8000")
    r = public.get("/metrics")
    assert r.status_code == 403 and "--metrics-token" in r.json()["error"]["message"]


def test_metrics_need_the_api_token_when_it_is_set_even_on_loopback(app_client):
    client, _ = app_client(base_url="http://127.0.0.1", api_token=API_TOKEN)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 200


def test_a_metrics_token_replaces_the_api_token_for_metrics_only(app_client):
    client, _ = app_client(base_url="http://127.0.0.1", api_token=API_TOKEN, metrics_token=METRICS_TOKEN)
    assert client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 401
    # a metrics token without an API token guards the metrics on any address
    open_api, _ = app_client(base_url="http://10.1.2.3", metrics_token=METRICS_TOKEN)
    assert open_api.get("/metrics").status_code == 401
    assert open_api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200


def test_metrics_path_can_move_and_must_be_a_path():
    app = create_app(StubGraph(), metrics_path="/glimp/metrics")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/glimp/metrics").status_code == 200
        assert client.get("/metrics").status_code == 404
    with pytest.raises(ValueError, match="metrics_path"):
        create_app(StubGraph(), metrics_path="metrics")


# --------------------------------------------------------------------------- the run's log line


def _run_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access log's records, each as JsonFormatter writes it (parsed back, strict JSON)."""
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == ACCESS_LOGGER]
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) for line in lines]


def test_one_json_line_per_run_with_its_ids_settings_counts_and_status(app_client, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    client, _ = app_client()
    r = client.post(CHAT_PATH, json={**CHAT, "model": "glimp-router@inf"}, headers={"X-Glimp-Thread-Id": "thread-42"})
    assert r.status_code == 200
    (line,) = _run_records(caplog)
    stats = r.json()["glimp"]["stats"]
    assert r.headers["X-Request-Id"] == r.json()["id"] == line["request_id"]
    assert line["logger"] == ACCESS_LOGGER and line["level"] == "info" and line["ts"].endswith("+00:00")
    assert line["thread_id"] == "thread-42" and line["model"] == "glimp-router@inf" and line["tau"] == "inf"
    assert line["status"] == 200 and line["outcome"] == "ok" and line["error_kind"] is None
    assert (line["steps"], line["small_steps"], line["large_steps"]) == (3, 3, 0)
    assert line["small_tokens"] == stats["small_tokens"] and line["large_tokens"] == stats["large_tokens"]
    assert line["prompt_tokens"] == stats["small_prompt_tokens"] + stats["large_prompt_tokens"]
    assert line["latency_seconds"] > 0 and line["stream"] is False and isinstance(line["pid"], int)


def test_a_bad_thread_id_is_refused_naming_the_header(app_client, caplog):
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    client, _ = app_client()
    r = client.post(CHAT_PATH, json=CHAT, headers={"X-Glimp-Thread-Id": "a b\tc"})
    assert r.status_code == 400 and "X-Glimp-Thread-Id" in r.json()["error"]["message"]
    (line,) = _run_records(caplog)
    assert line["status"] == 400 and line["error_kind"] == "input" and line["thread_id"] is None
    assert r.headers["X-Request-Id"] == line["request_id"]


def test_no_token_or_api_key_in_any_log_line_response_or_metric(app_client, fake_large, caplog):
    """The router's and the metrics' tokens and the upstream API key, on success, refusals and an upstream error
    whose message echoes the key: never in a log line (text or JSON), an error body or ``/metrics``."""
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"invalid api key {UPSTREAM_KEY} for model"}}
    client, _ = app_client(
        api_token=API_TOKEN,
        metrics_token=METRICS_TOKEN,
        small={"api_key": UPSTREAM_KEY},
        large={"api_key": UPSTREAM_KEY},
    )
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    bodies = [client.post(CHAT_PATH, json=CHAT, headers=auth).text]
    bodies.append(client.post(CHAT_PATH, json=CHAT, headers={"Authorization": f"Bearer {API_TOKEN}x"}).text)
    bodies.append(client.post(CHAT_PATH, json={"messages": []}, headers=auth).text)
    fake_large.handler = lambda body: (400, json.dumps(echo))
    failed = client.post(CHAT_PATH, json=CHAT, headers=auth)
    streamed = client.post(CHAT_PATH, json={**CHAT, "stream": True}, headers=auth)
    assert failed.status_code == 502 and "invalid api key *** for model" in failed.json()["error"]["message"]
    bodies += [failed.text, streamed.text]
    bodies.append(client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text)
    lines = _run_records(caplog)
    assert [line["status"] for line in lines] == [200, 401, 400, 502, 502]
    assert "invalid api key *** for model" in lines[3]["error"]
    texts = [r.getMessage() for r in caplog.records] + [json.dumps(line) for line in lines] + bodies
    for secret in (API_TOKEN, METRICS_TOKEN, UPSTREAM_KEY):
        assert not [t for t in texts if secret in t], secret
    assert not [t for t in texts if "Bearer" in t and "Authorization: Bearer <token>" not in t]


def test_the_json_formatter_writes_other_records_and_tracebacks_as_one_line():
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.LogRecord("glimp_graph.router_server", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed x" and parsed["level"] == "error" and "ValueError: bad" in parsed["exc"]


def test_log_config_uses_one_format_for_runs_and_server_messages():
    json_config = log_config("json")
    assert json_config["formatters"]["glimp"] == {"()": "glimp_graph.metrics.JsonFormatter"}
    assert json_config["loggers"][ACCESS_LOGGER]["level"] == "INFO"
    assert {json_config["loggers"][name]["handlers"][0] for name in ("glimp_graph", ACCESS_LOGGER, "uvicorn")} == {
        "glimp"
    }
    assert "format" in log_config("text")["formatters"]["glimp"]
    with pytest.raises(ValueError, match="'json' or 'text'"):
        log_config("xml")
