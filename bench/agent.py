"""Agents with a calculator on GSM8K: ``create_agent`` with ChatGlimpRouter vs ChatOpenAI on one model alone.

Three arms, each a ``langchain.agents.create_agent`` agent with the same calculator tool, system prompt and
tool-choice policy, on the same local llama.cpp pair (Qwen2.5-Coder 0.5B small, 1.5B large):

- ``glimp``: ``ChatGlimpRouter`` (the small and the large model reason in steps, routed by the probe's entropy;
  the large model answers or calls the tool);
- ``large``: ``ChatOpenAI`` on the large model's server alone;
- ``small``: ``ChatOpenAI`` on the small model's server alone.

The policy (a ``wrap_model_call`` middleware): the first model call must call the calculator (``tool_choice`` names
it), later calls choose (``"auto"``) until ``--max-tool-calls`` results are in, then ``"none"`` (answer). The
ChatOpenAI arms get the request shaping and the reading of calls that ChatGlimpRouter's final answer gets
(``glimp_graph.tool_calls``: on llama.cpp a forced call is a grammar, and a call written as text is read), so
the arms differ in who reasons, not in tool plumbing. Arms run interleaved, problem by problem.

Per problem and arm it records (JSONL, resumable: finished (arm, id) pairs are skipped; failed ones are retried)
the answer and its grade, the wall time, tool calls, model calls, tokens and (glimp) the large model's share of
the reasoning steps and of the generated tokens; the markdown table gives accuracy +- SE, median latency, the
median and geometric mean of the per-problem latency ratio to ``large``, tool calls per problem and the
large-model share. Then the chat model's own overhead over calling the graph directly (fake servers from
``tests/unit/conftest.py``, many calls: time in ``ChatGlimpRouter.invoke`` / ``stream`` outside the graph's own
``invoke`` / ``stream``, median per call; the target is < 1 ms).

    python bench/agent.py --limit 25 --out bench/results/agent.jsonl --markdown bench/results/agent.md
    python bench/agent.py --limit 2 --overhead-calls 50        # a smoke run
    python bench/agent.py --report-only --out bench/results/agent.jsonl --markdown bench/results/agent.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from agent_with_tools import calculator  # noqa: E402  (the example's calculator: one tool for every arm)
from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402

from glimp_graph import ChatGlimpRouter, Endpoint, create_glimp_graph  # noqa: E402
from glimp_graph.endpoints import ModelClient  # noqa: E402
from glimp_graph.eval import grade, load_problems  # noqa: E402
from glimp_graph.tool_calls import check_tools, tool_calls_from, tool_request  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gsm8k_dev.jsonl"
ARMS = ("glimp", "large", "small")
SYSTEM = (
    "You solve math word problems. Use the calculator tool for arithmetic. When you have the result, answer with "
    "one short sentence that ends with the final number."
)
TOOLS, _ = check_tools([convert_to_openai_tool(calculator)])


# -- the tool-choice policy, one for every arm ------------------------------------------------------------------------


def tool_choice_for(messages: Sequence[Any], max_tool_calls: int) -> str:
    """The calculator first, then the model's choice, then an answer once ``max_tool_calls`` results are in."""
    results = sum(isinstance(m, ToolMessage) for m in messages)
    if results == 0:
        return "calculator"
    return "auto" if results < max_tool_calls else "none"


def glimp_policy(max_tool_calls: int) -> Any:
    """ChatGlimpRouter: the graph shapes the request and reads the calls; only the choice is set here."""

    @wrap_model_call
    def policy(request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        return handler(request.override(tool_choice=tool_choice_for(request.messages, max_tool_calls)))

    return policy


def openai_policy(server: str, max_tool_calls: int) -> Any:
    """ChatOpenAI: the request shaped as the graph's final answer is (``tool_request``), its calls read the same way."""

    @wrap_model_call
    def policy(request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        choice = tool_choice_for(request.messages, max_tool_calls)
        _, checked = check_tools(TOOLS, choice)
        shaped = tool_request(server, TOOLS, checked)
        settings = dict(request.model_settings)
        if "extra_body" in shaped:
            settings["extra_body"] = shaped["extra_body"]
        response = handler(request.override(tool_choice=shaped["tool_choice"], model_settings=settings))
        message = response.result[-1]
        if not isinstance(message, AIMessage):
            return response
        text, calls, invalid = tool_calls_from(
            server,
            message.text,
            [dict(c) for c in message.tool_calls],
            [dict(c) for c in message.invalid_tool_calls],
            TOOLS,
            checked,
        )
        read = message.model_copy(update={"content": text, "tool_calls": calls, "invalid_tool_calls": invalid})
        return ModelResponse(result=[*response.result[:-1], read], structured_response=response.structured_response)

    return policy


# -- the arms ------------------------------------------------------------------------------------------------------


def chat_openai(endpoint: Endpoint, max_tokens: int) -> ChatOpenAI:
    """ChatOpenAI on one endpoint, with the endpoint's sampling (what the router's steps use)."""
    return ChatOpenAI(
        model=endpoint.model,
        base_url=endpoint.base_url,
        api_key=endpoint.api_key,
        temperature=endpoint.temperature,
        top_p=endpoint.top_p,
        seed=endpoint.seed,
        max_tokens=max_tokens,
        timeout=endpoint.timeout,
        max_retries=endpoint.max_retries,
    )


def build_arms(small: Endpoint, large: Endpoint, args: argparse.Namespace) -> dict[str, Any]:
    config = {
        "tau": args.tau,
        "max_step_tokens": args.max_step_tokens,
        "max_thinking_tokens": args.max_thinking_tokens,
        "max_steps": args.max_steps,
        "final_max_tokens": args.final_max_tokens,
    }
    per_turn = args.max_thinking_tokens + args.final_max_tokens  # the same token budget for one model call
    agents = {
        "glimp": create_agent(
            model=ChatGlimpRouter(small=small, large=large, config=config),
            tools=[calculator],
            system_prompt=SYSTEM,
            middleware=[glimp_policy(args.max_tool_calls)],
        )
    }
    for arm, endpoint in (("large", large), ("small", small)):
        server = ModelClient(endpoint, arm).server_kind()
        agents[arm] = create_agent(
            model=chat_openai(endpoint, per_turn),
            tools=[calculator],
            system_prompt=SYSTEM,
            middleware=[openai_policy(server, args.max_tool_calls)],
        )
    return agents


def run_one(agent: Any, arm: str, problem: Any) -> dict[str, Any]:
    """One problem with one arm: the answer, its grade, and what it took."""
    start = time.perf_counter()
    out = agent.invoke({"messages": [HumanMessage(problem.question)]}, {"recursion_limit": 30})
    seconds = time.perf_counter() - start
    messages = out["messages"]
    turns = [m for m in messages if isinstance(m, AIMessage)]
    answer = turns[-1].text if turns else ""
    predicted, correct = grade(problem, answer)
    usage = [m.usage_metadata or {} for m in turns]
    record: dict[str, Any] = {
        "arm": arm,
        "id": problem.id,
        "gold": problem.answer,
        "answer": answer,
        "predicted": predicted,
        "correct": correct,
        "seconds": seconds,
        "model_calls": len(turns),
        "tool_calls": sum(len(m.tool_calls) for m in turns),
        "invalid_tool_calls": sum(len(m.invalid_tool_calls) for m in turns),
        "tool_results": [str(m.content) for m in messages if isinstance(m, ToolMessage)],
        "input_tokens": sum(u.get("input_tokens", 0) for u in usage),
        "output_tokens": sum(u.get("output_tokens", 0) for u in usage),
    }
    if arm == "glimp":
        stats = [m.response_metadata.get("glimp_stats") or {} for m in turns]
        steps, large_steps = sum(s.get("steps", 0) for s in stats), sum(s.get("large_steps", 0) for s in stats)
        small_tokens, large_tokens = (
            sum(s.get("small_tokens", 0) for s in stats),
            sum(s.get("large_tokens", 0) for s in stats),
        )
        record |= {
            "steps": steps,
            "large_steps": large_steps,
            "large_step_share": large_steps / steps if steps else 0.0,
            "large_token_share": large_tokens / (small_tokens + large_tokens) if small_tokens + large_tokens else 0.0,
        }
    else:
        share = 1.0 if arm == "large" else 0.0
        record |= {"large_step_share": share, "large_token_share": share}
    return record


# -- records ---------------------------------------------------------------------------------------------------------


def read_records(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The last record of each (arm, problem id) in the JSONL file."""
    records: dict[tuple[str, str], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[(record["arm"], record["id"])] = record
    return records


def measure(args: argparse.Namespace, out: Path) -> None:
    problems = load_problems(args.data, start=args.start, limit=args.limit)
    done = {key for key, r in read_records(out).items() if "error" not in r}
    todo = [(p, arm) for p in problems for arm in args.arms if (arm, p.id) not in done]
    if not todo:
        print(f"all {len(problems) * len(args.arms)} runs are in {out}", file=sys.stderr)
        return
    with endpoints(args) as (small, large):
        agents = build_arms(small, large, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as handle:
            for i, (problem, arm) in enumerate(todo, start=1):
                try:
                    record = run_one(agents[arm], arm, problem)
                except Exception as exc:  # recorded and retried on the next run; the others go on
                    record = {"arm": arm, "id": problem.id, "error": f"{type(exc).__name__}: {exc}"[:500]}
                record |= {
                    "models": f"{small.model} / {large.model}",
                    "cpu": cpu_name(),
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                mark = "error" if "error" in record else ("right" if record["correct"] else "wrong")
                took = f"{record['seconds']:.1f} s" if "seconds" in record else record["error"][:120]
                print(f"[{i}/{len(todo)}] {arm:<5} {problem.id}: {mark} ({took})", file=sys.stderr)


@contextmanager
def endpoints(args: argparse.Namespace) -> Iterator[tuple[Endpoint, Endpoint]]:
    """GLIMP_SMALL_URL / GLIMP_LARGE_URL when both are set, else the local default pair (started and stopped)."""
    small_url, large_url = os.environ.get("GLIMP_SMALL_URL"), os.environ.get("GLIMP_LARGE_URL")
    sampling = {"seed": args.seed, "timeout": 900}
    if small_url and large_url:
        yield (
            Endpoint(base_url=small_url, model=os.environ.get("GLIMP_SMALL_MODEL", "small"), **sampling),
            Endpoint(base_url=large_url, model=os.environ.get("GLIMP_LARGE_MODEL", "large"), **sampling),
        )
        return
    from glimp_graph.serving import LocalModels

    with LocalModels(cache_dir=os.environ.get("GLIMP_CACHE_DIR"), ctx_size=4096) as models:
        yield (
            Endpoint(base_url=models.small.base_url, model=models.small.alias, **sampling),
            Endpoint(base_url=models.large.base_url, model=models.large.alias, **sampling),
        )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


# -- the chat model's own overhead -----------------------------------------------------------------------------------


class TimedGraph:
    """Stands in for the compiled graph inside a ChatGlimpRouter and sums the time spent in the graph itself."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.seconds = 0.0

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.graph.invoke(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        events = iter(self.graph.stream(*args, **kwargs))
        while True:
            start = time.perf_counter()
            try:
                event = next(events)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            yield event  # the chat model's work on the event is not counted as the graph's


class RecordedGraph:
    """Stands in for the compiled graph and replays one recorded run at once: the chat model's own work alone."""

    def __init__(self, output: dict[str, Any], events: list[Any]) -> None:
        self.output, self.events = output, events

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        return self.output

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from self.events


def overhead(calls: int) -> dict[str, Any]:
    """Per call: the chat model's time outside the graph (invoke and stream), two ways, and a graph call's time.

    1. Around a recorded run replayed at once (no server, no graph): the chat model's own code alone.
    2. Around the real graph on the fake servers: the call's time minus the time inside the graph's own
       ``invoke`` / ``stream``; and, as a cross-check, ``ChatGlimpRouter.invoke`` minus the ``graph.invoke`` run
       just before it (this one carries the fake servers' noise).
    """
    from tests.unit.conftest import FakeServer, ScriptedModel, ScriptStep
    from tests.unit.conftest import endpoint as fake_endpoint

    small, large = FakeServer("vllm"), FakeServer("vllm")
    steps = [
        ScriptStep(0.2, "Two boxes of 3 pens."),
        ScriptStep(2.0, "That is 2 * 3."),
        ScriptStep(0.2, "So \\boxed{6}."),
    ]
    ScriptedModel(steps=steps, answer="There are 6 pens.").install(small, large)
    question = [HumanMessage("A shop has 2 boxes of 3 pens. How many pens?")]
    ms = 1000.0
    try:
        graph = create_glimp_graph(fake_endpoint(small), fake_endpoint(large), config={"tau": 1.0})
        model = ChatGlimpRouter(graph=graph)
        replay = RecordedGraph(
            graph.invoke({"messages": question}), list(graph.stream({"messages": question}, stream_mode="custom"))
        )
        model._graph = replay  # the bench's stand-ins; the chat model calls them as it calls the graph
        alone_invoke, alone_stream = [], []
        for i in range(calls + 20):  # the first 20 warm up
            start = time.perf_counter()
            model.invoke(question)
            middle = time.perf_counter()
            for _ in model.stream(question):
                pass
            if i >= 20:
                alone_invoke.append(middle - start)
                alone_stream.append(time.perf_counter() - middle)

        timed = TimedGraph(graph)
        model._graph = timed
        for _ in range(5):  # warm up: clients, endpoint checks
            model.invoke(question)
            graph.invoke({"messages": question})
        direct, via_invoke, via_stream, chat_invoke, paired = [], [], [], [], []
        for _ in range(calls):
            start = time.perf_counter()
            graph.invoke({"messages": question})
            direct.append(time.perf_counter() - start)
            timed.seconds, start = 0.0, time.perf_counter()
            model.invoke(question)
            total = time.perf_counter() - start
            chat_invoke.append(total)
            paired.append(total - direct[-1])
            via_invoke.append(total - timed.seconds)
            timed.seconds, start = 0.0, time.perf_counter()
            for _ in model.stream(question):
                pass
            via_stream.append(time.perf_counter() - start - timed.seconds)
    finally:
        small.close()
        large.close()
    return {
        "calls": calls,
        "alone_invoke_ms": statistics.median(alone_invoke) * ms,
        "alone_invoke_p90_ms": quantile(alone_invoke, 0.9) * ms,
        "alone_stream_ms": statistics.median(alone_stream) * ms,
        "alone_stream_p90_ms": quantile(alone_stream, 0.9) * ms,
        "invoke_overhead_ms": statistics.median(via_invoke) * ms,
        "invoke_overhead_p90_ms": quantile(via_invoke, 0.9) * ms,
        "stream_overhead_ms": statistics.median(via_stream) * ms,
        "stream_overhead_p90_ms": quantile(via_stream, 0.9) * ms,
        "graph_invoke_ms": statistics.median(direct) * ms,
        "chat_invoke_ms": statistics.median(chat_invoke) * ms,
        "paired_difference_ms": statistics.median(paired) * ms,
    }


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# -- the report ------------------------------------------------------------------------------------------------------


def summarize(
    records: dict[tuple[str, str], dict[str, Any]], arms: Sequence[str], ids: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per arm over the problems every arm finished (so that the arms are compared on the same problems)."""
    finished = [i for i in ids if all("error" not in records.get((a, i), {"error": 1}) for a in arms)]
    rows = []
    for arm in arms:
        rs = [records[(arm, i)] for i in finished]
        if not rs:
            continue
        n = len(rs)
        p = sum(r["correct"] for r in rs) / n
        row = {
            "arm": arm,
            "n": n,
            "accuracy": p,
            "se": math.sqrt(p * (1 - p) / n),
            "median_s": statistics.median(r["seconds"] for r in rs),
            "tool_calls": statistics.fmean(r["tool_calls"] for r in rs),
            "invalid_tool_calls": statistics.fmean(r["invalid_tool_calls"] for r in rs),
            "model_calls": statistics.fmean(r["model_calls"] for r in rs),
            "large_step_share": statistics.fmean(r["large_step_share"] for r in rs),
            "large_token_share": statistics.fmean(r["large_token_share"] for r in rs),
            "output_tokens": statistics.fmean(r["output_tokens"] for r in rs),
            "errors": sum("error" in records.get((arm, i), {}) for i in ids),
        }
        if "large" in arms:
            ratios = [records[(arm, i)]["seconds"] / records[("large", i)]["seconds"] for i in finished]
            row["ratio_median"] = statistics.median(ratios)
            row["ratio_geomean"] = math.exp(statistics.fmean(math.log(x) for x in ratios))
        rows.append(row)
    return rows


def render(
    args: argparse.Namespace, argv: Sequence[str], rows: list[dict[str, Any]], cost: dict[str, Any] | None
) -> str:
    records = read_records(Path(args.out))
    cpus = sorted({r.get("cpu", "?") for r in records.values()})
    models = sorted({r.get("models", "?") for r in records.values()})
    lines = [
        "# Agents with a calculator: ChatGlimpRouter vs one model alone (GSM8K dev)",
        "",
        f"Command: `python bench/agent.py {' '.join(argv)}`",
        "",
        f"- Problems: GSM8K dev rows {args.start}..{args.start + (args.limit or 0) - 1}, every arm on the same "
        "problems, interleaved problem by problem; a row counts only the problems every arm finished.",
        f"- Models (small / large): {', '.join(models)} (by default the local llama.cpp pair, Qwen2.5-Coder "
        f"0.5B / 1.5B Instruct Q4_K_M, one llama-server each); CPU: {', '.join(cpus)}.",
        f"- glimp: ChatGlimpRouter tau={args.tau}, max_step_tokens={args.max_step_tokens}, "
        f"max_thinking_tokens={args.max_thinking_tokens}, max_steps={args.max_steps}, "
        f"final_max_tokens={args.final_max_tokens}; large / small: ChatOpenAI with max_tokens="
        f"{args.max_thinking_tokens + args.final_max_tokens} per model call; sampling temperature 0.6, top_p 0.95, "
        f"seed {args.seed} (the Endpoint defaults).",
        f"- Tool choice (all arms): the calculator on the first model call, then auto until {args.max_tool_calls} "
        "results, then none; the ChatOpenAI arms get the router's request shaping and call reading.",
        f"- Packages: langchain {version('langchain')}, langchain-core {version('langchain-core')}, langgraph "
        f"{version('langgraph')}.",
        "",
        "| arm | n | accuracy +- SE | median latency (s) | latency / large: median per problem | geometric mean "
        "| tool calls / problem | invalid calls / problem | model calls / problem | large share (steps) "
        "| large share (tokens) | output tokens / problem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = (f"{r['ratio_median']:.2f}", f"{r['ratio_geomean']:.2f}") if "ratio_median" in r else ("-", "-")
        lines.append(
            f"| {r['arm']} | {r['n']} | {r['accuracy']:.0%} +- {r['se']:.0%} | {r['median_s']:.1f} | {ratio[0]} "
            f"| {ratio[1]} | {r['tool_calls']:.2f} | {r['invalid_tool_calls']:.2f} | {r['model_calls']:.2f} "
            f"| {r['large_step_share']:.2f} | {r['large_token_share']:.2f} | {r['output_tokens']:.0f} |"
        )
    errors = {r["arm"]: r["errors"] for r in rows if r["errors"]}
    if errors:
        lines += ["", f"Runs that failed (left out, retried on the next run): {errors}."]
    if cost:
        lines += [
            "",
            "## The chat model's own overhead",
            "",
            f"ChatGlimpRouter's time per call outside the graph it runs ({cost['calls']} calls each, a 3-step run; "
            f"{cost.get('cpu', '?')}, {cost.get('measured_at', '?')}). Target: < 1 ms per call.",
            "",
            "| path | around a recorded run (no graph): median (p90) ms | around the graph on fake servers: median "
            "(p90) ms |",
            "|---|---|---|",
            f"| `invoke` | {cost['alone_invoke_ms']:.3f} ({cost['alone_invoke_p90_ms']:.3f}) "
            f"| {cost['invoke_overhead_ms']:.3f} ({cost['invoke_overhead_p90_ms']:.3f}) |",
            f"| `stream` | {cost['alone_stream_ms']:.3f} ({cost['alone_stream_p90_ms']:.3f}) "
            f"| {cost['stream_overhead_ms']:.3f} ({cost['stream_overhead_p90_ms']:.3f}) |",
            "",
            "Around a recorded run, the graph is a stand-in that returns one recorded run at once: what is left is the "
            "chat model's own work (LangChain's chat-model machinery included). Around the graph: the call's time "
            "minus the time inside the graph's own `invoke` / `stream`. For scale: `graph.invoke` on the fake servers "
            f"takes a median {cost['graph_invoke_ms']:.1f} ms, `ChatGlimpRouter.invoke` {cost['chat_invoke_ms']:.1f} "
            f"ms; the median of the paired differences (`ChatGlimpRouter.invoke` minus the `graph.invoke` just "
            f"before it) is {cost['paired_difference_ms']:.2f} ms, a cross-check that carries the fake servers' "
            "noise (milliseconds per call on a loaded machine).",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--limit", type=int, default=25)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "agent.jsonl")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here too (it is always printed)")
    p.add_argument("--report-only", action="store_true", help="render the records, run nothing")
    p.add_argument("--overhead-calls", type=int, default=300, help="0 skips the overhead measurement")
    p.add_argument("--tau", type=float, default=0.8)
    p.add_argument("--max-step-tokens", type=int, default=128)
    p.add_argument("--max-thinking-tokens", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--final-max-tokens", type=int, default=192)
    p.add_argument("--max-tool-calls", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not args.report_only:
        measure(args, args.out)
    sidecar = args.out.with_suffix(".overhead.json")
    cost = None
    if args.overhead_calls > 0 and not args.report_only:
        cost = overhead(args.overhead_calls) | {"cpu": cpu_name(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps(cost, indent=1) + "\n", encoding="utf-8")
    elif sidecar.exists():
        cost = json.loads(sidecar.read_text(encoding="utf-8"))
    ids = [p.id for p in load_problems(args.data, start=args.start, limit=args.limit)]
    text = render(args, argv, summarize(read_records(args.out), args.arms, ids), cost)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
