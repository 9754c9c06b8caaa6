"""Validate the cost model on this machine's records, project them onto other hardware, render COST_MODEL.md.

Usage (from the repository root; a quiet machine: nothing else running):

    # measure: start the local pair once, profile it (glimp profile's requests), then run a short check
    # evaluation on the same servers (problems outside the report's rows), write the profile into the package
    flock /tmp/glimp-heavy.lock python bench/cost_model.py --measure
    # render only (also rewrites the H200 floor profiles from ../shared/docs/gpu_costs_h200.jsonl)
    python bench/cost_model.py --write-floor-profiles

The profile is fitted on its own controlled requests only; no record's latency is ever used to fit it. The same
profile can be made with `glimp profile --ctx-size 4096 --name cpu-epyc-qwen-coder --out FILE` alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glimp_graph.eval import costmodel as cm
from glimp_graph.eval import find_stalls, load_records

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "glimp_graph" / "eval" / "profiles"
CPU_PROFILE = "cpu-epyc-qwen-coder"
GPU_COSTS = ROOT.parent / "shared" / "docs" / "gpu_costs_h200.jsonl"
TOLERANCE = 0.10

FLOOR_PAIRS = [
    # name, small row, large row, what it stands for
    ("h200-floor-qwen2.5-0.5b-1.5b", "qwen2.5-0.5b", "qwen2.5-1.5b", "the shapes of this machine's pair"),
    ("h200-floor-r1-32b-qwen3-4b", "qwen3-4b", "qwen2.5-32b(r1-distill-32b)", "the paper's pair"),
    ("h200-floor-r1-32b-qwen3-1.7b", "qwen3-1.7b", "qwen2.5-32b(r1-distill-32b)", "R1-Distill-32B with Qwen3-1.7B"),
    ("h200-floor-r1-7b-qwen2.5-1.5b", "qwen2.5-1.5b", "qwen2.5-7b(r1-distill-7b)", "R1-Distill-7B with Qwen2.5-1.5B"),
]


DATA = ROOT.parent / "shared" / "data" / "gsm8k_dev.jsonl"
CHECK_RESULTS = ROOT / "bench" / "results" / "cost_model_check.jsonl"
SESSION1 = (
    ROOT / "bench" / "results" / "cost_model_session1_profile.json",
    ROOT / "bench" / "results" / "cost_model_session1_check.jsonl",
)
"""The first session's profile and check run (rows 100-103), on which the replay's rules were set."""
BASE = {"max_step_tokens": 256, "max_thinking_tokens": 768, "max_steps": 32, "final_max_tokens": 64}  # as run_report
CHECK_JOBS = (("glimp", 0.7994), ("small-only", None), ("large-only", None), ("random", 0.75), ("specreason", 3.7182))
"""The check evaluation's jobs, at the thresholds bench/results/calibration.json holds for the report."""


async def measure(args: argparse.Namespace) -> None:
    """Start the local pair, profile it, then run the check evaluation on the same servers."""
    import httpx

    from glimp_graph import Endpoint
    from glimp_graph.eval import Job, load_problems, run_eval
    from glimp_graph.eval.provenance import collect_provenance, cpu_info, process_binary
    from glimp_graph.serving import LocalModels

    with LocalModels(small=args.local_small, large=args.local_large, ctx_size=4096) as models:
        small = Endpoint(base_url=models.small.base_url, model=models.small.alias, seed=0)
        large = Endpoint(base_url=models.large.base_url, model=models.large.alias, seed=0)
        started = {
            role: {"binary": process_binary(server.pid), "model_file": server.model_path.name}
            for role, server in (("small", models.small), ("large", models.large))
        }
        pids = [models.small.pid, models.large.pid]
        before = cm.cpu_times(pids)
        profile = await cm.measure_profile(
            small,
            large,
            plan=cm.ProfilePlan(repeats=args.repeats)
            if not args.smoke
            else cm.ProfilePlan(new_tokens=(0, 32), generated_tokens=(1, 8), repeats=1, top_k=0),
            name=CPU_PROFILE,
            description=(
                f"{cpu_info()['model']}, {cpu_info()['cores']} cores; Qwen2.5-Coder-0.5B / 1.5B-Instruct Q4_K_M on "
                "llama.cpp llama-server "
                "(2 threads each, -np 1, ctx 4096)"
            ),
            provenance=await collect_provenance(small, large, servers=started),
            progress=print,
            watch_pids=pids,
        )
        target = Path(args.profile) if args.profile else PROFILES / f"{CPU_PROFILE}.json"
        profile.save(target)
        print(f"wrote {target}")
        if args.check_n:
            snapshots: list[Any] = []

            async def flush_prompt_caches() -> None:  # as bench/run_report.py: each run starts uncached
                async with httpx.AsyncClient(timeout=60) as client:
                    for server in (models.small, models.large):
                        await client.post(
                            f"{server.base_url}/chat/completions",
                            json={"messages": [{"role": "user", "content": "ok"}], "max_tokens": 1},
                        )
                snapshots.append(cm.cpu_times(pids))  # the run starts now

            problems = load_problems(DATA, start=args.check_start, limit=args.check_n)
            written = await run_eval(
                small,
                large,
                problems,
                [Job(name, tau) for name, tau in CHECK_JOBS],
                args.check_results,
                base_config=BASE,
                before_each=flush_prompt_caches,
                seed=0,
                servers=started,
            )
            # how busy other work kept the cores during each run (the next run's start ends it)
            snapshots.append(cm.cpu_times(pids))
            busy = {
                (r["job"], r["id"]): cm.cpu_contention(a, b)
                for r, a, b in zip(written, snapshots, snapshots[1:], strict=False)
            }
            lines = []
            for line in Path(args.check_results).read_text().splitlines():
                record = json.loads(line)
                if (record["job"], record["id"]) in busy:
                    record["cpu_contention"] = busy[(record["job"], record["id"])]
                lines.append(json.dumps(record))
            Path(args.check_results).write_text("\n".join(lines) + "\n")
        contention = cm.cpu_contention(before, cm.cpu_times(pids))
        if contention:
            profile.extra["session_cpu_contention"] = contention
            profile.save(target)


def write_floor_profiles(gpu_costs: Path) -> list[Path]:
    """Build the H200 floor profiles from the kernel benchmark's JSONL and write them into the package."""
    lines = [json.loads(x) for x in gpu_costs.read_text().splitlines() if x.strip()]
    header = next((x for x in lines if "device" in x), {})
    rows = {x["model"]: x for x in lines if "model" in x}
    device = str(header.get("device", "GPU"))
    written = []
    for name, small, large, what in FLOOR_PAIRS:
        profile = cm.kernel_floor_profile(
            rows[small],
            rows[large],
            name=name,
            description=f"{device}, batch 1: {large} (large) and {small} (small), {what}; kernel-benchmark floor",
            device=device,
        )
        profile.extra["source_file"] = f"../shared/docs/{gpu_costs.name} ({header.get('torch', 'torch ?')})"
        written.append(profile.save(PROFILES / f"{name}.json"))
    return written


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def _quiet(load: Any, cores: int | None) -> str:
    if not isinstance(load, dict) or not load.get("before"):
        return "the load average was not recorded"
    before, after = load["before"][0], (load.get("after") or [None])[0]
    return (
        f"1-minute load average {before:.2f} before and {after:.2f} after the run on {cores} cores (the servers' "
        "own threads count in it; the contention below tells them from other work)"
    )


def _profile_section(profile: cm.Profile, path: str) -> list[str]:
    prov = profile.extra.get("provenance", {})
    cpu = prov.get("cpu", {})
    servers = prov.get("servers", {})
    plan = profile.extra.get("plan", {})
    out = [
        f"Profile `{profile.name}` ({path}): {profile.description}",
        "",
        cm.profile_table(profile),
        f"- Measured {profile.extra.get('measured_at', '?')} in {profile.extra.get('measure_seconds', '?')} s: "
        f"new-prompt lengths {plan.get('new_tokens')} x generated {plan.get('generated_tokens')} tokens, "
        f"{plan.get('repeats')} repeats of each cell, after a cached base of ~{plan.get('base_tokens')} tokens; "
        + (
            f"with top-{plan.get('top_k')} log-probabilities: {plan.get('logprob_new_tokens')} x "
            f"{plan.get('logprob_generated_tokens')}. "
            if plan.get("top_k")
            else "no log-probability grid. "
        )
        + "Each rate is fitted by least squares (relative residuals) to the cells' medians.",
        f"- CPU: {cpu.get('model', '?')}, {cpu.get('cores', '?')} cores; "
        f"{_quiet(profile.extra.get('load_average'), cpu.get('cores'))}.",
    ]
    for role in ("small", "large"):
        s = servers.get(role, {})
        out.append(
            f"- {role}: `{s.get('model', '?')}` ({s.get('model_file', '?')}), {s.get('owned_by', '?')} "
            f"`{s.get('binary', '?')}`, build {s.get('build_info', '?')}."
        )
    if prov.get("commit"):
        dirty = " (+ uncommitted changes)" if prov.get("dirty") else ""
        out.append(f"- Code: {str(prov['commit'])[:7]}{dirty}; packages {prov.get('packages', {})}.")
    out += ["", "Residuals of each fit (cell medians; ms):", ""]
    out.append("| server | calls | new prompt tokens | generated tokens | measured | fitted | residual |")
    out.append("|---|---|---|---|---|---|---|")
    for role, fits in profile.extra.get("fits", {}).items():
        for kind, fit in fits.items():
            for r in fit.get("residuals", []):
                m, f = r["measured_s"] * 1000, r["fitted_s"] * 1000
                out.append(
                    f"| {role} | {kind} | {r['new_prompt_tokens']:g} | {r['generated_tokens']:g} | {m:.0f} | "
                    f"{f:.0f} | {(m - f) / m:+.1%} |"
                )
    return out


def _stall_problems(records: Sequence[dict[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for stall in find_stalls(records):
        found.setdefault(stall.job, set()).add(stall.id)
    return found


def _largest_gap(check: cm.JobCheck) -> str:
    m, p = check.measured_parts_s, check.predicted_parts_s
    gaps = {part: p[part] - m[part] for part in ("probes", "steps", "final")}
    part = max(gaps, key=lambda k: abs(gaps[k]))
    names = {"probes": "probes, drafts and judges", "steps": "steps", "final": "final answers"}
    return f"its {names[part]} ({m[part]:.1f} s measured, {p[part]:.1f} s predicted)"


def _validation_section(
    records: list[dict[str, Any]], profile: cm.Profile, prompt_tokens: int | None, prompt_cache: cm.PromptCache
) -> list[str]:
    checks = cm.validate(records, profile, prompt_tokens=prompt_tokens, prompt_cache=prompt_cache)
    stalls = _stall_problems(records)
    ok = [c for c in checks if abs(c.median_error) <= TOLERANCE and abs(c.total_error) <= TOLERANCE]
    out = [
        cm.validation_table(checks, tolerance=TOLERANCE),
        "Where the time goes (summed over the job's problems; 'outside calls' is the framework's share, which the "
        "model does not price):",
        "",
        cm.parts_table(checks),
        f"**{len(ok)} of {len(checks)} jobs** are predicted within {TOLERANCE:.0%} on both the median per-problem "
        "latency and the total.",
        "",
    ]
    for c in checks:
        if c in ok:
            continue
        reasons = []
        runs = [r for r in records if r["job"] == c.job and not r.get("error")]
        busy = [r for r in runs if (r.get("cpu_contention") or {}).get("other_cores", 0) > QUIET_CORES]
        if busy:
            reasons.append(
                "other work shared the cores during "
                + ", ".join(f"{r['id']} ({r['cpu_contention']['other_cores']:.2f} cores)" for r in busy)
            )
        if c.job in stalls:
            ids = stalls[c.job]
            again = [
                x
                for x in cm.validate(
                    records,
                    profile,
                    prompt_tokens=prompt_tokens,
                    prompt_cache=prompt_cache,
                    where=lambda r, job=c.job, ids=ids: r["job"] == job and r["id"] not in ids,
                )
                if x.job == c.job
            ]
            without = (
                f"without {'that problem' if len(ids) == 1 else 'those problems'} the total is off by "
                f"{_pct(again[0].total_error)} and the median by {_pct(again[0].median_error)}"
                if again
                else "every problem of the job has one"
            )
            reasons.append(f"stalled steps on {', '.join(sorted(ids))} (the model has no stall): {without}")
        reasons.append(f"the largest gap is in {_largest_gap(c)}")
        out.append(
            f"- `{c.job}` misses (median {_pct(c.median_error)}, total {_pct(c.total_error)}): "
            + "; ".join(reasons)
            + "."
        )
    return out


def _projection_section(
    records: list[dict[str, Any]], profiles: Sequence[cm.Profile], prompt_tokens: int | None
) -> list[str]:
    out: list[str] = []
    for profile in profiles:
        rows = cm.project(records, profile, prompt_tokens=prompt_tokens)
        out += [f"### `{profile.name}`", "", profile.description + ".", ""]
        if profile.source == "kernel-floor":
            out += [f"**{profile.note}.**", ""]
        out.append(cm.projection_table(rows))
        by_job = {r.job: r for r in rows}
        glimp = next((r for r in rows if r.job.startswith("glimp@")), None)
        if glimp is not None:
            verdict = "pays" if glimp.ratio_median < 1 else "does not pay"
            out.append(
                f"`{glimp.job}`: {glimp.ratio_median:.2f}x large-only per problem (median; ratio of totals "
                f"{glimp.ratio_total:.2f}); the ideal mix of its steps {glimp.ideal_ratio_median:.2f}x: routing "
                f"{verdict} here; {_kept(glimp)} (totals)."
            )
            small = by_job.get("small-only")
            if small is not None:
                out.append(f"`small-only`: {small.ratio_median:.2f}x.")
            out.append("")
    return out


def _kept(row: cm.JobProjection) -> str:
    saving = 1 - row.ideal_ratio_total
    if saving <= 0:
        return "the ideal mix itself saves nothing"
    kept = (1 - row.ratio_total) / saving
    if kept <= 0:
        return f"probing and switching eat all of the {saving:.0%} the ideal mix would save"
    return f"probing and switching leave {kept:.0%} of the {saving:.0%} the ideal mix would save"


HOW_TO = """## Making a profile for any server

`glimp profile` measures the two endpoints a router would use, through the same client the router uses:

    glimp profile --small-url http://HOST:PORT/v1 --small-model NAME \\
                  --large-url http://HOST:PORT/v1 --large-model NAME --name my-gpu --out my-gpu.json
    glimp project --results bench/results/gsm8k_qwen.jsonl --profile my-gpu.json

Without URLs it starts the local llama.cpp pair (as `glimp eval` does). Each measurement first sends a cached base
prompt (a counting list of about `--base-tokens` tokens) with one generated token, then the same prompt plus new
text that no earlier request sent (a fresh tag opens it, so no prefix cache can hold it), asking for a given number
of tokens with the endpoint's sampling (the temperature and top-p of the router's steps); the new prompt tokens are
the difference of the two prompts' token counts as the server reports them, the generated tokens what it reports
generating. The grid (`--new-tokens`, `--generated-tokens`) runs `--repeats` times in a shuffled order, one server
after the other, and a second, smaller grid asks for `--top-k` log-probabilities as the probe, the drafts and the
judge do (a server may price those calls differently; `--top-k 0` skips it). The fit uses each cell's median, so
one slow call does not move a rate. The file keeps every measurement, the fits with their
residuals, the CPU, the servers' builds and models, the machine's load average and, for a local pair, how many cores
other processes kept busy during each call (a call they disturbed is measured again, up to twice, and left out of
its cell's median): rerun it on a quiet machine when they were busy. Anything serving the OpenAI chat API with
`usage` works (vLLM, llama.cpp, SGLang, a hosted API); a server without prefix caching shows up as a high prefill
rate of the whole prompt, which the replay does not model (it assumes each server caches what it has read).

`glimp project --profile NAME` accepts a file or a shipped profile: """


def _step_speeds(records: Sequence[dict[str, Any]], profile: cm.Profile) -> list[str]:
    """Records' standalone per-token speed against what the profile prices the same steps at (no fit involved)."""
    out = []
    for job, role in (("small-only", "small"), ("large-only", "large")):
        steps = [
            s
            for r in records
            if r.get("strategy") == job
            for s in r["step_records"][1:]  # the first step also reads the question
            if (s.get("tokens") or 0) > 4 and (s.get("seconds") or 0) > 0
        ]
        if not steps:
            continue
        measured = statistics.median(s["seconds"] / s["tokens"] for s in steps)
        cost = profile.server(role).plain  # type: ignore[arg-type]
        priced = statistics.median(cost.seconds(1, s["tokens"]) / s["tokens"] for s in steps)
        out.append(
            f"`{job}`'s steps ({len(steps)} of more than 4 tokens, after the first): {measured * 1000:.1f} ms per "
            f"token measured, {priced * 1000:.1f} ms as the profile prices them ({priced / measured - 1:+.0%})"
        )
    return out


def _drift_table(records: Sequence[dict[str, Any]], profile: cm.Profile) -> list[str]:
    s1_profile, _ = SESSION1
    sources = [("the records (standalone steps, median s/token)", None)]
    if s1_profile.exists():
        sources.append(("first session's profile (greedy decoding)", cm.load_profile(s1_profile)))
    sources.append((f"this profile ({profile.extra.get('measured_at', '?')})", profile))
    out = [
        "| source | small: decode (ms/token) | small: prefill (ms/token) | large: decode | large: prefill |",
        "|---|---|---|---|---|",
    ]
    for label, prof in sources:
        if prof is None:
            cells = []
            for job in ("small-only", "large-only"):
                per = [
                    s["seconds"] / s["tokens"]
                    for r in records
                    if r.get("strategy") == job
                    for s in r["step_records"][1:]
                    if (s.get("tokens") or 0) > 4 and (s.get("seconds") or 0) > 0
                ]
                cells += [f"{statistics.median(per) * 1000:.1f}" if per else "n/a", "n/a"]
        else:
            cells = [
                f"{prof.server(role).plain.decode_s_per_token * 1000:.1f}"  # type: ignore[arg-type]
                if k == "decode"
                else f"{prof.server(role).plain.prefill_s_per_token * 1000:.2f}"  # type: ignore[arg-type]
                for role in ("small", "large")
                for k in ("decode", "prefill")
            ]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _ratio_table(records: list[dict[str, Any]], profile: cm.Profile, prompt_tokens: int | None) -> list[str]:
    rows = cm.project(records, profile, prompt_tokens=prompt_tokens, prompt_cache="llama.cpp")
    out = [
        "| job | predicted ratio (median) | recorded ratio (median) | difference |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if r.recorded_ratio_median:
            diff = r.ratio_median / r.recorded_ratio_median - 1
            out.append(f"| {r.job} | {r.ratio_median:.2f} | {r.recorded_ratio_median:.2f} | {diff:+.1%} |")
    return out


def _contention_line(profile: cm.Profile) -> str:
    parts = []
    for key, what in (("cpu_contention", "while profiling"), ("session_cpu_contention", "over the whole session")):
        c = profile.extra.get(key)
        if c:
            parts.append(
                f"{what} ({c['seconds']:.0f} s) the two servers kept {c['servers_cores']:.2f} of {c['cores']} cores "
                f"busy and other work {c['other_cores']:.2f} (not counting this client; hypervisor steal "
                f"{c['steal_cores']:.2f})"
            )
    if not parts:
        return "- CPU contention: not recorded (the servers were not started by the profiling run)."
    busy = max(profile.extra.get(k, {}).get("other_cores", 0) for k in ("cpu_contention", "session_cpu_contention"))
    verdict = (
        "the machine was NOT quiet: other work shared the cores the servers run on"
        if busy > 0.15
        else "no other process on this machine shared the cores (a busy host under a virtual machine does not show "
        "here; see the drift between sessions below)"
    )
    return f"- CPU contention: {'; '.join(parts)}: {verdict}."


QUIET_CORES = 0.1
"""A check run is 'quiet' when other work kept fewer cores than this busy on average while it ran."""


def _quiet_runs_section(
    check: list[dict[str, Any]], profile: cm.Profile, prompt_tokens: int | None, prompt_cache: cm.PromptCache
) -> list[str]:
    tagged = [r for r in check if isinstance(r.get("cpu_contention"), dict)]
    if not tagged:
        return []
    quiet = [r for r in tagged if r["cpu_contention"]["other_cores"] <= QUIET_CORES]
    shares = sorted(r["cpu_contention"]["other_cores"] for r in tagged)
    out = [
        f"Other work during the check runs (mean cores busy outside the two servers and the client, per run): "
        f"median {statistics.median(shares):.2f}, max {shares[-1]:.2f}; {len(quiet)} of {len(tagged)} runs stayed "
        f"under {QUIET_CORES:g} core.",
        "",
    ]
    if quiet:
        out += [
            "The same comparison on those quiet runs only (chosen by the machine's load, not by their error):",
            "",
            cm.validation_table(
                cm.validate(
                    check,
                    profile,
                    prompt_tokens=prompt_tokens,
                    prompt_cache=prompt_cache,
                    where=lambda r: (r.get("cpu_contention") or {}).get("other_cores", 1.0) <= QUIET_CORES,
                ),
                tolerance=TOLERANCE,
            ),
        ]
    return out


def _jobs_of(records: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"`{job}`" for job in dict.fromkeys(r["job"] for r in records))


def render(args: argparse.Namespace) -> str:
    """COST_MODEL.md from the CPU profile, the records and the shipped profiles."""
    records = [r for r in load_records(args.results) if not r.get("error")]
    profile_path = Path(args.profile) if args.profile else PROFILES / f"{CPU_PROFILE}.json"
    cpu = cm.load_profile(profile_path)
    rel = profile_path.resolve().relative_to(ROOT) if profile_path.resolve().is_relative_to(ROOT) else profile_path
    floors = [n for n in cm.shipped_profiles() if n.startswith("h200-floor-")]
    q = args.prompt_tokens
    n_problems = len({r["id"] for r in records})
    check = [r for r in load_records(args.check_results) if not r.get("error")]
    check_rel = args.check_results
    parts = [
        "# Cost model: validated on this CPU, then used to project the routing onto other hardware",
        "",
        "Commands: `flock /tmp/glimp-heavy.lock python bench/cost_model.py --measure --write-floor-profiles` (starts "
        f"the local pair, profiles it into {rel}, runs the check evaluation, renders this file); "
        "`python bench/cost_model.py --write-floor-profiles` renders it again. The profile alone: `glimp profile "
        f"--ctx-size 4096 --name {CPU_PROFILE} --out FILE`. `glimp project --results {args.results} --profile NAME "
        "[--validate]` prints the projection and validation tables.",
        "",
        "## The model",
        "",
        "One call to one server costs `t = overhead + prefill_rate x new prompt tokens + decode_rate x generated "
        "tokens`, per model and server, and per kind of call where the server prices it differently (with top-k "
        "log-probabilities, as the probe, the drafts of step-entropy and step-perplexity and SpecReason's judge ask "
        "for them). New prompt tokens are those the server has not cached: both servers keep a prefix cache, so a "
        "server that wrote the previous step reads only the delimiter, one that did not reads the step the other "
        "model wrote (the switching cost), and each server's first call of a run reads the initial prompt.",
        "",
        "The records keep each step's model and tokens, not each call's new-prompt tokens (`small_prompt_tokens` / "
        "`large_prompt_tokens` in newer records are totals of whole prompts, cached part included), so the replay "
        "rebuilds the calls from the steps, one rule per scorer (`glimp_graph.eval.costmodel.trace_calls`): the "
        "probe reads from where the small server stopped and the small step continues the probed token; a large "
        "step reads everything since the large server's last call; a drafting scorer drafts every step on the small "
        "server (a rejected draft's tokens are the record's `small_tokens` less the accepted steps'); SpecReason's "
        "judge is a conversation of its own on the large server (it repeats the question and the trace; each judge "
        f"reads what is new since the last, the draft and ~{cm.JUDGE_TAIL_TOKENS} tokens of instruction); the final "
        f"answer reads the end of the trace and the answer prefix (~{cm.ANSWER_PREFIX_TOKENS} tokens).",
        "",
        "Each server's first call of a run reads the whole initial prompt (system message, instruction, question: "
        "the benchmarks point both servers' caches elsewhere before each run), as long as the record's own "
        "prompt-token counts make it (`small_prompt_tokens` less every call's trace tokens, per call: 119-150 tokens "
        f"on the check runs' problems), or {cm.PROMPT_TOKENS} tokens for records written before those counts (the "
        "`steps` preset's text at ~4 characters a token, a ~230-character GSM8K question, the chat template). One "
        "exception, for records measured the benchmarks' way (every job on a problem in turn, on llama.cpp): its "
        "server keeps the states it drops in a prompt cache in RAM and restores the one that best matches a new "
        f"prompt when the new prompt keeps at least {cm.LLAMA_CPP_KEEP:.0%} of it, so a later job on the same "
        "problem finds the prompt an earlier job left whenever that job's context on the server was at most four "
        "times the prompt (`restored_prompts`; `--prompt-cache llama.cpp`). The validations below follow it; the "
        "projections do not (a deployment sees each question once). No rate is fitted to any record.",
        "",
        "## This machine's profile",
        "",
        *_profile_section(cpu, str(rel)),
        _contention_line(cpu),
        "",
    ]
    if check:
        ids = sorted({r["id"] for r in check})
        parts += [
            f"## Validation 1: a check run on the profiled servers ({len(ids)} problems, {check_rel})",
            "",
            f"Right after the profile, on the same servers in the same session, `bench/cost_model.py --measure` ran "
            f"{_jobs_of(check)} on GSM8K dev problems {ids[0]}..{ids[-1]} (outside the report's rows, the "
            "calibration's and the first session's below; the report's budgets, sampling, job order and cache "
            "flushing), so the machine's speed and load are the profile's. The replay's rules were fixed before this "
            f"run. Every run replayed under `{cpu.name}` against its measured latency, with llama.cpp's prompt cache "
            "in RAM followed (`--prompt-cache llama.cpp`: later jobs on a problem find the prompt an earlier one left, "
            "see the rules above):",
            "",
            *_validation_section(check, cpu, q, "llama.cpp"),
            "",
            *_quiet_runs_section(check, cpu, q, "llama.cpp"),
            "",
            "With every run reading its whole prompt (`--prompt-cache run`), for comparison:",
            "",
            cm.validation_table(cm.validate(check, cpu, prompt_tokens=q, prompt_cache="run"), tolerance=TOLERANCE),
        ]
    s1_profile, s1_check = SESSION1
    if s1_profile.exists() and s1_check.exists():
        first = cm.load_profile(s1_profile)
        first_check = [r for r in load_records(s1_check) if not r.get("error")]
        ids1 = sorted({r["id"] for r in first_check})
        parts += [
            "",
            f"## How the rules were set: a first session (problems {ids1[0]}..{ids1[-1]})",
            "",
            f"A first session ({s1_profile.relative_to(ROOT)}, {s1_check.relative_to(ROOT)}; the same script, "
            "its profile decoding greedily) ran the same jobs on four other problems. Comparing it with the replay "
            "as it then was changed three rules: each server's first call of a run read only the question, taking "
            "the instruction as cached, where the first probes took 0.5-0.8 s against 0.28 s predicted (the cache "
            "flush before each run evicts the instruction too): the first call now reads the whole prompt, its "
            "length from the record's token counts; later jobs' first steps ran with no prompt to read at all, "
            "which is llama.cpp's prompt cache in RAM restoring the prompt an earlier job left "
            "(`restored_prompts`, from the server's source); and the profile now samples as the steps do "
            "(temperature 0.6, top-p 0.95) instead of greedily. No rate was changed by hand. That session under the "
            "final rules and its own profile:",
            "",
            cm.validation_table(
                cm.validate(first_check, first, prompt_tokens=q, prompt_cache="llama.cpp"), tolerance=TOLERANCE
            ),
        ]
    parts += [
        "",
        f"## Validation {2 if check else 1}: the report's records ({n_problems} GSM8K problems, every job of "
        f"{args.results})",
        "",
        f"Every recorded run replayed under `{cpu.name}` (fitted on the profiling run only; nothing tuned on these "
        "rows) with llama.cpp's prompt cache followed, against the latency the record measured. Command: "
        f"`python bench/cost_model.py` or `glimp project --results {args.results} --profile {cpu.name} "
        "--prompt-cache llama.cpp --validate`.",
        "",
        *_validation_section(records, cpu, q, "llama.cpp"),
        "",
        "The records were measured earlier, on a machine of this kind (their CPU is not recorded: REPORT.md's "
        "provenance), the profile on this one today. How fast each machine ran the same kind of step:",
        "",
        *[f"- {line}." for line in _step_speeds(records, cpu)],
        "",
        "A difference there is the machines' (or their load's), not the model's: it moves every prediction of "
        "these records by about as much, and only a profile of the machine that measured them can remove it "
        "(`glimp profile` on it; SERVING.md notes that machines of the same name differ by 2-3x). This machine "
        "drifted too, between two sessions an hour apart with no other work on its cores:",
        "",
        *_drift_table(records, cpu),
        "",
        "A ratio to large-only on the same problem cancels a machine's overall speed; what is left is the balance "
        "of prefill, decode and per-call costs, which differs between machines as well. Each job's median "
        "per-problem ratio to large-only, predicted (this profile, llama.cpp's prompt cache followed) against "
        "recorded:",
        "",
        *_ratio_table(records, cpu, q),
        "",
        "Other caveats. The size limit of llama.cpp's prompt cache is not modelled (the report's variant pass, run "
        "after the main one, is taken to find nothing there). The framework's time outside the calls is not "
        "priced. A stalled step (REPORT.md lists them) is in the measured total, not in the prediction.",
        "",
        "## Projection: the same routing traces on other hardware",
        "",
        "`glimp project` replays each job's recorded steps under another profile. These are the local pair's "
        "traces (the Qwen2.5-Coder 0.5B/1.5B pair's routing decisions and step lengths); another pair would route "
        "and write differently, so read a projection as what these routing patterns would cost there. The ideal mix "
        "is the same steps at each model's standalone speed with no probe and no switching. The H200 profiles are "
        "built from ../shared/docs/GPU_COSTS.md (decode ms/token and the prefill of 64/256/1024 new tokens after "
        "2,048 cached, per model shape): a floor from a kernel benchmark, not vLLM measurements; they carry no "
        "serving overhead (`--call-overhead-ms` adds one per call).",
        "",
        *_projection_section(records, [cpu, *(cm.load_profile(name) for name in floors)], q),
        HOW_TO + ", ".join(f"`{n}`" for n in cm.shipped_profiles()) + ".",
        "",
    ]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="Profile the local pair and run the check first.")
    parser.add_argument("--repeats", type=int, default=3, help="Repeats of each profile cell (--measure).")
    parser.add_argument("--check-start", type=int, default=104, help="First GSM8K dev row of the check.")
    parser.add_argument("--check-n", type=int, default=4, help="Problems of the check evaluation (0: none).")
    parser.add_argument("--check-results", type=Path, default=CHECK_RESULTS.relative_to(ROOT))
    parser.add_argument("--local-small", default="qwen2.5-coder-0.5b", help="The small model (--measure).")
    parser.add_argument("--local-large", default="qwen2.5-coder-1.5b", help="The large model (--measure).")
    parser.add_argument("--smoke", action="store_true", help="A tiny profile grid (to try the script out).")
    parser.add_argument("--refit", action="store_true", help="Fit the profile again from its kept measurements.")
    parser.add_argument("--results", default="bench/results/gsm8k_qwen.jsonl")
    parser.add_argument("--profile", help=f"This machine's profile file [default: the shipped {CPU_PROFILE}].")
    parser.add_argument("--prompt-tokens", type=int, help="The initial prompt's tokens [default: per record].")
    parser.add_argument("--gpu-costs", type=Path, default=GPU_COSTS)
    parser.add_argument("--write-floor-profiles", action="store_true", help="(Re)write the H200 floor profiles.")
    parser.add_argument("--out", type=Path, default=Path("bench/COST_MODEL.md"))
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.measure:
        import asyncio

        asyncio.run(measure(args))
    if args.refit:
        target = Path(args.profile) if args.profile else PROFILES / f"{CPU_PROFILE}.json"
        cm.refit_profile(cm.load_profile(target)).save(target)
        print(f"refitted {target} from the measurements it keeps")
    if args.write_floor_profiles:
        for path in write_floor_profiles(args.gpu_costs):
            print(f"wrote {path.relative_to(ROOT)}")
    text = render(args)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
