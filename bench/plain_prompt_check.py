"""Issue #13 item 6, the first check: with the `plain` prompt, do the small model's steps open with words?

    flock /tmp/glimp-heavy.lock .venv/bin/python bench/plain_prompt_check.py
    .venv/bin/python bench/plain_prompt_check.py --report-only      # re-render from the results

bench/REPORT.md found that under the `steps` prompt the local Qwen2.5-Coder pair opens most computing steps with a
list number or `**`: a first token the small model is sure of whatever the step holds, so H_init (the entropy of
that token) has little to read. The `plain` preset asks for each step as plain sentences (no numbering, no
`Step N:`, no bold or Markdown). This script

1. starts the local pair (Qwen2.5-Coder 0.5B small, 1.5B large, llama.cpp servers);
2. runs glimp with tau = +inf (every step written by the small model, each step probed first: its first token is
   the small model's greedy probe token, H_init that token's entropy) under each preset on the same GSM8K dev
   problems, problem by problem;
3. writes one line per step to bench/results/plain_prompt_check.jsonl (problem, preset, step index, the step's
   opening, how it opens, H_init) and renders bench/PLAIN_PROMPT.md from those lines;
4. renders the paired comparison of glimp and random at the same large-step share under `plain` on GSM8K rows
   0..99 from `glimp eval`'s records (bench/results/gsm8k_qwen_plain.jsonl, run as the report says), beside the
   same comparison under `steps` (bench/results/gsm8k_qwen.jsonl); without those records, how to run it.

The rows default to 200..209: outside rows 0..99 (bench/REPORT.md's evaluation, which the paired glimp-vs-random
comparison reuses), 900..905 (its calibration) and 104..107 (bench/COST_MODEL.md's check). It measures no time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glimp_graph import Endpoint, create_glimp_graph
from glimp_graph.eval import bootstrap_intervals, collect_provenance, grade, label, load_problems, quantile
from glimp_graph.prompts import PRESETS
from glimp_graph.state import reasoning_text

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "gsm8k_dev.jsonl"
RESULTS = HERE / "results" / "plain_prompt_check.jsonl"
REPORT = HERE / "PLAIN_PROMPT.md"
BASE = {"max_step_tokens": 256, "max_thinking_tokens": 768, "max_steps": 32, "final_max_tokens": 64}
"""bench/REPORT.md's budgets (bench/run_report.py), so the steps are those its runs would see."""
STEPS_TAU = 0.7994
"""glimp's tau for a 25% large-step share under the `steps` prompt (bench/results/calibration.json)."""
COMMAND = "flock /tmp/glimp-heavy.lock .venv/bin/python bench/plain_prompt_check.py"
SEED = 0

# how a step opens, checked in this order on its text without leading spaces
OPENINGS: list[tuple[str, Callable[[str], bool]]] = [
    ("empty", lambda t: not t),
    ("step label", lambda t: re.match(r"(?i)step\s*\d", t) is not None),
    ("list number", lambda t: re.match(r"\d+[.)](\s|$)", t) is not None),
    ("`*`", lambda t: t.startswith("*")),
    ("`#`", lambda t: t.startswith("#")),
    ("bullet", lambda t: re.match(r"[-+\u2022](\s|$)", t) is not None),
    ("digit", lambda t: t[0].isdigit()),
    ("word", lambda t: t[0].isalpha()),
    ("math", lambda t: t[0] in "\\$"),
    ("other", lambda t: True),
]
FORMATTING = ("step label", "list number", "`*`", "`#`", "bullet")


def opening(text: str) -> str:
    """How a step's text opens: ``word`` (a letter, other than a ``Step N`` label), formatting, a digit, ..."""
    stripped = text.lstrip()
    return next(name for name, test in OPENINGS if test(stripped))


def first_word(text: str) -> str:
    """The step's first whitespace-separated piece (at most 30 characters)."""
    pieces = text.split(maxsplit=1)
    return pieces[0][:30] if pieces else ""


# --------------------------------------------------------------------------- measuring


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every preset on every problem with all steps small; one line per step."""
    from glimp_graph.eval.provenance import process_binary
    from glimp_graph.serving import LocalModels

    problems = load_problems(args.data, start=args.start, limit=args.n)
    lines: list[dict[str, Any]] = []
    with LocalModels(ctx_size=4096) as models:
        small = Endpoint(base_url=models.small.base_url, model=models.small.alias, seed=SEED)
        large = Endpoint(base_url=models.large.base_url, model=models.large.alias, seed=SEED)
        started = {
            role: {"binary": process_binary(server.pid), "model_file": server.model_path.name}
            for role, server in (("small", models.small), ("large", models.large))
        }
        provenance = await collect_provenance(small, large, servers=started)
        shared = {
            "code_state": label(provenance),
            "cpu": provenance["cpu"],
            "small_model": started["small"]["model_file"],
            "large_model": started["large"]["model_file"],
        }
        graphs = {
            name: create_glimp_graph(small, large, config={**BASE, "tau": math.inf, "prompt": name})
            for name in args.presets
        }
        for problem in problems:  # problem by problem, so a partial run still pairs the presets
            for name, graph in graphs.items():
                out = await graph.ainvoke({"question": problem.question})
                steps = out["glimp_steps"]
                _, correct = grade(problem, out["glimp_answer"])
                if not correct:  # the answer may already stand in the reasoning, as the runner grades it
                    _, correct = grade(problem, reasoning_text((s.text for s in steps), "\n\n"))
                for step in steps:
                    lines.append(
                        {
                            "id": problem.id,
                            "row": problem.row,
                            "preset": name,
                            "step": step.index,
                            "probe_token": step.probe_token,
                            "probe_is_space": not step.probe_token.strip(),
                            "first_word": first_word(step.text),
                            "opening_text": step.text.lstrip()[:60],
                            "opens_with": opening(step.text),
                            "h_init": step.h_init,
                            "tokens": step.tokens,
                            "end": step.end,
                            "run_steps": len(steps),
                            "run_stop_reason": out["glimp_stats"].stop_reason,
                            "run_correct": bool(correct),
                            **shared,
                        }
                    )
                word = sum(opening(s.text) == "word" for s in steps)
                print(f"{problem.id} {name}: {len(steps)} steps, {word} open with a word", flush=True)
    return lines


# --------------------------------------------------------------------------- the report


def _cell(text: str) -> str:
    """A step's opening as a Markdown table cell."""
    shown = text.replace("\n", " ").replace("|", "\\|").replace("`", "'")
    return f"`{shown}`" if shown.strip() else "(empty)"


def _q(values: Sequence[float]) -> str:
    return f"{quantile(values, 0.5):.2f} ({quantile(values, 0.25):.2f}-{quantile(values, 0.75):.2f})"


def _share_ci(
    lines: list[dict[str, Any]], keep: Callable[[dict[str, Any]], bool], args: argparse.Namespace
) -> tuple[float, ...]:
    """Share of word-opening steps among ``lines`` that ``keep`` keeps, with a bootstrap interval over problems.

    Steps of one problem are not independent, so the problems, not the steps, are resampled.
    """
    by_problem: dict[str, list[bool]] = defaultdict(list)
    for line in lines:
        if keep(line):
            by_problem[line["id"]].append(line["opens_with"] == "word")
    groups = list(by_problem.values())
    if not groups:
        return (math.nan, math.nan, math.nan, 0, 0)

    def pooled(sample: list[float]) -> float:
        chosen = [groups[int(i)] for i in sample]
        n = sum(len(g) for g in chosen)
        return sum(sum(g) for g in chosen) / n if n else math.nan

    indices = [float(i) for i in range(len(groups))]
    [(low, high)] = bootstrap_intervals(indices, [pooled], resamples=args.resamples, seed=args.seed)
    words, n = sum(sum(g) for g in groups), sum(len(g) for g in groups)
    return (words / n, low, high, words, n)


def render(lines: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown report; every number is computed from ``lines``."""
    unprobed = sum(line["h_init"] is None for line in lines)
    lines = [line for line in lines if line["h_init"] is not None]
    presets = list(dict.fromkeys(line["preset"] for line in lines))
    by_preset = {p: [line for line in lines if line["preset"] == p] for p in presets}
    ids = list(dict.fromkeys(line["id"] for line in lines))
    rows = sorted({line["row"] for line in lines})
    first = lines[0]
    states = Counter(line["code_state"] for line in lines)
    cpu = first["cpu"]
    out = [
        "# Plain-sentence steps: do they open with a word, and what does H_init do? (issue #13, item 6)",
        "",
        f"Command: `{COMMAND}` (starts the local pair; `--report-only` re-renders this file from "
        f"`bench/results/{RESULTS.name}`). Every number below is computed from that file.",
        "",
        "## Setup",
        "",
        f"- Models: `{first['small_model']}` (small) and `{first['large_model']}` (large), each on its own llama.cpp "
        "`llama-server` (2 threads, ctx 4096), the local pair of bench/REPORT.md.",
        f"- CPU: {cpu['model']}, {cpu['cores']} cores, shared with other jobs. Nothing here is timed.",
        f"- Problems: GSM8K dev rows {rows[0]}..{rows[-1]} ({len(ids)} problems, `{ids[0]}`..`{ids[-1]}`), outside "
        "rows 0..99 (bench/REPORT.md's evaluation, reused by the paired glimp-vs-random comparison), 900..905 (its "
        "calibration) and 104..107 (bench/COST_MODEL.md's check).",
        f"- Presets: {', '.join(f'`{p}`' for p in presets)} (glimp_graph/prompts.py), each on every problem, problem "
        "by problem.",
        "- Every step goes to the small model (glimp at tau = +inf): each step is first probed, so its first token "
        "is the small model's greedy token (temperature 0, top 20 log-probabilities) and H_init that token's "
        "renormalized entropy in nats; the step continues from it at temperature 0.6, top_p 0.95, seed 0. "
        f"Budgets as bench/REPORT.md: {', '.join(f'{k}={v}' for k, v in BASE.items())}.",
        "- How a step opens, from its text without leading spaces, first rule that matches: "
        + "; ".join(
            [
                "`step label` (`Step 1`, any case)",
                "`list number` (digits then `.` or `)`)",
                "`*` (bold or a bullet)",
                "`#` (a heading)",
                "`bullet` (`-`, `+`, `\u2022`)",
                "`digit` (another number, e.g. `16 - 3 = 13`)",
                "`word` (a letter)",
                "`math` (`\\` or `$`)",
                "`other`",
            ]
        )
        + ".",
        "- Code state: " + ", ".join(f"`{s}` ({n} steps)" for s, n in states.items()) + ".",
        *([f"- Left out: {unprobed} steps without an H_init."] if unprobed else []),
        "",
        "## How the steps open",
        "",
        "Share of steps opening with a word (95% interval: percentile bootstrap over the problems, "
        f"{args.resamples:,} resamples, seed {args.seed}), over all steps and over the steps after the first "
        "(the first usually restates the problem; numbering starts after it):",
        "",
        "| preset | runs | steps | open with a word | 95% CI | steps after the first | open with a word | 95% CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shares: dict[str, tuple[float, ...]] = {}
    for p in presets:
        ls = by_preset[p]
        runs = len({line["id"] for line in ls})
        share = _share_ci(ls, lambda line: True, args)
        later = _share_ci(ls, lambda line: line["step"] > 0, args)
        shares[p] = share
        out.append(
            f"| `{p}` | {runs} | {share[4]} | {share[3]} ({share[0]:.0%}) | {share[1]:.0%}-{share[2]:.0%} "
            f"| {later[4]} | {later[3]} ({later[0]:.0%}) | {later[1]:.0%}-{later[2]:.0%} |"
        )
    kinds = [name for name, _ in OPENINGS if any(line["opens_with"] == name for line in lines)]
    out += [
        "",
        "All steps by how they open:",
        "",
        "| preset | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for p in presets:
        counts = Counter(line["opens_with"] for line in by_preset[p])
        out.append(f"| `{p}` | " + " | ".join(str(counts.get(k, 0)) for k in kinds) + " |")
    spaces = {p: sum(line["probe_is_space"] for line in by_preset[p]) for p in presets}
    out += [
        "",
        "H_init is the entropy of the step's first token, the probed one. That token is whitespace only (an "
        "indentation) in "
        + ", ".join(f"{spaces[p]} of {len(by_preset[p])} steps under `{p}`" for p in presets)
        + "; how a step opens is read from its text past any such whitespace.",
    ]

    out += [
        "",
        "## H_init",
        "",
        "Median (first-third quartile) of H_init in nats; the last column is the share of steps above "
        f"{STEPS_TAU}, the tau bench/REPORT.md calibrated for a 25% large-step share under `steps` (a preset that "
        "moves H_init needs its own calibration):",
        "",
        f"| preset | steps | median (Q1-Q3) | mean | below 0.05 | above {STEPS_TAU} |",
        "|---|---|---|---|---|---|",
    ]
    for p in presets:
        h = [line["h_init"] for line in by_preset[p]]
        zero = sum(x < 0.05 for x in h)
        above = sum(x > STEPS_TAU for x in h)
        out.append(
            f"| `{p}` | {len(h)} | {_q(h)} | {statistics.mean(h):.2f} | {zero} ({zero / len(h):.0%}) "
            f"| {above} ({above / len(h):.0%}) |"
        )
    out += [
        "",
        "By how the step opens (kinds with at least 3 steps under a preset):",
        "",
        "| preset | opens with | steps | median H_init (Q1-Q3) | mean |",
        "|---|---|---|---|---|",
    ]
    for p in presets:
        groups: dict[str, list[float]] = defaultdict(list)
        for line in by_preset[p]:
            groups[line["opens_with"]].append(line["h_init"])
        for kind in kinds:
            h = groups.get(kind, [])
            if len(h) >= 3:
                out.append(f"| `{p}` | {kind} | {len(h)} | {_q(h)} | {statistics.mean(h):.2f} |")
    if len(presets) == 2:
        a, b = presets
        medians = {
            p: {i: statistics.median(line["h_init"] for line in by_preset[p] if line["id"] == i) for i in ids}
            for p in presets
        }
        higher = sum(medians[b][i] > medians[a][i] for i in ids)
        lower = sum(medians[b][i] < medians[a][i] for i in ids)
        out += [
            "",
            f"Per problem, the median H_init of its steps is higher under `{b}` than under `{a}` on {higher} of "
            f"{len(ids)} problems, lower on {lower}.",
        ]

    out += ["", "## Examples", "", "The first four steps of the first three problems under each preset:", ""]
    for i in ids[:3]:
        out += [f"`{i}`:", "", "| preset | step | opens with | H_init | opening |", "|---|---|---|---|---|"]
        for p in presets:
            for line in [x for x in by_preset[p] if x["id"] == i][:4]:
                out.append(
                    f"| `{p}` | {line['step']} | {line['opens_with']} | {line['h_init']:.2f} "
                    f"| {_cell(line['opening_text'])} |"
                )
        out.append("")
    leftover = [line for line in by_preset.get("plain", []) if line["opens_with"] in FORMATTING]
    if leftover:
        out += [
            "Steps under `plain` that still open with formatting:",
            "",
            "| problem | step | opening |",
            "|---|---|---|",
        ]
        out += [f"| `{x['id']}` | {x['step']} | {_cell(x['opening_text'])} |" for x in leftover[:10]]
        if len(leftover) > 10:
            out.append(f"| ... | | {len(leftover) - 10} more |")
        out.append("")

    out += ["## Reading", ""]
    if "steps" in shares and "plain" in shares:
        s, pl = shares["steps"], shares["plain"]
        hs = [line["h_init"] for line in by_preset["steps"]]
        hp = [line["h_init"] for line in by_preset["plain"]]
        formatted = sum(line["opens_with"] in FORMATTING for line in by_preset["plain"])
        formatted_steps = sum(line["opens_with"] in FORMATTING for line in by_preset["steps"])
        if pl[1] > s[2]:
            apart = "the intervals do not overlap, so more steps open with a word under `plain`"
        elif s[1] > pl[2]:
            apart = (
                "the intervals do not overlap, so fewer steps open with a word under `plain`: on this model the "
                "preset does not get the steps to open with words"
            )
        else:
            apart = "the intervals overlap, so on this model the preset does not clearly change how the steps open"
        direction = "higher" if statistics.median(hp) > statistics.median(hs) else "lower or equal"
        out.append(
            f"Under `plain` {pl[0]:.0%} of the small model's steps open with a word (95% CI {pl[1]:.0%}-{pl[2]:.0%}), "
            f"against {s[0]:.0%} ({s[1]:.0%}-{s[2]:.0%}) under `steps`; {apart}. {formatted} of {len(hp)} `plain` "
            f"steps still open with formatting (a list number, a `Step N` label, `*`, `#` or a bullet), against "
            f"{formatted_steps} of {len(hs)} under `steps`. The median H_init is {statistics.median(hp):.2f} nats "
            f"under `plain` and {statistics.median(hs):.2f} under `steps` ({direction} under `plain`). "
            f"{len(ids)} problems, one sampled run each: this checks what the preset does to the openings, not "
            "whether H_init then routes better; that is the paired 100-problem comparison of glimp and random at "
            "the same large-step share."
        )
        out.append("")
        accuracy = {p: sum(next(x["run_correct"] for x in by_preset[p] if x["id"] == i) for i in ids) for p in presets}
        out.append(
            "With every step the small model's and the final answer the large model's, the runs answered "
            + ", ".join(f"{accuracy[p]} of {len(ids)} right under `{p}`" for p in presets)
            + " (too few problems to compare)."
        )
        out.append("")
    return "\n".join([*out, *paired_section(*_paired_inputs(args))])


PAIRED_HOW = [
    "glimp against random routing at the same large-step share, both under `plain`, on bench/REPORT.md's 100 "
    "problems (GSM8K dev rows 0..99), with its budgets; glimp's tau is calibrated under `plain` on rows 900..919 "
    "(20 problems outside those 100 and outside this check's). Run on a quiet machine; "
    "`glimp eval` resumes an interrupted run from its `--out` file and refuses one written under another prompt.",
    "",
    "```",
    'B="--prompt plain --max-step-tokens 256 --max-thinking-tokens 768 --max-steps 32 --final-max-tokens 64"',
    "D=../shared/data/gsm8k_dev.jsonl",
    "OUT=bench/results/gsm8k_qwen_plain.jsonl",
    "# 1. tau for a 25% large-step share under plain: prints 'glimp: tau=TAU for a large-step share of 25% ...'",
    "flock /tmp/glimp-heavy.lock .venv/bin/glimp calibrate --dataset $D --start 900 --limit 20 --scorer glimp \\",
    "    --target-large-share 0.25 $B | tee bench/results/gsm8k_qwen_plain.calibration.txt",
    "# 2. both jobs on the same 100 problems, problem by problem (random@0.75: a 25% large-step share)",
    "flock /tmp/glimp-heavy.lock .venv/bin/glimp eval --dataset $D --start 0 --limit 100 --strategies glimp,random \\",
    "    --threshold glimp=TAU --threshold random=0.75 --seed 0 $B --out $OUT --report ${OUT%.jsonl}.md",
    "# 3. where glimp's realised large-step share (the table's column) is not near 25%, add random at that share",
    "#    too (SHARE_SMALL = 1 - glimp's share; same --out, only the new job runs), then re-read the table",
    "flock /tmp/glimp-heavy.lock .venv/bin/glimp eval --dataset $D --start 0 --limit 100 --strategies random \\",
    "    --threshold random=SHARE_SMALL --seed 0 $B --out $OUT --report ${OUT%.jsonl}.md",
    "# 4. the paired accuracy comparison (sign test on the problems where the two disagree); with step 3, compare",
    "#    with 'random@SHARE_SMALL' as well",
    '.venv/bin/python -c "from glimp_graph.eval import load_records, paired; '
    "print(paired(load_records('$OUT'), 'glimp@TAU', 'random@0.75'))\"",
    "```",
    "",
    "`glimp eval` starts the local pair without a sampling seed and does not reset the servers' prompt caches "
    "between runs as bench/run_report.py does: the paired accuracy comparison is unaffected, but its latency "
    "ratios are not comparable with bench/REPORT.md's. The `steps` counterpart on the same rows is in "
    "bench/results/gsm8k_qwen.jsonl (`glimp@0.7994`, `random@0.75`).",
    "",
]
"""How the issue's paired 100-problem comparison is run."""
PAIRED_RESULTS = HERE / "results" / "gsm8k_qwen_plain.jsonl"
PAIRED_CALIBRATION = HERE / "results" / "gsm8k_qwen_plain.calibration.txt"
STEPS_RESULTS = HERE / "results" / "gsm8k_qwen.jsonl"
STEPS_JOBS = (f"glimp@{STEPS_TAU}", "random@0.75")
SHARE_GAP = 0.05
"""Realised large-step shares further apart than this are not 'the same share'."""


def _share(runs: Sequence[dict[str, Any]]) -> float:
    steps = sum(int(r.get("steps") or 0) for r in runs)
    return sum(int(r.get("large_steps") or 0) for r in runs) / steps if steps else math.nan


def _better(p: Any) -> str:
    """Which job of a :class:`~glimp_graph.eval.compare.Paired` is right more often at the 5% level, else neither."""
    if p.p_value >= 0.05:
        return "neither"
    return "glimp" if p.only_a > p.only_b else "random"


def _comparisons(records: list[dict[str, Any]], glimp: str, randoms: Sequence[str]) -> tuple[list[str], list[Any]]:
    """One sentence per random job: glimp against it on the same problems, and the :class:`Paired` results."""
    from glimp_graph.eval import paired

    ok = defaultdict(list)
    for r in records:
        if not r.get("error"):
            ok[r["job"]].append(r)
    out, results = [], []
    for random in randoms:
        p = paired(records, glimp, random)
        gap = _share(ok[glimp]) - _share(ok[random])
        verdict = {
            "glimp": f"glimp right more often, significant (sign test p = {p.p_value:.3f})",
            "random": f"random right more often, significant (sign test p = {p.p_value:.3f})",
            "neither": f"no significant difference (sign test p = {p.p_value:.2f})",
        }[_better(p)]
        shares = "the same large-step share" if abs(gap) <= SHARE_GAP else f"large-step shares {abs(gap):.0%} apart"
        out.append(
            f"- `{glimp}` against `{random}` on the same {p.n} problems: right on {p.both + p.only_a} vs "
            f"{p.both + p.only_b}; only one of them right on {p.only_a + p.only_b} ({p.only_a} glimp, {p.only_b} "
            f"random): {verdict}; {shares} ({_share(ok[glimp]):.0%} vs {_share(ok[random]):.0%})."
        )
        results.append((p, gap))
    return out, results


def paired_section(plain: list[dict[str, Any]], steps: list[dict[str, Any]], calibration: str | None) -> list[str]:
    """The paired glimp-vs-random comparison under `plain`, beside the same comparison under `steps`.

    Without records under `plain`, how to run it.
    """
    from glimp_graph.eval import wilson_interval

    jobs = list(dict.fromkeys(r["job"] for r in plain if not r.get("error")))
    glimp = next((j for j in jobs if j.startswith("glimp@")), None)
    randoms = [j for j in jobs if j.startswith("random@")]
    if glimp is None or not randoms:
        return ["## The paired comparison (not run yet)", "", *PAIRED_HOW]
    out = [
        "## The paired comparison: glimp against random under `plain`",
        "",
        f"From `bench/results/{PAIRED_RESULTS.name}` ({len(plain)} records); calibration: "
        + (f"`{calibration.strip()}`" if calibration else "not recorded")
        + ". Problems: GSM8K dev rows 0..99, one sampled run per job and problem.",
        "",
        "| job | prompt | runs | right | accuracy (95% Wilson CI) | large-step share | code state |",
        "|---|---|---|---|---|---|---|",
    ]
    for job in [glimp, *randoms]:
        runs = [r for r in plain if r["job"] == job and not r.get("error")]
        right = sum(bool(r.get("correct")) for r in runs)
        low, high = wilson_interval(right, len(runs))
        states = ", ".join(sorted({label(r.get("provenance")) for r in runs}))
        prompts = ", ".join(sorted({str(r.get("prompt")) for r in runs}))
        out.append(
            f"| {job} | {prompts} | {len(runs)} | {right} | {right / len(runs):.0%} ({low:.0%}-{high:.0%}) "
            f"| {_share(runs):.0%} | {states} |"
        )
    errors = sum(bool(r.get("error")) for r in plain)
    out += ["", f"Runs that ended in an error (left out above): {errors}.", ""]
    sentences, results = _comparisons(plain, glimp, randoms)
    out += sentences
    steps_ok = all(any(r["job"] == j and not r.get("error") for r in steps) for j in STEPS_JOBS)
    steps_results: list[Any] = []
    if steps_ok:
        steps_sentences, steps_results = _comparisons(steps, STEPS_JOBS[0], STEPS_JOBS[1:])
        out += [f"- The same comparison under `steps` (bench/results/{STEPS_RESULTS.name}, bench/REPORT.md's run):"]
        out += ["  " + line for line in steps_sentences]
    matched = [(p, gap) for p, gap in results if abs(gap) <= SHARE_GAP]
    out.append("")
    if not matched:
        out.append(
            "No random job ran at glimp's realised share (within 5 points): run step 3 below before reading the "
            "comparison as one at the same share."
        )
    else:
        p, _ = matched[0]
        if _better(p) == "glimp":
            finding = "H_init carries signal under `plain`: glimp is right more often than random at the same share"
        elif _better(p) == "random":
            finding = "under `plain` glimp's routing is worse than random at the same share"
        else:
            finding = (
                "under `plain` H_init routing is not distinguishable from random at the same share on these 100 "
                f"problems ({p.only_a} vs {p.only_b} problems only one of them got right)"
            )
        out.append(f"Reading: {finding}.")
        if steps_results:
            sp, steps_gap = steps_results[0]
            share = "at the same share" if abs(steps_gap) <= SHARE_GAP else f"at shares {abs(steps_gap):.0%} apart"
            out.append(
                f"Under `steps` ({share}) the same comparison gave {sp.only_a} vs {sp.only_b} "
                f"(p = {sp.p_value:.2f}): "
                + ("the same verdict." if _better(sp) == _better(p) else "a different verdict.")
            )
    return [*out, "", "### How it was run", "", *PAIRED_HOW]


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _paired_inputs(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    calibration = None
    if args.paired_calibration.exists():  # glimp calibrate's output: a histogram of the scores, then the result
        found = [x for x in args.paired_calibration.read_text(encoding="utf-8").splitlines() if "tau=" in x]
        calibration = found[-1] if found else None
    return _load(args.paired_results), _load(args.steps_results), calibration


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="GSM8K dev problems (JSONL)")
    parser.add_argument("--start", type=int, default=200, help="first row (0-based)")
    parser.add_argument("--n", type=int, default=10, help="problems")
    parser.add_argument("--presets", nargs="+", default=["steps", "plain"], choices=sorted(PRESETS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="one line per step (overwritten by a run)")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--report-only", action="store_true", help="only render the report from the results")
    parser.add_argument(
        "--paired-results", type=Path, default=PAIRED_RESULTS, help="glimp eval records of glimp and random under plain"
    )
    parser.add_argument("--paired-calibration", type=Path, default=PAIRED_CALIBRATION)
    parser.add_argument(
        "--steps-results", type=Path, default=STEPS_RESULTS, help="the same comparison under steps (bench/REPORT.md's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if args.n < 1 or args.start < 0:
        parser.error(f"--n must be >= 1 and --start >= 0, got --n {args.n} --start {args.start}")
    return args


def main() -> None:
    args = parse_args()
    if not args.report_only:
        lines = asyncio.run(measure(args))
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    lines = [json.loads(x) for x in args.results.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not lines:
        raise SystemExit(f"{args.results} has no steps; run without --report-only first")
    args.report.write_text(render(lines, args), encoding="utf-8")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
