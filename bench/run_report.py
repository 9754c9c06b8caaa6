"""The benchmark report: every strategy on GSM8K dev problems with the local real pair, one command.

    python bench/run_report.py --n 100

1. starts the local Qwen2.5-Coder pair (0.5B small, 1.5B large) on llama.cpp servers;
2. calibrates each routed strategy's threshold for a target large-step share on separate calibration
   problems (saved to bench/results/calibration.json and reused, so a rerun resumes with the same thresholds);
   before each run both servers' prompt caches are pointed elsewhere, so no strategy inherits another's cache;
3. runs all strategies problem by problem (problem-major, one run at a time) on the first N GSM8K dev problems,
   appending to bench/results/gsm8k_qwen.jsonl (resumable: finished runs are skipped; every record keeps its
   provenance: commit, packages, server build, CPU);
4. writes bench/REPORT.md, bench/tradeoff.png and bench/signals.png. Every number and every verdict in the
   report's prose is computed from the records; a job whose records come from more than one code state is
   refused unless --mix-commits is given (the report then says so and splits the headline by state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from glimp_graph import Endpoint
from glimp_graph.eval import (
    STRATEGIES,
    Job,
    calibrate,
    find_stalls,
    load_problems,
    load_records,
    markdown_stalls,
    markdown_table,
    paired,
    quantile,
    ratio_summary,
    routing_profile,
    run_eval,
    summarize,
    wilson_interval,
)
from glimp_graph.eval.calibrate import collect_scores
from glimp_graph.eval.provenance import code_version, label, mixed_jobs, states_by_job
from glimp_graph.eval.stats import RESAMPLES, STALL_FACTOR, two_proportion_p
from glimp_graph.eval.strategies import resolve_scorer

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "gsm8k_dev.jsonl"
MATH_DATA = HERE.parents[1] / "shared" / "data" / "math500_dev.jsonl"
GPU_COSTS = HERE.parents[1] / "shared" / "docs" / "gpu_costs_h200.jsonl"
RESULTS = HERE / "results"
MAIN = ("glimp", "small-only", "large-only", "random", "step-entropy", "step-perplexity", "specreason")
CALIBRATED = ("glimp", "step-entropy", "step-perplexity", "specreason", "random")
VARIANTS = ("glimp-4",)  # extensions, calibrated like the main jobs
HEADLINE = ("glimp", "small-only", "large-only", "random", "glimp-4")  # measured by default, on one code state
MATH_JOBS = ("glimp", "small-only", "large-only", "random")  # the MATH-500 section's
SIGNALS = ("glimp", "step-entropy", "step-perplexity", "specreason", "glimp-4")  # routed by a difficulty signal
BASE = {"max_step_tokens": 256, "max_thinking_tokens": 768, "max_steps": 32, "final_max_tokens": 64}
PAPER_PAIR = ("qwen3-4b", "qwen2.5-32b(r1-distill-32b)")  # the paper's small and large model, as GPU_COSTS names them
ALPHA = 0.05  # the significance level of every verdict in the prose


class MixedCommits(ValueError):
    """A job's records come from more than one code state and --mix-commits was not given."""


# --------------------------------------------------------------------------- measuring


async def _calibrate_taus(
    small: Endpoint,
    large: Endpoint,
    args: argparse.Namespace,
    names: Sequence[str],
    *,
    data: Path = DATA,
    start: int | None = None,
    n: int | None = None,
) -> dict[str, float]:
    start = args.calibration_start if start is None else start
    cal_problems = load_problems(data, start=start, limit=args.calibration_n if n is None else n)
    taus = {}
    for name in names:
        result = await calibrate(
            small,
            large,
            cal_problems,
            scorer=resolve_scorer(name),
            target_large_share=args.target_large_share,
            base_config=BASE,
        )
        taus[name] = round(result.tau, 4)
        print(f"calibrated {name}: tau={result.tau:.4f} ({len(result.scores)} steps)", flush=True)
    return taus


async def _sweep_taus(small: Endpoint, large: Endpoint, args: argparse.Namespace) -> dict[str, float]:
    """glimp's tau for each extra large-step share, from one collection of H_init on the calibration problems."""
    cal_problems = load_problems(DATA, start=args.calibration_start, limit=args.calibration_n)
    scores = await collect_scores(small, large, cal_problems, scorer="glimp", base_config=BASE)
    return {f"{share:g}": round(quantile(scores, 1.0 - share), 4) for share in args.sweep_shares}


def sweep_jobs(calibration: dict, args: argparse.Namespace) -> list[Job]:
    """The threshold sweep's jobs: glimp at each extra share, random at its extra shares."""
    sweep = calibration.get("sweep", {})
    jobs = [Job("glimp", sweep[f"{share:g}"]) for share in args.sweep_shares if f"{share:g}" in sweep]
    return jobs + [Job("random", round(1.0 - share, 4)) for share in args.random_shares]


async def _measure(args: argparse.Namespace, cache: str | None, calibration_file: Path) -> None:
    import httpx

    from glimp_graph.eval.provenance import process_binary
    from glimp_graph.serving import LocalModels

    with LocalModels(cache_dir=cache, ctx_size=4096) as models:
        small = Endpoint(base_url=models.small.base_url, model=models.small.alias, seed=0)
        large = Endpoint(base_url=models.large.base_url, model=models.large.alias, seed=0)
        started = {
            role: {"binary": process_binary(server.pid), "model_file": server.model_path.name}
            for role, server in (("small", models.small), ("large", models.large))
        }
        calibration = json.loads(calibration_file.read_text()) if calibration_file.exists() else {}
        calibration.setdefault("target_large_share", args.target_large_share)
        last = args.calibration_start + args.calibration_n - 1
        calibration.setdefault("problems", f"gsm8k_dev rows {args.calibration_start}..{last}")
        taus = calibration.setdefault("taus", {})
        missing = [name for name in args.jobs if name in CALIBRATED + VARIANTS and name not in taus]
        if missing:  # only the thresholds of the jobs asked for; a later run with more jobs adds its own
            taus.update(await _calibrate_taus(small, large, args, missing))
            calibration_file.write_text(json.dumps(calibration, indent=2) + "\n")
        missing_shares = [s for s in args.sweep_shares if f"{s:g}" not in calibration.get("sweep", {})]
        if missing_shares:
            calibration["sweep"] = {**calibration.get("sweep", {}), **await _sweep_taus(small, large, args)}
            print(f"sweep taus: {calibration['sweep']}", flush=True)
            calibration_file.write_text(json.dumps(calibration, indent=2) + "\n")

        async def flush_prompt_caches() -> None:
            # every run starts with the question uncached on both servers, whatever ran before it
            async with httpx.AsyncClient(timeout=60) as client:
                for server in (models.small, models.large):
                    await client.post(
                        f"{server.base_url}/chat/completions",
                        json={"messages": [{"role": "user", "content": "ok"}], "max_tokens": 1},
                    )

        async def run(problems: list, jobs: list[Job], results: Path) -> None:
            await run_eval(
                small,
                large,
                problems,
                jobs,
                results,
                base_config=BASE,
                before_each=flush_prompt_caches,
                seed=0,
                servers=started,
            )

        # the jobs asked for, problem by problem (each problem's runs minutes apart: the per-problem ratios do not
        # see the machine's speed drift); then MATH-500; then the threshold sweep
        await run(load_problems(DATA, limit=args.n), [Job(name, taus.get(name)) for name in args.jobs], args.results)
        if args.math_n:
            math = calibration.setdefault(
                "math500",
                {
                    "problems": f"math500_dev rows {args.math_calibration_start}.."
                    f"{args.math_calibration_start + args.math_calibration_n - 1}"
                },
            )
            math_taus = math.setdefault("taus", {})
            math_missing = [name for name in MATH_JOBS if name in CALIBRATED and name not in math_taus]
            if math_missing:
                math_taus.update(
                    await _calibrate_taus(
                        small,
                        large,
                        args,
                        math_missing,
                        data=MATH_DATA,
                        start=args.math_calibration_start,
                        n=args.math_calibration_n,
                    )
                )
                calibration_file.write_text(json.dumps(calibration, indent=2) + "\n")
            math_jobs = [Job(name, math_taus.get(name)) for name in MATH_JOBS]
            await run(load_problems(MATH_DATA, limit=args.math_n), math_jobs, args.math_results)
        if args.sweep_shares or args.random_shares:
            await run(load_problems(DATA, limit=args.n), sweep_jobs(calibration, args), args.results)


# --------------------------------------------------------------------------- small helpers


def _rows_text(rows: Iterable[int | str]) -> str:
    """``[0, 1, 2, 5, 'x']`` -> ``0-2, 5, x``."""
    numbers = sorted({r for r in rows if isinstance(r, int)})
    others = sorted({str(r) for r in rows if not isinstance(r, int)})
    spans: list[str] = []
    for number in numbers:
        if spans and number == int(spans[-1].split("-")[-1]) + 1:
            spans[-1] = f"{spans[-1].split('-')[0]}-{number}"
        else:
            spans.append(str(number))
    return ", ".join(spans + others) or "none"


def _row(record: dict[str, Any], rows_of: dict[str, int]) -> int | str:
    row = record.get("row")
    return row if isinstance(row, int) else rows_of.get(record["id"], record["id"])


def _p(p: float) -> str:
    """A p-value as prose: ``p < 0.001``, ``p = 0.004``, ``p = 0.54``."""
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _span(values: Sequence[float], fmt: str = ".0%") -> str:
    """``24% to 32%``, or ``25%`` when they are all alike."""
    low, high = f"{min(values):{fmt}}", f"{max(values):{fmt}}"
    return low if low == high else f"{low} to {high}"


def _n(count: int, noun: str) -> str:
    """``3 stalled steps``, ``1 problem``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _ci(ci: tuple[float, float], fmt: str = ".2f") -> str:
    return f"{ci[0]:{fmt}}-{ci[1]:{fmt}}"


def _times_verdict(ci: tuple[float, float], other: str) -> str:
    """'faster than X' / 'slower than X' when the interval of a time ratio excludes 1, else 'as fast as'."""
    if ci[1] < 1:
        return f"faster than {other}"
    if ci[0] > 1:
        return f"slower than {other}"
    return f"not distinguishable in time from {other} (the interval holds 1)"


def _accuracy_verdict(diff: float, p: float, other: str) -> str:
    if p >= ALPHA:
        return f"not distinguishable in accuracy from {other} (sign test {_p(p)})"
    return f"{'more' if diff > 0 else 'less'} accurate than {other} (sign test {_p(p)})"


def _ok(flag: bool) -> str:
    return "met" if flag else "MISSED"


def _ok_runs(records: list[dict], job: str) -> dict[str, dict]:
    return {r["id"]: r for r in records if r["job"] == job and not r.get("error")}


def _pair_ratio(records: list[dict], a: str, b: str, seed: int) -> Any:
    runs_a, runs_b = _ok_runs(records, a), _ok_runs(records, b)
    common = sorted(set(runs_a) & set(runs_b))
    if not common:
        return None
    return ratio_summary([runs_a[i]["latency_s"] for i in common], [runs_b[i]["latency_s"] for i in common], seed=seed)


# --------------------------------------------------------------------------- sections


def _headline(rows: list[dict], records: list[dict], stalls: list, seed: int) -> list[str]:
    by = {r["strategy"]: r for r in rows}
    if "glimp" not in by or "large-only" not in by:
        return []
    g, big = by["glimp"], by["large-only"]
    p = paired(records, g["job"], big["job"])
    out = [
        "## Headline",
        "",
        f"`{g['job']}` takes a median {g['ratio_median']:.2f}x `large-only`'s time per problem (95% CI "
        f"{_ci(g['ratio_median_ci'])}; geometric mean {g['ratio_geomean']:.2f}, {_ci(g['ratio_geomean_ci'])}) "
        f"on {g['n']} problems: {_times_verdict(g['ratio_median_ci'], '`large-only`')}. It answers "
        f"{g['accuracy']:.0%} correctly (95% CI {_ci(g['accuracy_ci'], '.0%')}) against {big['accuracy']:.0%} "
        f"({_ci(big['accuracy_ci'], '.0%')}): {_accuracy_verdict(p.diff, p.p_value, '`large-only`')}.",
    ]
    stalls = [s for s in stalls if s.job in (g["job"], big["job"])]
    if stalls:
        stalled_ids = {s.id for s in stalls}
        kept = [i for i in _ok_runs(records, g["job"]) if i not in stalled_ids and i in _ok_runs(records, big["job"])]
        without = sum(_ok_runs(records, g["job"])[i]["latency_s"] for i in kept) / sum(
            _ok_runs(records, big["job"])[i]["latency_s"] for i in kept
        )
        excess: dict[str, float] = defaultdict(float)
        where: dict[str, set[str]] = defaultdict(set)
        for s in stalls:
            excess[s.job] += s.seconds - s.tokens * s.median_per_token_s
            where[s.job].add(str(s.row if s.row is not None else s.id))
        added = "; ".join(
            f"`{job}`'s, on {'row' if len(where[job]) == 1 else 'rows'} {', '.join(sorted(where[job]))}, took "
            f"{excess[job]:.1f} s more than the job's median time per token gives, {excess[job] / g['n']:.2f} s on "
            "its mean latency"
            for job in sorted(excess)
        )
        out += [
            "",
            f"The ratio of mean latencies, {g['latency_ratio']:.2f}, counts {_n(len(stalls), 'stalled step')} of "
            f"these two jobs (listed below: {added}); without the {_n(len(stalled_ids), 'problem')} they occur on it "
            f"is {without:.2f}. The headline and the targets use the median per-problem ratio, which one slow "
            "problem cannot drag.",
        ]
    else:
        out += ["", f"Neither job has a stalled step; the ratio of mean latencies is {g['latency_ratio']:.2f}."]
    return [*out, ""]


def _provenance_section(
    records: list[dict], labels: Sequence[str], rows_of: dict[str, int], *, mix_commits: bool, rendered_at: str
) -> list[str]:
    shown = [r for r in records if r["job"] in labels and not r.get("error")]
    states = states_by_job(shown)
    measured_by = {state for job_states in states.values() for state in job_states}
    same = "the state that measured every record below" if measured_by == {rendered_at} else "not what measured them"
    out = [
        "## Provenance",
        "",
        f"Rendered by `bench/run_report.py` at code state `{rendered_at}`: {same}. "
        "What measured each job's records (`code <tree>`: the git tree of `glimp_graph/`, one state however many "
        "commits touched only files outside it, with those commits listed; a bare commit for records that name "
        "no tree; `+dirty` when the package's files differed from it; `unrecorded` for records written before "
        "records kept their provenance, with what git history says of them in the results' sidecar file):",
        "",
        "| job | code state | commits | rows | records |",
        "|---|---|---|---|---|",
    ]
    for job in labels:
        for state, count in states.get(job, {}).items():
            own = [r for r in shown if r["job"] == job and label(r.get("provenance")) == state]
            rows = [_row(r, rows_of) for r in own]
            commits = sorted({str((r.get("provenance") or {}).get("commit") or "")[:7] for r in own} - {""})
            out.append(f"| {job} | {state} | {', '.join(commits) or '-'} | {_rows_text(rows)} | {count} |")
    notes: dict[str, str] = {}
    cpus: dict[str, int] = defaultdict(int)
    servers: dict[str, int] = defaultdict(int)
    packages: dict[str, int] = defaultdict(int)
    unrecorded = 0
    for r in shown:
        prov = r.get("provenance") or {}
        if prov.get("source") == "sidecar" and prov.get("note"):
            notes[label(prov)] = prov["note"]
        if "cpu" not in prov:
            unrecorded += 1
            continue
        cpus[f"{prov['cpu'].get('model')}, {prov['cpu'].get('cores')} cores"] += 1
        servers[
            "; ".join(
                f"{role}: " + ", ".join(f"{k}={v}" for k, v in sorted(info.items()) if k not in ("base_url",))
                for role, info in sorted(prov.get("servers", {}).items())
            )
        ] += 1
        packages[", ".join(f"{k} {v}" for k, v in sorted(prov.get("packages", {}).items()))] += 1
    out.append("")
    for note_label, note in notes.items():
        out.append(f"- `{note_label}`: {note}")
    for title, seen in (("CPU", cpus), ("Servers", servers), ("Packages", packages)):
        for value, count in seen.items():
            out.append(f"- {title} (recorded in {count} records): {value}.")
    if unrecorded:
        out.append(f"- CPU, servers and packages: not recorded in {unrecorded} of the {len(shown)} records.")
    mixed = mixed_jobs(shown)
    if mixed:
        out += [
            "",
            f"**This report pools records of different code states in one row** (rendered with `--mix-commits`): "
            f"{', '.join(f'`{job}`' for job in mixed)}. The headline by code state (problems whose two records "
            "share that state) follows; where it differs, the pooled rows above mix it.",
        ]
    return [*out, ""]


def _by_state_section(records: list[dict], labels: Sequence[str], rows_of: dict[str, int], seed: int) -> list[str]:
    """Each job against large-only within each code state (only problems whose two records share the state)."""
    base = _ok_runs(records, "large-only")
    out = [
        "| job | code state | rows | n | latency / large-only: median (95% CI) | geometric mean | ratio of means "
        "| accuracy | large-only's accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for job in labels:
        if job == "large-only":
            continue
        runs = _ok_runs(records, job)
        groups: dict[str, list[str]] = defaultdict(list)
        for i, r in runs.items():
            if i in base and label(r.get("provenance")) == label(base[i].get("provenance")):
                groups[label(r.get("provenance"))].append(i)
        for state, ids in groups.items():
            s = ratio_summary([runs[i]["latency_s"] for i in ids], [base[i]["latency_s"] for i in ids], seed=seed)
            acc = sum(bool(runs[i]["correct"]) for i in ids) / len(ids)
            acc_base = sum(bool(base[i]["correct"]) for i in ids) / len(ids)
            rows = _rows_text(_row(runs[i], rows_of) for i in ids)
            out.append(
                f"| {job} | {state} | {rows} | {len(ids)} | {s.median:.2f} ({_ci(s.median_ci)}) | {s.geomean:.2f} "
                f"| {s.mean_ratio:.2f} | {acc:.0%} | {acc_base:.0%} |"
            )
    return [*out, ""]


def _paired_section(records: list[dict], glimp: str, others: list[str], *, title: bool = True) -> list[str]:
    out = ["## Paired comparison (same problems)", ""] if title else []
    out += [
        f"`{glimp}` against each job: problems both got right, only one got right, the accuracy difference with "
        "its paired standard error, and the exact sign test (McNemar) on the problems where they disagree.",
        "",
        f"| vs | n | both right | only {glimp} | only the other | difference (± SE) | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for other in others:
        p = paired(records, glimp, other)
        out.append(
            f"| {other} | {p.n} | {p.both} | {p.only_a} | {p.only_b} | {p.diff:+.1%} ± {p.diff_se:.1%} "
            f"| {'< 0.001' if p.p_value < 0.001 else f'{p.p_value:.3f}'} |"
        )
    return [*out, ""]


def _routing_section(records: list[dict], jobs: list[str]) -> list[str]:
    last_steps = [
        r["step_records"][-1]["text"]
        for r in records
        if r["job"] in jobs and not r.get("error") and r.get("step_records") and "text" in r["step_records"][-1]
    ]
    boxed = sum("\\boxed" in text for text in last_steps)
    last = (
        f" (in {boxed / len(last_steps):.0%} of the {len(last_steps)} runs that kept their text it holds the "
        "`\\boxed` answer)"
        if last_steps
        else ""
    )
    out = [
        "## Where the routed jobs send their steps",
        "",
        f"Large-step share of the first step, the steps between and the last step{last}; mean changes of writer "
        "per run; accuracy of the runs whose first step the large or the small model wrote.",
        "",
        "| job | runs | first | middle | last | switches | accuracy, first step large | accuracy, first step small |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for job in jobs:
        prof = routing_profile(records, job)
        if prof["runs"]:
            out.append(
                f"| {job} | {prof['runs']} | {_pct(prof['first'])} | {_pct(prof['middle'])} | {_pct(prof['last'])} "
                f"| {prof['switches']:.1f} | {_pct(prof['accuracy_first_large'])} "
                f"| {_pct(prof['accuracy_first_small'])} |"
            )
    return [*out, ""]


ARITHMETIC = re.compile(r"\d\s*[-+*/\u00d7=]|=\s*\d|\\times|\\frac|\\div")
FORMAT_TOKEN = re.compile(r"^\s*(\d+\.?|\*\*|#+|-|\\\[|\\|Step)\s*$")


def _step_kinds(records: list[dict], job: str) -> dict[bool, list[bool]]:
    """For ``job``'s steps that kept their text: arithmetic (True) or prose (False) -> went to the large model."""
    kinds: dict[bool, list[bool]] = {True: [], False: []}
    for r in records:
        if r["job"] == job and not r.get("error"):
            for step in r.get("step_records") or []:
                if "text" in step:
                    kinds[bool(ARITHMETIC.search(step["text"]))].append(step["model"] == "large")
    return kinds


def _probed_steps(records: list[dict]) -> list[dict]:
    return [
        step
        for r in records
        if r["strategy"] == "glimp" and not r.get("error")
        for step in r.get("step_records") or []
        if "text" in step and step.get("h_init") is not None and step.get("probe_token") is not None
    ]


def _content_section(records: list[dict], jobs: list[str], rows_of: dict[str, int]) -> list[str]:
    """What kind of steps each routed job gives the large model, read from the steps' text."""
    kept: dict[str, list[int | str]] = defaultdict(list)
    for r in records:
        if r["job"] in jobs and not r.get("error") and r.get("step_records") and "text" in r["step_records"][0]:
            kept[r["job"]].append(_row(r, rows_of))
    if not kept:
        return []
    by_rows: dict[str, list[str]] = defaultdict(list)
    for job in jobs:
        if job in kept:
            by_rows[_rows_text(kept[job])].append(f"`{job}`")
    where = "; ".join(f"rows {rows} of {', '.join(names)}" for rows, names in by_rows.items())
    out = [
        "## What the large model gets: arithmetic steps or prose",
        "",
        f"From the records that keep the steps' text ({where}): a step is 'arithmetic' when its text "
        "computes (a digit next to an operator or `=`, `\\times`, `\\frac`), else 'prose'. The share of each kind "
        "that the large model wrote, and the two-proportion test of the difference:",
        "",
        "| job | arithmetic steps | to large | prose steps | to large | prose / arithmetic | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for job in jobs:
        kinds = _step_kinds(records, job)
        if kinds[True] and kinds[False]:
            a, p = sum(kinds[True]) / len(kinds[True]), sum(kinds[False]) / len(kinds[False])
            test = two_proportion_p(sum(kinds[False]), len(kinds[False]), sum(kinds[True]), len(kinds[True]))
            ratio = f"{p / a:.1f}x" if a else "n/a"
            shown = "< 0.001" if test < 0.001 else f"{test:.3f}"
            out.append(f"| {job} | {len(kinds[True])} | {a:.0%} | {len(kinds[False])} | {p:.0%} | {ratio} | {shown} |")
    probed = _probed_steps(records)
    groups = {
        "formatting (a list number, `**`, `-`, `\\[`, `Step`)": [
            s for s in probed if FORMAT_TOKEN.match(s["probe_token"])
        ],
        "a word": [s for s in probed if not FORMAT_TOKEN.match(s["probe_token"])],
    }
    out += [
        "",
        "The `glimp` jobs' steps by their first (probed) token:",
        "",
        "| first token | steps | mean H_init | arithmetic share |",
        "|---|---|---|---|",
    ]
    for name, steps in groups.items():
        if steps:
            h = statistics.mean(s["h_init"] for s in steps)
            arith = sum(bool(ARITHMETIC.search(s["text"])) for s in steps) / len(steps)
            out.append(f"| {name} | {len(steps)} | {h:.2f} | {arith:.0%} |")
    return [*out, ""]


def _targets(rows: list[dict], records: list[dict], seed: int) -> list[str]:
    """The issue's targets, checked on the robust figure (the median per-problem latency ratio)."""
    by = {r["strategy"]: r for r in rows}
    if "glimp" not in by or "large-only" not in by:
        return []
    g, big = by["glimp"], by["large-only"]
    within = g["accuracy"] >= big["accuracy"] - big["accuracy_se"]
    rules = "its interval rules 0.75 out" if g["ratio_median_ci"][0] > 0.75 else "its interval reaches 0.75"
    out = [
        "## Targets",
        "",
        "Latency targets on the median per-problem ratio (95% bootstrap interval); the ratio of means beside it.",
        "",
        f"- `glimp` latency <= 0.75 x `large-only`: {_ok(g['ratio_median'] <= 0.75)} (median {g['ratio_median']:.2f} "
        f"x, {_ci(g['ratio_median_ci'])}, {rules}; ratio of means {g['latency_ratio']:.2f}); accuracy within one "
        f"SE of `large-only`: {_ok(within)} ({g['accuracy']:.1%} vs {big['accuracy']:.1%} ± {big['accuracy_se']:.1%}).",
    ]
    for name in ("specreason", "step-entropy", "step-perplexity", "random"):
        if name in by:
            b = by[name]
            s = _pair_ratio(records, g["job"], b["job"], seed)
            p = paired(records, g["job"], b["job"])
            out.append(
                f"- `glimp` vs `{name}`: latency ratio median {s.median:.2f} ({_ci(s.median_ci)}; ratio of means "
                f"{s.mean_ratio:.2f}): {_ok(s.median < 1)}, {_times_verdict(s.median_ci, f'`{name}`')}; accuracy "
                f"{g['accuracy']:.1%} vs {b['accuracy']:.1%}: {_ok(g['accuracy'] >= b['accuracy'])}, "
                f"{_accuracy_verdict(p.diff, p.p_value, f'`{name}`')}."
            )
    return [*out, ""]


def _gpu_gap(path: Path | None) -> float | None:
    """The paper's pair's decode time ratio per token on the GPU of ``path`` (``None`` without the file)."""
    if path is None or not path.exists():
        return None
    ms = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "model" in row and "decode_ms_per_token" in row:
            ms[row["model"]] = row["decode_ms_per_token"]
    small, large = PAPER_PAIR
    return ms[large] / ms[small] if small in ms and large in ms else None


def _why(rows: list[dict], records: list[dict], gpu_gap: float | None) -> list[str]:
    """Why the targets fall where they do: every figure and verdict computed from the records."""
    by = {r["strategy"]: r for r in rows}
    if not {"glimp", "large-only", "small-only"} <= by.keys():
        return []
    g, big, small = by["glimp"], by["large-only"], by["small-only"]
    per_token: dict[str, list[float]] = {"small": [], "large": []}
    for r in records:
        if r["job"] in (small["job"], big["job"]) and not r.get("error"):
            for step in r.get("step_records", []):
                if step["tokens"] > 4 and step["seconds"] > 0:
                    per_token[step["model"]].append(step["seconds"] / step["tokens"])
    if not per_token["small"] or not per_token["large"]:
        return []
    speed = {model: statistics.median(values) for model, values in per_token.items()}
    gap = speed["large"] / speed["small"]
    cpus = {
        r["provenance"]["cpu"]["model"] for r in records if "cpu" in (r.get("provenance") or {}) and not r.get("error")
    }
    machine = f"CPU: {', '.join(sorted(cpus))}" if cpus else "their CPU not recorded"
    if gpu_gap is None:
        paper = ""
    else:
        relation = "a larger gap than" if gpu_gap > gap else "no larger a gap than"
        paper = (
            f" The paper's pair (the {PAPER_PAIR[1]} and {PAPER_PAIR[0]} shapes) is {gpu_gap:.1f}x apart per token on "
            f"an H200 (a kernel-benchmark floor, not vLLM: ../shared/docs/GPU_COSTS.md), {relation} this pair's."
        )
    jobs = (g["job"], big["job"], small["job"])
    stalled = {s.id for s in find_stalls([r for r in records if r["job"] in jobs])}
    runs = {job: _ok_runs(records, job) for job in jobs}
    clean = sorted(set.intersection(*(set(v) for v in runs.values())) - stalled)

    def parts(job: str) -> defaultdict[str, float]:
        total: defaultdict[str, float] = defaultdict(float)  # a job that never switches has no switch_excess
        for i in clean:
            r = runs[job][i]
            steps = r["step_records"]
            total["latency"] += r["latency_s"]
            total["probe"] += r["probe_seconds"]
            total["final"] += r["final_seconds"]
            for k, step in enumerate(steps):
                at_speed = step["tokens"] * speed[step["model"]]
                total["steps"] += step["seconds"]
                total["at_speed"] += at_speed
                after_switch = k > 0 and steps[k - 1]["model"] != step["model"]
                total["switch_excess" if after_switch else "other_excess"] += step["seconds"] - at_speed
        return defaultdict(float, {k: v / len(clean) for k, v in total.items()})

    gp, bp = parts(g["job"]), parts(big["job"])
    g_rest = gp["latency"] - gp["steps"] - gp["probe"] - gp["final"]
    b_rest = bp["latency"] - bp["steps"] - bp["probe"] - bp["final"]
    ideal = gp["at_speed"] + bp["final"] + b_rest
    possible = bp["latency"] - ideal
    kept = bp["latency"] - gp["latency"]
    if possible <= 0:
        saving = "the routing could save nothing here even at the standalone speeds."
    elif kept <= 0:
        saving = f"glimp keeps none of it (it is {-kept:.2f} s slower than `large-only`)."
    elif kept >= possible:
        saving = f"glimp saves all of it and more ({kept:.2f} s)."
    else:
        saving = f"glimp keeps {kept:.2f} s of it ({kept / possible:.0%})."
    beyond = gp["latency"] - ideal
    spent = (
        f" Of the {beyond:.2f} s glimp spends beyond that ideal, {gp['switch_excess'] / beyond:.0%} is the steps "
        "after a change of writer."
        if beyond > 0
        else ""
    )
    out = [
        "## Why",
        "",
        f"Latency. In these records ({machine}) the large model takes {1000 * speed['large']:.0f} ms per generated "
        f"token and the small one {1000 * speed['small']:.0f} ms (median over the standalone runs' steps of more "
        f"than 4 tokens): a {gap:.1f}x gap.{paper} On the {len(clean)} problems without a stalled step in "
        f"`{g['job']}`, `large-only` or `small-only`, glimp's {gp['latency']:.2f} s per problem are "
        f"{gp['at_speed']:.2f} s of its steps' tokens at those standalone speeds, {gp['switch_excess']:+.2f} s on the "
        f"steps right after a change of writer (the server first reads what the other model wrote), "
        f"{gp['other_excess']:+.2f} s on its other steps, {gp['probe']:.2f} s of probes, {gp['final']:.2f} s of "
        f"final answer (`large-only`'s: {bp['final']:.2f} s) and {g_rest:.2f} s else. `large-only` takes "
        f"{bp['latency']:.2f} s. The same steps at the standalone speeds with no probe and no switching would take "
        f"{ideal:.2f} s, {possible:.2f} s less than `large-only`; {saving}{spent}",
        "",
    ]
    routed = [r for r in rows if r["strategy"] not in ("small-only", "large-only")]
    if routed:
        closer = [r for r in routed if abs(r["accuracy"] - small["accuracy"]) < abs(r["accuracy"] - big["accuracy"])]
        better_than_small = [
            r["job"] for r in routed if (p := paired(records, r["job"], small["job"])).diff > 0 and p.p_value < ALPHA
        ]
        worse_than_large = [
            r["job"] for r in routed if (p := paired(records, r["job"], big["job"])).diff < 0 and p.p_value < ALPHA
        ]
        others = [r for r in routed if r["job"] != g["job"]]
        tests = [paired(records, g["job"], r["job"]) for r in others]
        significant = [t.b for t in tests if t.p_value < ALPHA]
        disagree = [t.only_a + t.only_b for t in tests]
        sig_text = (
            "none significantly"
            if not significant
            else f"{len(significant)} of {len(tests)} significantly ({', '.join(f'`{s}`' for s in significant)})"
        )
        rescue = (
            "none is significantly more accurate than `small-only`"
            if not better_than_small
            else f"{', '.join(f'`{j}`' for j in better_than_small)} {'is' if len(better_than_small) == 1 else 'are'} "
            "significantly more accurate than `small-only`"
        )
        out.append(
            f"Accuracy. The routed jobs score {_span([r['accuracy'] for r in routed])}, `small-only` "
            f"{small['accuracy']:.0%} and `large-only` "
            f"{big['accuracy']:.0%}; {len(closer)} of the {len(routed)} routed jobs are closer to `small-only` than "
            f"to `large-only`. Giving the large model {_span([r['large_share'] for r in routed])} of the steps, "
            f"{rescue}, and {len(worse_than_large)} of "
            f"{len(routed)} are significantly less accurate than `large-only` (paired sign tests, p < {ALPHA}). "
            f"`{g['job']}` and each other routed job disagree on {_span(disagree or [0], '')} of {g['n']} problems, "
            f"{sig_text}."
        )
    return [*out, "", *_signal_claims(records)]


def _leaning(records: list[dict], job: str) -> tuple[float, float, float] | None:
    """``job``'s share of arithmetic and of prose steps written by the large model, and the test's p-value."""
    kinds = _step_kinds(records, job)
    if not kinds[True] or not kinds[False]:
        return None
    arith, prose = sum(kinds[True]) / len(kinds[True]), sum(kinds[False]) / len(kinds[False])
    return arith, prose, two_proportion_p(sum(kinds[False]), len(kinds[False]), sum(kinds[True]), len(kinds[True]))


def _signal_claims(records: list[dict]) -> list[str]:
    """What the routing signals send to the large model, from the steps' text: verdicts computed, with p-values."""
    lines: list[str] = []
    jobs = list(dict.fromkeys(r["job"] for r in records))
    strategies = {r["strategy"] for r in records}
    leaning = {j: x for j in jobs if j.split("@")[0] in SIGNALS and (x := _leaning(records, j)) is not None}
    controls = {j: x for j in jobs if j.split("@")[0] == "random" and (x := _leaning(records, j)) is not None}

    def described(found: dict[str, tuple[float, float, float]]) -> str:
        return "; ".join(
            f"`{j}` {p:.0%} of prose steps vs {a:.0%} of arithmetic ones"
            + (f" ({p / a:.1f}x, {_p(t)})" if a else f" ({_p(t)})")
            for j, (a, p, t) in found.items()
        )

    if leaning:
        groups = (
            ([j for j, (a, p, t) in leaning.items() if p > a and t < ALPHA], "favours prose", "favour prose"),
            ([j for j, (a, p, t) in leaning.items() if p < a and t < ALPHA], "favours arithmetic", "favour arithmetic"),
            ([j for j, (a, p, t) in leaning.items() if t >= ALPHA], "shows no clear preference", "show none"),
        )
        verdict = "; ".join(
            f"{', '.join(f'`{j}`' for j in group)} {one if len(group) == 1 else many}"
            for group, one, many in groups
            if group
        )
        lines.append(
            f"What the signals pick (the table of step kinds): the large model writes {described(leaning)}. At "
            f"p < {ALPHA}, {verdict}."
        )
    if controls:
        moved = [j for j, (a, p, t) in controls.items() if t < ALPHA]
        reading = (
            "Random routing cannot see the step, so where it shows a difference the kind follows the writer (the "
            "step's text is the chosen model's), not the choice; compare a signal with random routing at a similar "
            "share rather than with 1.0x."
            if moved
            else "Random routing, which cannot see the step, shows no significant difference, as it should."
        )
        lines.append(f"The control: {described(controls)}. {reading}")
    probed = _probed_steps(records)
    arithmetic = [s for s in probed if ARITHMETIC.search(s["text"])]
    prose = [s for s in probed if not ARITHMETIC.search(s["text"])]
    formatted = [s for s in probed if FORMAT_TOKEN.match(s["probe_token"])]
    words = [s for s in probed if not FORMAT_TOKEN.match(s["probe_token"])]
    if arithmetic and prose and formatted and words:
        opened = sum(bool(FORMAT_TOKEN.match(s["probe_token"])) for s in arithmetic)
        low, high = wilson_interval(opened, len(arithmetic))
        amount = "most" if low > 0.5 else "fewer than half" if high < 0.5 else "about half"
        h = {
            name: statistics.mean(s["h_init"] for s in steps)
            for name, steps in (
                ("arithmetic", arithmetic),
                ("prose", prose),
                ("formatting", formatted),
                ("word", words),
            )
        }
        where = "lower" if h["arithmetic"] < h["prose"] else "higher"
        lines.append(
            f"The first token. With the `steps` prompt these models open {amount} of the computing steps the "
            f"`glimp` jobs probed ({opened} of {len(arithmetic)}, {opened / len(arithmetic):.0%}, 95% CI "
            f"{_ci((low, high), '.0%')}) with a list number, `**` or similar formatting. H_init averages "
            f"{h['formatting']:.2f} nats after such a token and {h['word']:.2f} after a word; {h['arithmetic']:.2f} "
            f"on arithmetic steps and {h['prose']:.2f} on prose ones: {where} where the step computes. The paper's "
            "thinkers open hard steps with words such as 'Wait' or 'Alternatively' (../shared/docs/METHOD.md)"
            + ("; `glimp-4` looks past the first token (see the variants)." if "glimp-4" in strategies else ".")
        )
    return [part for line in lines for part in (line, "")]


def _sweep_claims(records: list[dict], sweep_rows: list[dict], main_glimp: str, seed: int) -> list[str]:
    randoms = [r for r in sweep_rows if r["strategy"] == "random"]
    by_job = {r["job"]: r for r in sweep_rows}
    out: list[str] = []
    for r in sweep_rows:
        if r["strategy"] != "glimp" or r["job"] == main_glimp or not randoms:
            continue
        twin = min(randoms, key=lambda x: abs(x["large_share"] - r["large_share"]))
        p = paired(records, r["job"], twin["job"])
        if p.p_value >= ALPHA:
            chance = "H_init picks them no better or worse than random routing here"
        else:
            chance = f"H_init picks them {'better' if p.diff > 0 else 'worse'} than random routing"
        comparisons = [(main_glimp, r["job"])]
        if len(randoms) > 1:
            by_share = sorted(randoms, key=lambda x: x["large_share"])
            comparisons.append((by_share[0]["job"], by_share[-1]["job"]))
        more = []
        for low_job, high_job in comparisons:
            if low_job in by_job and high_job in by_job:
                q = paired(records, high_job, low_job)
                gained = "gains" if q.diff > 0 else "loses" if q.diff < 0 else "neither gains nor loses"
                sig = "significant" if q.p_value < ALPHA else "not significant"
                high, low = by_job[high_job]["large_share"], by_job[low_job]["large_share"]
                more.append(
                    f"`{high_job}` ({high:.0%} large steps) {gained} {100 * abs(q.diff):.0f} points of accuracy over "
                    f"`{low_job}` ({low:.0%}; {_p(q.p_value)}, {sig})"
                )
        out += [
            f"At a {r['large_share']:.0%} large-step share `{r['job']}` scores {r['accuracy']:.0%} in a median "
            f"{r['ratio_median']:.2f}x `large-only`'s time, `{twin['job']}` ({twin['large_share']:.0%} large steps) "
            f"{twin['accuracy']:.0%} in {twin['ratio_median']:.2f}x (difference {p.diff:+.1%} ± {p.diff_se:.1%}, "
            f"{_p(p.p_value)}): {chance}. More large steps: {'; '.join(more)}.",
            "",
        ]
    return out


def _variant_claims(records: list[dict], sweep_rows: list[dict], main_glimp: str) -> list[str]:
    out: list[str] = []
    glimp_row = next((r for r in sweep_rows if r["job"] == main_glimp), None)
    for v in (r for r in sweep_rows if r["strategy"] in VARIANTS):
        if glimp_row is None:
            continue
        p = paired(records, v["job"], main_glimp)
        verdict = "not significant" if p.p_value >= ALPHA else "significant"
        out += [
            f"`{v['strategy']}` against `glimp` on the same problems: accuracy {v['accuracy']:.0%} vs "
            f"{glimp_row['accuracy']:.0%} (difference {p.diff:+.1%} ± {p.diff_se:.1%}, sign test "
            f"{_p(p.p_value)}, {verdict}), median latency {v['ratio_median']:.2f} vs {glimp_row['ratio_median']:.2f} x "
            f"`large-only`, large-step share {v['large_share']:.0%} vs {glimp_row['large_share']:.0%}.",
            "",
        ]
    return out


# --------------------------------------------------------------------------- projection, MATH-500, earlier jobs

PROJECTION_PROFILES = (
    "cpu-epyc-qwen-coder",
    "h200-floor-qwen2.5-0.5b-1.5b",
    "h200-floor-r1-7b-qwen2.5-1.5b",
    "h200-floor-r1-32b-qwen3-1.7b",
    "h200-floor-r1-32b-qwen3-4b",
)
PAPER_PROFILE = "h200-floor-r1-32b-qwen3-4b"


def _projection_section(records: list[dict], labels: Sequence[str]) -> list[str]:
    """Each shown job's recorded routing replayed under the shipped profiles (bench/COST_MODEL.md's model)."""
    from glimp_graph.eval.costmodel import load_profile, project

    runs = [r for r in records if r["job"] in labels]
    if not any(r["job"] == "large-only" and not r.get("error") for r in runs):
        return []
    profiles = [load_profile(name) for name in PROJECTION_PROFILES]
    projected = {profile.name: {p.job: p for p in project(runs, profile)} for profile in profiles}
    out = [
        "## Projection: the same routing on other hardware",
        "",
        "Each run's recorded calls (tokens read and written by each model, probes, prefix-cache reuse) priced with "
        "`t = overhead + prefill x new prompt tokens + decode x generated tokens` per server "
        "(`glimp_graph.eval.costmodel`, validated in [COST_MODEL.md](COST_MODEL.md)), every run reading its "
        "question afresh. Cells: the median per-problem ratio to `large-only`, then the ideal mix's (the same "
        "steps at each model's standalone speed, no switching cost). The routing is this pair's: the same "
        "decisions and token counts replayed, not what the larger models would write.",
        "",
        "| job | " + " | ".join(f"`{p.name}`" for p in profiles) + " |",
        "|---|" + "---|" * len(profiles),
    ]
    for job in labels:
        cells = [projected[p.name].get(job) for p in profiles]
        if all(c is None for c in cells):
            continue
        out.append(
            f"| {job} | "
            + " | ".join(f"{c.ratio_median:.2f} (ideal {c.ideal_ratio_median:.2f})" if c else "n/a" for c in cells)
            + " |"
        )
    out += ["", *(f"- `{p.name}`: {p.description}. {p.note}".rstrip() for p in profiles), ""]
    glimp = next((j for j in labels if j.startswith("glimp@")), None)
    paper = projected.get(PAPER_PROFILE, {})
    cpu = projected.get(PROJECTION_PROFILES[0], {})
    if glimp and glimp in paper and glimp in cpu:
        g, c = paper[glimp], cpu[glimp]
        out += [
            f"Under the paper's pair's floor (`{PAPER_PROFILE}`) `{glimp}`'s routing would take a median "
            f"{g.ratio_median:.2f}x `large-only`'s time ({'faster' if g.ratio_median < 1 else 'not faster'}), "
            f"against {c.ratio_median:.2f}x under this CPU's profile; the ideal mix bounds what any switching "
            f"cost leaves: {g.ideal_ratio_median:.2f}x there, {c.ideal_ratio_median:.2f}x here.",
            "",
        ]
    return out


def _states_text(records: list[dict]) -> str:
    """Each job's code states with their record counts, as one line of prose (jobs apart by semicolons)."""
    return "; ".join(
        f"`{job}` {', '.join(f'{state} ({n})' for state, n in states.items())}"
        for job, states in states_by_job(records).items()
    )


def _math_section(records: list[dict], calibration: dict, args: argparse.Namespace) -> list[str]:
    """MATH-500's first rows: glimp, small-only, large-only and random, graded with math-verify."""
    done = {r["job"] for r in records if not r.get("error")}
    if "large-only" not in done:
        return []
    math = calibration.get("math500", {})
    rows = summarize(records, seed=args.seed)
    out = [
        "## MATH-500",
        "",
        f"MATH-500 dev rows 0..{args.math_n - 1} (../shared/data/math500_dev.jsonl), the same pair, budgets and "
        f"order as above; answers graded with math-verify. Thresholds calibrated for a "
        f"{calibration.get('target_large_share', '?')} large-step share on {math.get('problems', '?')}: "
        f"`{math.get('taus', {})}`. Code states: {_states_text(records)}.",
        "",
        markdown_table(rows),
    ]
    glimp = next((j for j in done if j.startswith("glimp@")), None)
    random = next((j for j in done if j.startswith("random@")), None)
    for other in (random, "large-only", "small-only"):
        if glimp and other in done:
            p = paired(records, glimp, other)
            verdict = "not significant" if p.p_value >= ALPHA else "significant"
            out.append(
                f"- `{glimp}` against `{other}` on the same {p.n} problems: right on {p.both + p.only_a} vs "
                f"{p.both + p.only_b} (only one of them right: {p.only_a} vs {p.only_b}; sign test {_p(p.p_value)}, "
                f"{verdict})."
            )
    return [*out, ""]


def _earlier_section(earlier: list[dict], measured: Sequence[str], seed: int) -> list[str]:
    """The jobs of an earlier run that this one did not measure, each against that run's own large-only."""
    jobs = sorted({r["job"] for r in earlier if r.get("strategy") not in (*measured, "large-only")})
    if not jobs or not any(r["job"] == "large-only" for r in earlier):
        return []
    shown = [r for r in earlier if r["job"] in (*jobs, "large-only")]
    return [
        "## Earlier jobs (another run, other code states)",
        "",
        "Jobs this run did not measure, from the earlier results file, each against that run's own `large-only` "
        "on the problems they share (never against this run's: the machine's speed drifts between sessions). "
        f"Their thresholds were calibrated on 6 problems. Code states: {_states_text(shown)}.",
        "",
        markdown_table(summarize(shown, seed=seed)),
    ]


# --------------------------------------------------------------------------- the report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="GSM8K dev problems to evaluate (rows 0..n-1)")
    parser.add_argument(
        "--jobs",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=list(HEADLINE),
        help=f"strategies to measure, comma-separated, from {', '.join(MAIN + VARIANTS)} "
        f"(default: {','.join(HEADLINE)}); jobs of --earlier that are not measured here are shown from there",
    )
    parser.add_argument("--calibration-start", type=int, default=900)
    parser.add_argument("--calibration-n", type=int, default=20)
    parser.add_argument("--target-large-share", type=float, default=0.25)
    parser.add_argument(
        "--sweep-shares",
        type=float,
        nargs="*",
        default=[],
        help="extra large-step shares for glimp (thresholds calibrated like the main one), run after the main jobs",
    )
    parser.add_argument("--random-shares", type=float, nargs="*", default=[], help="extra large-step shares for random")
    parser.add_argument("--results", type=Path, default=RESULTS / "gsm8k_qwen_2.jsonl")
    parser.add_argument("--calibration-file", type=Path, default=RESULTS / "calibration_2.json")
    parser.add_argument(
        "--math-n", type=int, default=60, help=f"MATH-500 dev problems for {', '.join(MATH_JOBS)} (0: none)"
    )
    parser.add_argument("--math-results", type=Path, default=RESULTS / "math500_qwen_2.jsonl")
    parser.add_argument("--math-calibration-start", type=int, default=380)
    parser.add_argument("--math-calibration-n", type=int, default=20)
    parser.add_argument(
        "--earlier",
        type=Path,
        default=RESULTS / "gsm8k_qwen.jsonl",
        help="an earlier run's results: its jobs that this run did not measure are shown from it, each against "
        "that run's own large-only and under its own code state",
    )
    parser.add_argument("--report-only", action="store_true", help="only render the report from the results")
    parser.add_argument(
        "--mix-commits",
        action="store_true",
        help="render even when a job's records come from more than one code state (the report says so)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.add_argument("--gpu-costs", type=Path, default=GPU_COSTS, help="GPU decode costs (for the paper's gap)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.jobs if name not in MAIN + VARIANTS]
    if unknown or not args.jobs:
        parser.error(f"--jobs {','.join(unknown) or '(none)'}: choose from {', '.join(MAIN + VARIANTS)}")
    if args.calibration_start < args.n or args.math_calibration_start < args.math_n:
        parser.error(
            "calibration problems must lie outside the evaluated rows: --calibration-start must be >= --n and "
            "--math-calibration-start >= --math-n"
        )
    for share in [args.target_large_share, *args.sweep_shares, *args.random_shares]:
        if not 0.0 < share < 1.0:
            parser.error(f"large-step shares must be in (0, 1), got {share}")
    return args


COMMAND_OPTIONS = (
    "n",
    "jobs",
    "calibration_start",
    "calibration_n",
    "target_large_share",
    "sweep_shares",
    "random_shares",
    "results",
    "calibration_file",
    "math_n",
    "math_results",
    "math_calibration_start",
    "math_calibration_n",
    "earlier",
    "mix_commits",
)


def _command(args: argparse.Namespace) -> str:
    """The command that measures (and renders) what ``args`` do: the options that differ from the defaults."""
    defaults = parse_args([])
    parts = ["python bench/run_report.py"]
    for name in COMMAND_OPTIONS:
        value = getattr(args, name)
        if name not in ("n", "math_n") and value == getattr(defaults, name):
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif isinstance(value, list):
            parts.append(
                f"{flag} {','.join(map(str, value))}" if name == "jobs" else f"{flag} {' '.join(map(str, value))}"
            )
        elif isinstance(value, Path):
            parts.append(f"{flag} {value.relative_to(HERE.parent) if value.is_relative_to(HERE.parent) else value}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def render(
    records: list[dict],
    calibration: dict,
    args: argparse.Namespace,
    *,
    rows_of: dict[str, int] | None = None,
    rendered_at: str = "unknown",
    figures: bool = True,
    math_records: list[dict] | None = None,
    earlier: list[dict] | None = None,
) -> tuple[str, list[dict], list[dict]]:
    """The report's Markdown from the records, and the rows of its two tables.

    ``math_records`` (MATH-500) and ``earlier`` (an earlier run's results, for the jobs this one did not measure)
    add a section each.

    Raises:
        MixedCommits: A shown job pools records of several code states and ``args.mix_commits`` is not set.
    """
    rows_of = rows_of or {}
    records = [r if "row" in r or r["id"] not in rows_of else {**r, "row": rows_of[r["id"]]} for r in records]
    taus = calibration.get("taus", {})
    main_labels = [Job(name, taus.get(name)).label for name in MAIN]
    variant_labels = [Job(name, taus[name]).label for name in VARIANTS if name in taus]
    sweep_labels = variant_labels + [job.label for job in sweep_jobs(calibration, args)]
    done = {r["job"] for r in records if not r.get("error")}
    finished = {label for label in done if sum(r["job"] == label and not r.get("error") for r in records) >= args.n}
    sweep_done = [label for label in sweep_labels if label in finished]  # a partial job would shrink the table
    shown = [label for label in main_labels + sweep_done if label in done]
    mixed = mixed_jobs([r for r in records if r["job"] in shown])
    if mixed and not args.mix_commits:
        described = "; ".join(
            f"{job}: " + ", ".join(f"{state} ({n})" for state, n in states.items()) for job, states in mixed.items()
        )
        raise MixedCommits(
            f"jobs measured under more than one code state: {described}. Rerun them on one commit, or pass "
            "--mix-commits to render anyway (the report then says so and splits the headline by code state)"
        )
    rows = summarize([r for r in records if r["job"] in main_labels], seed=args.seed)
    sweep_rows = (
        summarize([r for r in records if r["job"] in main_labels + sweep_done], seed=args.seed) if sweep_done else []
    )
    main_records = [r for r in records if r["job"] in main_labels]
    common = set.intersection(*(set(_ok_runs(records, j)) for j in main_labels if j in done)) if done else set()
    stalls = find_stalls([r for r in main_records if r["id"] in common])
    sweep_note = (
        f" glimp's extra thresholds, for large-step shares {args.sweep_shares}, were calibrated the same way: "
        f"`{calibration.get('sweep', {})}`; random ran at shares {args.random_shares} too."
        if args.sweep_shares or args.random_shares
        else ""
    )
    glimp = Job("glimp", taus.get("glimp")).label
    temperature = Endpoint.model_fields["temperature"].default
    top_p = Endpoint.model_fields["top_p"].default
    lines = [
        "# Benchmark report: GlimpRouter and baselines on GSM8K (local real models)",
        "",
        f"Command: `{_command(args)}` (resumable; `--report-only` re-renders"
        f"{'; rendered with `--mix-commits`' if mixed else ''}).",
        "",
        *_headline(rows, records, stalls, args.seed),
        "## Setup",
        "",
        "- Models (this script's local pair): Qwen2.5-Coder-0.5B-Instruct Q4_K_M (small) and "
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (large), each on its own llama.cpp `llama-server` (2 threads, -np 1, "
        "ctx 4096); what each record says of its servers, CPU and packages is under Provenance.",
        f"- Problems: GSM8K dev rows 0..{args.n - 1}; every strategy on the same problems, one run at a time, "
        "problem by problem. Budgets: " + ", ".join(f"{k}={v}" for k, v in BASE.items()) + "; `steps` prompt; "
        f"steps sampled at temperature {temperature}, top_p {top_p}, seed 0 (the authors' settings, "
        "../shared/docs/METHOD.md); probes at temperature 0.",
        f"- Thresholds calibrated for a {calibration.get('target_large_share', '?')} large-step share on "
        f"{calibration.get('problems', '?')}: `{taus}`.{sweep_note}",
        "",
        *_provenance_section(records, shown, rows_of, mix_commits=args.mix_commits, rendered_at=rendered_at),
    ]
    if mixed:
        lines += _by_state_section(records, [j for j in main_labels if j in done], rows_of, args.seed)
    lines += [
        "## Results",
        "",
        markdown_table(rows),
        f"Latency is wall time per problem. The ratio to `large-only` is taken per problem, then summarised by its "
        f"median and its geometric mean, each with a 95% percentile-bootstrap interval ({RESAMPLES:,} resamples, "
        f"seed {args.seed}); the ratio of the mean latencies stays beside them. Accuracy's interval is Wilson's "
        "(95%). 'glimpse time share' is the time spent scoring steps (probes, drafts, judgements).",
        "",
        f"### Stalled steps (time per token over {STALL_FACTOR:g}x its job's median on that model)",
        "",
        "Listed, not removed: they are in the means above, not in the medians' robustness.",
        "",
        markdown_stalls(stalls),
    ]
    if sweep_rows:
        lines += [
            "## Variants and threshold sweep",
            "",
            "Every job on the problems all of them finished: the main jobs, the extensions "
            f"({', '.join(f'`{v}`' for v in VARIANTS)}: {'; '.join(STRATEGIES[v].description for v in VARIANTS)}; "
            "threshold calibrated like the main ones)"
            + (" and the extra thresholds." if set(sweep_done) - set(variant_labels) else "."),
            "",
            markdown_table(sweep_rows),
            *_sweep_claims(records, sweep_rows, glimp, args.seed),
            *_variant_claims(records, sweep_rows, glimp),
        ]
    lines += _projection_section(records, shown)
    if earlier:
        lines += _earlier_section(earlier, args.jobs, args.seed)
    if figures:
        lines += ["![accuracy vs latency](tradeoff.png)", "", "![signals](signals.png)", ""]
    if glimp in done:
        lines += _paired_section(records, glimp, [label for label in main_labels if label != glimp and label in done])
        for name in VARIANTS:
            variant = Job(name, taus.get(name)).label
            if variant in done:
                lines += _paired_section(records, variant, [glimp, Job("large-only").label], title=False)
        routed = [
            label for label in main_labels + sweep_labels if label.startswith(("glimp", "random")) and label in done
        ]
        lines += _routing_section(records, routed)
        mixed_routes = [label for label in main_labels + sweep_labels if label in done and "-only" not in label]
        lines += _content_section(records, mixed_routes, rows_of)
    if math_records:
        lines += _math_section(math_records, calibration, args)
    lines += _targets(rows, records, args.seed)
    lines += _why(rows, [r for r in records if r["job"] in shown], _gpu_gap(args.gpu_costs))
    lines += ["Framework overhead: see [OVERHEAD.md](OVERHEAD.md).", ""]
    return "\n".join(lines), rows, sweep_rows


def main() -> None:
    import os

    from glimp_graph.eval.plots import plot_signals, plot_tradeoff

    args = parse_args()
    cache = os.environ.get("GLIMP_CACHE_DIR")
    RESULTS.mkdir(parents=True, exist_ok=True)
    calibration_file = args.calibration_file
    started = time.time()

    if not args.report_only:
        # one event loop for everything: langchain-openai shares its async HTTP client between graphs
        asyncio.run(_measure(args, cache, calibration_file))

    records = load_records(args.results)
    math_records = load_records(args.math_results) if args.math_n and args.math_results.exists() else None
    earlier = load_records(args.earlier) if args.earlier.exists() and args.earlier != args.results else None
    calibration = json.loads(calibration_file.read_text()) if calibration_file.exists() else {}
    rows_of = {p.id: p.row for p in load_problems(DATA)} if DATA.exists() else {}
    try:
        text, rows, sweep_rows = render(
            records,
            calibration,
            args,
            rows_of=rows_of,
            rendered_at=label(code_version()),
            math_records=math_records,
            earlier=earlier,
        )
    except MixedCommits as exc:
        sys.exit(f"error: {exc}")
    plot_tradeoff(sweep_rows or rows, HERE / "tradeoff.png")
    plot_signals(records, HERE / "signals.png")
    (HERE / "REPORT.md").write_text(text)
    print(text)
    print(f"done in {time.time() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
