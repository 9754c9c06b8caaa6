"""A cost model of the two servers, fitted from a profiling run, then used to replay recorded routing traces.

One model call costs ``t = overhead + prefill_rate x new prompt tokens + decode_rate x generated tokens``
(:class:`CallCost`), per server. *New* prompt tokens are those the server has not cached: the servers keep a
prefix cache (llama.cpp's ``cache_prompt`` and its prompt cache in RAM, vLLM's automatic prefix caching), so a
server that wrote the previous step reads only the delimiter, while one that did not must first read the step
the other model wrote.

* :func:`fit_call_cost` fits the three rates by least squares and reports the fit (R^2, residuals).
* :func:`measure_profile` is the profiling run behind ``glimp profile``: controlled requests to the user's own
  endpoints (a cached base prompt, then varied new-prompt and generated lengths, repeated; the median of each
  cell), fitted per server, with and without top-k log-probabilities (the probe and the drafts ask for them).
* :class:`Profile` is what a profile file holds; :func:`load_profile` reads one by path or by the name of a
  profile shipped with the package (``glimp_graph/eval/profiles``); :func:`kernel_floor_profile` builds one
  from a kernel benchmark's per-token figures (a floor for what a serving engine reaches, not a measurement).
* :func:`trace_calls` rebuilds the calls of one recorded run from its steps (the records keep each step's
  model and tokens, not each call's new-prompt tokens), :func:`predict_record` prices them under a profile,
  :func:`ideal_seconds` prices the same steps at each model's standalone speed with no probe and no switching,
  :func:`validate` compares predictions with what the records measured and :func:`project` gives each job's
  projected latency and its ratio to large-only.

Pure Python (no NumPy); the profiling run is the only I/O.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from glimp_graph.endpoints import CHARS_PER_TOKEN, Endpoint, ModelClient, Request, Role
from glimp_graph.eval.strategies import STRATEGIES
from glimp_graph.prompts import QUESTION_SLOT, STEPS
from glimp_graph.scorers import JUDGE_PROMPT

FORMAT = "glimp-cost-profile/1"
"""The ``format`` field of a profile file."""
MIN_POINTS = 4
"""Fewest (cell) measurements :func:`fit_call_cost` accepts: three rates and at least one degree of freedom."""
QUESTION_TOKENS = 60
"""Tokens of a GSM8K question (~230 characters)."""
TEMPLATE_TOKENS = 13
"""Tokens the chat template adds around the system and user messages and before the assistant's turn (ChatML)."""
PROMPT_TOKENS = (
    round((len(STEPS.system or "") + len(STEPS.user.replace(QUESTION_SLOT, ""))) / CHARS_PER_TOKEN)
    + QUESTION_TOKENS
    + TEMPLATE_TOKENS
)
"""New prompt tokens of each server's first call in a run when the record does not say how long its prompt was
(:func:`initial_prompt_tokens`): the ``steps`` preset's system message and instruction, a GSM8K question and the
chat template. The whole prompt: the benchmarks point both servers' caches elsewhere before each run."""
DELIMITER_TOKENS = 1
"""Tokens of the step delimiter ``"\\n\\n"`` (one token for Qwen)."""
ANSWER_PREFIX_TOKENS = max(1, round(len(STEPS.answer_prefix) / CHARS_PER_TOKEN))
"""Tokens of the ``steps`` preset's answer prefix (``"\\n\\nFinal answer: "``), appended before the answer."""
JUDGE_HEAD_TOKENS = round(len(JUDGE_PROMPT.split("{question}", 1)[0]) / CHARS_PER_TOKEN)
"""Tokens of SpecReason's judge prompt before the question."""
JUDGE_TAIL_TOKENS = round(len(JUDGE_PROMPT.split("{step}", 1)[1]) / CHARS_PER_TOKEN) + 8
"""Tokens of SpecReason's judge prompt after the drafted step, with ``New step:`` and the chat template's end
and assistant header (about 8)."""
LLAMA_CPP_KEEP = 0.25
"""llama.cpp's server restores a prompt from its prompt cache in RAM only when the new prompt keeps at least this
share of it (``server_prompt_cache::load``: ``f_keep >= 0.25``)."""
CallKind = Literal["probe", "draft", "judge", "step", "final"]
PromptCache = Literal["run", "llama.cpp"]
Statistic = Literal["median", "min"]
ProfileSource = Literal["measured", "kernel-floor"]
CONTENTION_SLACK_S = 0.03
"""CPU seconds of other work a measured call may see before it counts as contended, whatever its length."""
PROFILES_DIR = "profiles"
"""The folder of :mod:`glimp_graph.eval` that holds the shipped profiles."""
FLOOR_NOTE = (
    "a floor from a kernel benchmark (batch-1 decode and prefill captured in CUDA graphs, random weights of the "
    "real shapes, no serving engine): not vLLM measurements; a served call adds HTTP, scheduling and sampling"
)


# --------------------------------------------------------------------------- the cost of one call


@dataclass(frozen=True)
class CallCost:
    """The cost of one call to one server: ``overhead + prefill x new prompt tokens + decode x generated tokens``.

    Attributes:
        overhead_s: Seconds per call whatever its size (HTTP, the client, the server's scheduling).
        prefill_s_per_token: Seconds per new (uncached) prompt token.
        decode_s_per_token: Seconds per generated token.
    """

    overhead_s: float
    prefill_s_per_token: float
    decode_s_per_token: float

    def seconds(self, new_prompt_tokens: float, generated_tokens: float) -> float:
        """The predicted wall time of a call that reads ``new_prompt_tokens`` and generates ``generated_tokens``."""
        return (
            self.overhead_s + self.prefill_s_per_token * new_prompt_tokens + self.decode_s_per_token * generated_tokens
        )

    def to_json(self) -> dict[str, float]:
        """The three rates as a JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> CallCost:
        """The rates of a profile file's entry ``where`` (e.g. ``servers.small.plain``).

        Raises:
            ValueError: A rate is missing or not a finite number; the message names it.
        """
        values = {}
        for name in ("overhead_s", "prefill_s_per_token", "decode_s_per_token"):
            value = data.get(name) if isinstance(data, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{where}.{name} must be a finite number of seconds, got {value!r}")
            values[name] = float(value)
        return cls(**values)


@dataclass(frozen=True)
class Sample:
    """One measured call (or the median of a cell of repeated calls).

    Attributes:
        new_prompt_tokens: Prompt tokens the server had not cached.
        generated_tokens: Tokens it generated.
        seconds: Wall time of the call.
    """

    new_prompt_tokens: float
    generated_tokens: float
    seconds: float


@dataclass(frozen=True)
class Fit:
    """A least-squares fit of :class:`CallCost` and how well it describes its points.

    Attributes:
        cost: The fitted rates.
        points: The points fitted.
        r2: Coefficient of determination.
        rmse_s: Root mean square residual, seconds.
        max_rel_residual: Largest ``|measured - fitted| / measured``.
        residuals: ``(new prompt tokens, generated tokens, measured s, fitted s)`` per point.
    """

    cost: CallCost
    points: int
    r2: float
    rmse_s: float
    max_rel_residual: float
    residuals: list[tuple[float, float, float, float]]

    def to_json(self) -> dict[str, Any]:
        """The fit as a JSON object (the rates under ``cost``)."""
        return {
            "cost": self.cost.to_json(),
            "points": self.points,
            "r2": self.r2,
            "rmse_s": self.rmse_s,
            "max_rel_residual": self.max_rel_residual,
            "residuals": [
                {"new_prompt_tokens": n, "generated_tokens": g, "measured_s": m, "fitted_s": f}
                for n, g, m, f in self.residuals
            ],
        }


def _solve3(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Solve the 3x3 system ``a x = b`` by Gaussian elimination with partial pivoting (``None``: singular)."""
    m = [[*row, v] for row, v in zip(a, b, strict=True)]
    scale = max(abs(x) for row in a for x in row) or 1.0
    for col in range(3):
        pivot = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) <= 1e-12 * scale:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            for c in range(col, 4):
                m[r][c] -= f * m[col][c]
    x = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        x[r] = (m[r][3] - sum(m[r][c] * x[c] for c in range(r + 1, 3))) / m[r][r]
    return x


def fit_call_cost(samples: Sequence[Sample], *, relative: bool = True) -> Fit:
    """Fit ``seconds = overhead + prefill x new prompt tokens + decode x generated tokens`` by least squares.

    By default the squares are of *relative* residuals (weights ``1 / seconds^2``): a router's calls run from a
    one-token probe (tens of ms) to a long step (seconds), and a plain fit would let the long calls decide the
    overhead alone (a few ms of their error is a large share of a probe's time). An overhead that comes out
    negative (noise) is set to 0 and the two rates are fitted again.

    Args:
        samples: Measured calls (best: the median of each cell of repeated calls).
        relative: Minimise relative residuals (``False``: absolute ones).

    Returns:
        The fitted rates with R^2 and the residuals.

    Raises:
        ValueError: Fewer than :data:`MIN_POINTS` points, or the new-prompt or generated lengths do not vary
            independently (the rates cannot be told apart); the message says what to measure.
    """
    if len(samples) < MIN_POINTS:
        raise ValueError(
            f"cannot fit 3 rates from {len(samples)} measurement(s): need at least {MIN_POINTS}, with varied "
            "new-prompt and generated lengths (glimp profile measures a grid of both)"
        )
    for label, values in (
        ("new-prompt", [s.new_prompt_tokens for s in samples]),
        ("generated", [s.generated_tokens for s in samples]),
    ):
        if len(set(values)) < 2:
            raise ValueError(
                f"cannot fit the rates: every measurement has the same {label} length ({values[0]:g} tokens); "
                f"measure at least two {label} lengths"
            )
    rows = [(1.0, float(s.new_prompt_tokens), float(s.generated_tokens)) for s in samples]
    ys = [float(s.seconds) for s in samples]
    if relative and min(ys) <= 0:
        raise ValueError(f"cannot fit relative residuals: a measurement took {min(ys)} s (times must be > 0)")
    weights = [1.0 / (y * y) if relative else 1.0 for y in ys]
    ata = [[math.fsum(w * r[i] * r[j] for r, w in zip(rows, weights, strict=True)) for j in range(3)] for i in range(3)]
    aty = [math.fsum(w * r[i] * y for r, y, w in zip(rows, ys, weights, strict=True)) for i in range(3)]
    solution = _solve3(ata, aty)
    if solution is None:
        raise ValueError(
            "cannot fit the rates: the new-prompt and generated lengths vary together; measure them independently "
            "(a grid of both)"
        )
    if solution[0] < 0:  # no call costs less than nothing: refit the two rates with no overhead
        two = [[math.fsum(w * r[i] * r[j] for r, w in zip(rows, weights, strict=True)) for j in (1, 2)] for i in (1, 2)]
        rhs = [math.fsum(w * r[i] * y for r, y, w in zip(rows, ys, weights, strict=True)) for i in (1, 2)]
        det = two[0][0] * two[1][1] - two[0][1] * two[1][0]
        solution = [
            0.0,
            (rhs[0] * two[1][1] - rhs[1] * two[0][1]) / det,
            (two[0][0] * rhs[1] - two[1][0] * rhs[0]) / det,
        ]
    cost = CallCost(*solution)
    fitted = [cost.seconds(n, g) for _, n, g in rows]
    residuals = [y - f for y, f in zip(ys, fitted, strict=True)]
    mean = statistics.fmean(ys)
    ss_tot = math.fsum((y - mean) ** 2 for y in ys)
    ss_res = math.fsum(r * r for r in residuals)
    return Fit(
        cost=cost,
        points=len(samples),
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        rmse_s=math.sqrt(ss_res / len(ys)),
        max_rel_residual=max(abs(r) / y if y > 0 else math.inf for r, y in zip(residuals, ys, strict=True)),
        residuals=[(n, g, y, f) for (_, n, g), y, f in zip(rows, ys, fitted, strict=True)],
    )


def cell_summary(
    samples: Iterable[Sample], cell: Iterable[tuple[int, int]], statistic: Statistic = "median"
) -> list[Sample]:
    """One point per cell of repeated measurements (``cell`` names each sample's cell, in order).

    ``"median"`` (the default): one slow call of a cell does not move a rate. ``"min"``: the fastest call of each
    cell (its token counts with it), the usual estimate of what the machine itself does when other work only ever
    adds time; for a machine that cannot be made quiet, not for one that can.
    """
    groups: dict[tuple[int, int], list[Sample]] = defaultdict(list)
    for sample, key in zip(samples, cell, strict=True):
        groups[key].append(sample)
    if statistic == "min":
        return [min(group, key=lambda s: s.seconds) for _, group in sorted(groups.items())]
    if statistic != "median":
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
    return [
        Sample(
            statistics.median(s.new_prompt_tokens for s in group),
            statistics.median(s.generated_tokens for s in group),
            statistics.median(s.seconds for s in group),
        )
        for _, group in sorted(groups.items())
    ]


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ServerCost:
    """What one server's calls cost.

    Attributes:
        model: The model the server serves (as the profile names it).
        plain: Calls without log-probabilities (the steps, the final answer).
        logprobs: Calls that ask for top-k log-probabilities (the probe, the drafts of step-entropy and
            step-perplexity, SpecReason's judge); ``None``: priced as ``plain``.
    """

    model: str
    plain: CallCost
    logprobs: CallCost | None = None

    def cost(self, *, logprobs: bool = False) -> CallCost:
        """The rates of a call with or without log-probabilities."""
        return self.logprobs if logprobs and self.logprobs is not None else self.plain


@dataclass(frozen=True)
class Profile:
    """A hardware profile: the cost of each server's calls, and where the figures come from.

    Attributes:
        name: Short name (the file name of a shipped profile).
        description: One line: machine, models, servers.
        source: ``"measured"`` (a ``glimp profile`` run) or ``"kernel-floor"`` (from a kernel benchmark).
        small: The small model's server.
        large: The large model's server.
        note: What a reader must know about the figures (printed with every projection).
        extra: Everything else the file holds (fits, raw samples, provenance), kept as read.
    """

    name: str
    description: str
    source: ProfileSource
    small: ServerCost
    large: ServerCost
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def server(self, role: Role) -> ServerCost:
        """The server of ``role``."""
        return self.small if role == "small" else self.large

    def to_json(self) -> dict[str, Any]:
        """The profile as the JSON object a profile file holds."""
        servers: dict[str, Any] = {}
        for role in ("small", "large"):
            s = self.server(role)  # type: ignore[arg-type]
            entry: dict[str, Any] = {"model": s.model, "plain": s.plain.to_json()}
            if s.logprobs is not None:
                entry["logprobs"] = s.logprobs.to_json()
            if self.extra.get("fits", {}).get(role):
                entry["fits"] = self.extra["fits"][role]
            servers[role] = entry
        rest = {k: v for k, v in self.extra.items() if k != "fits"}
        return {
            "format": FORMAT,
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "note": self.note,
            "servers": servers,
            **rest,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Profile:
        """A profile from a profile file's JSON object.

        Raises:
            ValueError: The object is not a profile; the message names ``where`` and the bad field.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f'{where} is not a glimp cost profile (expected "format": "{FORMAT}")')
        servers = data.get("servers")
        if not isinstance(servers, dict) or not all(isinstance(servers.get(r), dict) for r in ("small", "large")):
            raise ValueError(f'{where}: expected "servers" with a "small" and a "large" entry')
        source = data.get("source")
        if source not in ("measured", "kernel-floor"):
            raise ValueError(f'{where}: "source" must be "measured" or "kernel-floor", got {source!r}')
        built: dict[str, ServerCost] = {}
        fits: dict[str, Any] = {}
        for role in ("small", "large"):
            entry = servers[role]
            logprobs = entry.get("logprobs")
            built[role] = ServerCost(
                model=str(entry.get("model") or role),
                plain=CallCost.from_json(entry.get("plain"), f"{where}: servers.{role}.plain"),
                logprobs=None
                if logprobs is None
                else CallCost.from_json(logprobs, f"{where}: servers.{role}.logprobs"),
            )
            if entry.get("fits"):
                fits[role] = entry["fits"]
        known = {"format", "name", "description", "source", "note", "servers"}
        extra = {k: v for k, v in data.items() if k not in known}
        if fits:
            extra["fits"] = fits
        return cls(
            name=str(data.get("name") or Path(where).stem),
            description=str(data.get("description") or ""),
            source=source,
            small=built["small"],
            large=built["large"],
            note=str(data.get("note") or ""),
            extra=extra,
        )

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def shipped_profiles() -> list[str]:
    """The names of the profiles shipped with the package."""
    folder = resources.files("glimp_graph.eval") / PROFILES_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile by the path of its file or the name of a shipped one (:func:`shipped_profiles`).

    Raises:
        ValueError: No such file and no shipped profile of that name (the message lists the shipped ones), or
            the file is not a profile.
    """
    path = Path(name_or_path)
    if path.is_file():
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        name = str(name_or_path).removesuffix(".json")
        if name not in shipped_profiles():
            raise ValueError(
                f"no profile file {str(name_or_path)!r} and no shipped profile of that name; give a profile file "
                f"written by glimp profile, or one of: {', '.join(shipped_profiles()) or '(none shipped)'}"
            )
        text = (resources.files("glimp_graph.eval") / PROFILES_DIR / f"{name}.json").read_text(encoding="utf-8")
        where = f"shipped profile {name!r}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not JSON ({exc.msg}, line {exc.lineno})") from None
    return Profile.from_json(data, where)


def kernel_floor_profile(
    small: Mapping[str, Any], large: Mapping[str, Any], *, name: str, description: str, device: str
) -> Profile:
    """A profile from a kernel benchmark's rows (``decode_ms_per_token`` and ``prefill{N}_graph_ms``).

    A call's first token comes out of the forward pass over its new prompt tokens, the others one decode step
    each: ``t = F(N) + decode x (G - 1)``. ``F(N)`` is fitted as ``a + prefill x N`` over the measured chunks
    (least squares), so ``overhead = a - decode`` (at least 0: the benchmark has no serving overhead to give).

    Args:
        small: The small model's row (``model``, ``decode_ms_per_token``, ``prefill64_graph_ms``, ...).
        large: The large model's row.
        name: The profile's name.
        description: Its one-line description.
        device: The device the benchmark ran on.

    Raises:
        ValueError: A row has no decode figure or fewer than two prefill chunks.
    """
    servers = {}
    fits: dict[str, Any] = {}
    for role, row in (("small", small), ("large", large)):
        decode = row.get("decode_ms_per_token")
        chunks = sorted(
            (int(k.removeprefix("prefill").removesuffix("_graph_ms")), float(v))
            for k, v in row.items()
            if k.startswith("prefill") and k.endswith("_graph_ms") and isinstance(v, int | float)
        )
        if not isinstance(decode, int | float) or len(chunks) < 2:
            raise ValueError(f"{row.get('model', role)!r}: need decode_ms_per_token and two prefill{{N}}_graph_ms")
        n_mean = statistics.fmean(n for n, _ in chunks)
        t_mean = statistics.fmean(t for _, t in chunks)
        slope = math.fsum((n - n_mean) * (t - t_mean) for n, t in chunks) / math.fsum(
            (n - n_mean) ** 2 for n, _ in chunks
        )
        intercept = t_mean - slope * n_mean
        cost = CallCost(max(0.0, intercept - decode) / 1000, slope / 1000, decode / 1000)
        servers[role] = ServerCost(model=str(row.get("model", role)), plain=cost)
        fits[role] = {
            "kernel_rows": dict(row),
            "prefill_fit_ms": {"intercept": intercept, "per_token": slope},
            "prefill_residuals_ms": {
                str(n): t - (max(0.0, intercept - decode) + slope * n + decode) for n, t in chunks
            },
        }
    return Profile(
        name=name,
        description=description,
        source="kernel-floor",
        small=servers["small"],
        large=servers["large"],
        note=f"{device}: {FLOOR_NOTE}",
        extra={"fits": fits},
    )


# --------------------------------------------------------------------------- the profiling run


@dataclass(frozen=True)
class ProfilePlan:
    """The controlled requests of a profiling run.

    Attributes:
        new_tokens: Target new-prompt lengths (tokens; ``0``: the whole prompt is cached).
        generated_tokens: Target generated lengths (at least 1).
        repeats: Repeats of each (new, generated) cell; the fit uses each cell's median.
        base_tokens: Length of the cached prompt every call continues (about a routed run's context).
        top_k: Log-probabilities asked for in the second grid (the probe's ``top_k``); ``0``: no such grid.
        logprob_new_tokens: New-prompt lengths of the log-probability grid (``glimp profile``: the plain grid's
            shortest and longest).
        logprob_generated_tokens: Generated lengths of the log-probability grid (likewise).
        seed: Seed of the order in which cells run.
        statistic: How each cell's repeats become the point the fit uses (:func:`cell_summary`).
        max_other_cores: A call during which other processes kept more cores than this busy is ``contended``
            (only when the servers' process ids are known: a local pair).
        retries: Extra attempts of a contended call.
    """

    new_tokens: tuple[int, ...] = (0, 48, 128, 256)
    generated_tokens: tuple[int, ...] = (1, 32, 96)
    repeats: int = 3
    base_tokens: int = 256
    top_k: int = 20
    logprob_new_tokens: tuple[int, ...] = (0, 256)
    logprob_generated_tokens: tuple[int, ...] = (1, 96)
    seed: int = 0
    statistic: Statistic = "median"
    max_other_cores: float = 0.1
    retries: int = 2

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if any(n < 0 for n in (*self.new_tokens, *self.logprob_new_tokens)):
            raise ValueError("new-prompt lengths must be >= 0")
        if any(g < 1 for g in (*self.generated_tokens, *self.logprob_generated_tokens)):
            raise ValueError("generated lengths must be >= 1")
        if (
            len(set(self.new_tokens)) * len(set(self.generated_tokens)) < MIN_POINTS
            or min(len(set(self.new_tokens)), len(set(self.generated_tokens))) < 2
        ):
            raise ValueError(
                f"the grid needs at least two new-prompt and two generated lengths and {MIN_POINTS} cells, got "
                f"new={list(self.new_tokens)} generated={list(self.generated_tokens)}"
            )
        if self.statistic not in ("median", "min"):
            raise ValueError(f"statistic must be 'median' or 'min', got {self.statistic!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no log-probability grid), got {self.top_k}")

    def cells(self, *, logprobs: bool) -> list[tuple[int, int]]:
        """The (new, generated) cells of the plain or the log-probability grid."""
        if logprobs:
            return [(n, g) for n in self.logprob_new_tokens for g in self.logprob_generated_tokens]
        return [(n, g) for n in self.new_tokens for g in self.generated_tokens]


PROFILE_SYSTEM = "You are a counting machine."
PROFILE_USER = "Count upward from 1, one number per line. Never stop."


def _numbers(start: int, chars: int) -> tuple[str, int]:
    """Lines ``start``, ``start+1``, ... of at least ``chars`` characters in all, and the next number."""
    out, n = [], start
    while sum(len(x) for x in out) < chars:
        out.append(f"{n}\n")
        n += 1
    return "".join(out), n


async def _timed(
    client: ModelClient, prefix: str, max_tokens: int, top_k: int | None, *, sample: bool = False
) -> tuple[int, int, float]:
    done = await client.acomplete(
        Request(
            messages=[{"role": "system", "content": PROFILE_SYSTEM}, {"role": "user", "content": PROFILE_USER}],
            prefix=prefix,
            max_tokens=max_tokens,
            temperature=None if sample else 0.0,
            top_p=None if sample else 1.0,
            top_logprobs=top_k,
            run_name="profile",
        )
    )
    return done.prompt_tokens, done.tokens, done.seconds


async def measure_server(
    endpoint: Endpoint,
    role: Role,
    plan: ProfilePlan,
    *,
    progress: Callable[[str], None] | None = None,
    watch_pids: Sequence[int] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Measure one server under ``plan``: every cell ``repeats`` times, in a seeded shuffled order.

    Each measurement first sends the cached base prompt alone (one token: afterwards the server holds exactly
    that prefix), then the base plus about ``new`` tokens of text no earlier call sent (a fresh tag opens it,
    so no prefix cache can hold it), asking for ``generated`` tokens with the endpoint's sampling (the
    temperature and top-p the router's steps use: sampling from a large vocabulary costs time per token on some
    servers). The new prompt tokens are
    the difference of the two prompts' token counts as the server reports them (at least 1: a fully cached
    prompt still has its last token read), the generated tokens what it reports generating.

    With ``watch_pids`` (servers on this machine), each call also records how many cores other processes kept
    busy meanwhile (``other_cores``); a call over ``plan.max_other_cores`` is marked ``contended`` and measured
    again, up to ``plan.retries`` times (every attempt is kept).

    Args:
        endpoint: The server.
        role: Its role (names it in errors).
        plan: The cells and repeats.
        progress: Called as ``progress(text)`` after each cell, when given.
        watch_pids: The process ids of the servers, when they run on this machine.

    Returns:
        ``{"plain": [...], "logprobs": [...]}``: one dict per measurement (``target_new``, ``target_generated``,
        ``new_prompt_tokens``, ``generated_tokens``, ``seconds``, ``prompt_tokens``; with ``watch_pids`` also
        ``other_cores`` and ``contended``).
    """
    client = ModelClient(endpoint.model_copy(update={"seed": 0}), role)
    await client.acheck()
    # tokens per character of the filler, from the server's own counts
    short, _ = _numbers(1, 40)
    long, _ = _numbers(1, 400)
    p_short, _, _ = await _timed(client, short, 1, None)
    p_long, _, _ = await _timed(client, long, 1, None)
    per_char = max((p_long - p_short) / (len(long) - len(short)), 1e-3)
    base, next_number = _numbers(1, int(plan.base_tokens / per_char))
    for _ in range(2):  # warm-up, not recorded
        await _timed(client, base, 8, None)
    rng = random.Random(f"{plan.seed}|{role}")
    out: dict[str, list[dict[str, Any]]] = {"plain": [], "logprobs": []}
    grids = [("plain", False)] + ([("logprobs", True)] if plan.top_k > 0 else [])
    counter = 0
    for repeat in range(plan.repeats):
        for kind, logprobs in grids:
            cells = plan.cells(logprobs=logprobs)
            rng.shuffle(cells)
            for target_new, target_gen in cells:
                for _attempt in range(1 + (plan.retries if watch_pids else 0)):
                    counter += 1
                    cached, _, _ = await _timed(client, base, 1, None)
                    tail = ""
                    if target_new > 0:
                        tag = f"({role} {repeat} {counter} {rng.randrange(10**6):06d})\n"
                        numbers, _ = _numbers(next_number + 1000 * counter, int(target_new / per_char) - len(tag))
                        tail = tag + numbers
                    before = cpu_times(watch_pids) if watch_pids else None
                    prompt, generated, seconds = await _timed(
                        client, base + tail, target_gen, plan.top_k if logprobs else None, sample=True
                    )
                    row: dict[str, Any] = {
                        "target_new": target_new,
                        "target_generated": target_gen,
                        "new_prompt_tokens": max(1, prompt - cached),
                        "generated_tokens": generated,
                        "seconds": seconds,
                        "prompt_tokens": prompt,
                    }
                    busy = cpu_contention(before, cpu_times(watch_pids)) if watch_pids else None
                    if busy is not None:
                        row["other_cores"] = busy["other_cores"]
                        # /proc counts in ticks of 10 ms: allow three of them whatever the call's length
                        allowed = max(plan.max_other_cores * busy["seconds"], CONTENTION_SLACK_S)
                        row["contended"] = busy["other_cores"] * busy["seconds"] > allowed
                    out[kind].append(row)
                    if not row.get("contended"):
                        break
            if progress is not None:
                progress(f"{role}: {kind} grid, repeat {repeat + 1}/{plan.repeats} done")
    return out


def fit_samples(rows: Sequence[Mapping[str, Any]], statistic: Statistic = "median") -> Fit:
    """Fit :class:`CallCost` to a server's measurements (as :func:`measure_server` returns them), cell by cell.

    Each cell's repeats become one point (:func:`cell_summary` with ``statistic``); calls marked ``contended``
    (other work kept the cores busy meanwhile) are left out of a cell that has others.
    """
    cell_of = [(int(r["target_new"]), int(r["target_generated"])) for r in rows]
    clean_cells = {c for r, c in zip(rows, cell_of, strict=True) if not r.get("contended")}
    # a contended call is left out where its cell has a call that was not
    kept = [(r, c) for r, c in zip(rows, cell_of, strict=True) if not r.get("contended") or c not in clean_cells]
    samples = [Sample(r["new_prompt_tokens"], r["generated_tokens"], r["seconds"]) for r, _ in kept]
    return fit_call_cost(cell_summary(samples, [c for _, c in kept], statistic))


def profile_from_samples(
    samples: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    *,
    name: str,
    description: str,
    models: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
    statistic: Statistic = "median",
) -> Profile:
    """A measured profile: each server's plain and log-probability fits.

    Args:
        samples: ``{"small": {"plain": [...], "logprobs": [...]}, "large": {...}}`` from :func:`measure_server`.
        name: The profile's name.
        description: Its one-line description.
        models: The model each role served.
        extra: More to keep in the file (provenance, the plan, the command).
        statistic: How each cell's repeats become one point (:func:`cell_summary`).

    Raises:
        ValueError: A grid has too few points to fit (see :func:`fit_call_cost`).
    """
    servers: dict[str, ServerCost] = {}
    fits: dict[str, Any] = {}
    for role in ("small", "large"):
        plain = fit_samples(samples[role]["plain"], statistic)
        logprobs = fit_samples(samples[role]["logprobs"], statistic) if samples[role].get("logprobs") else None
        servers[role] = ServerCost(model=models[role], plain=plain.cost, logprobs=logprobs.cost if logprobs else None)
        fits[role] = {"plain": plain.to_json(), **({"logprobs": logprobs.to_json()} if logprobs else {})}
    return Profile(
        name=name,
        description=description,
        source="measured",
        small=servers["small"],
        large=servers["large"],
        note=f"measured with glimp profile on the endpoints themselves (the {statistic} of repeated calls)",
        extra={
            "fits": fits,
            **(extra or {}),
            "statistic": statistic,
            "samples": {role: dict(s) for role, s in samples.items()},
        },
    )


def refit_profile(profile: Profile, statistic: Statistic | None = None) -> Profile:
    """The profile fitted again from the measurements it keeps (after a change to the fitting, say).

    Args:
        profile: A measured profile.
        statistic: How each cell's repeats become one point (``None``: as the profile was fitted).

    Raises:
        ValueError: The profile keeps no measurements (a kernel-floor profile, say).
    """
    samples = profile.extra.get("samples")
    if profile.source != "measured" or not isinstance(samples, dict):
        raise ValueError(f"profile {profile.name!r} keeps no measurements to fit again")
    extra = {k: v for k, v in profile.extra.items() if k not in ("fits", "samples", "statistic")}
    return profile_from_samples(
        samples,
        name=profile.name,
        description=profile.description,
        models={"small": profile.small.model, "large": profile.large.model},
        extra=extra,
        statistic=statistic or profile.extra.get("statistic", "median"),
    )


async def measure_profile(
    small: Endpoint,
    large: Endpoint,
    *,
    plan: ProfilePlan | None = None,
    name: str = "profile",
    description: str = "",
    provenance: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    watch_pids: Sequence[int] = (),
) -> Profile:
    """The profiling run behind ``glimp profile``: measure both servers (one after the other) and fit each.

    Args:
        small: The small model's endpoint.
        large: The large model's endpoint.
        plan: The requests (default :class:`ProfilePlan`).
        name: The profile's name.
        description: Its description (default: the two models).
        provenance: What to keep of where it was measured (see
            :func:`~glimp_graph.eval.provenance.collect_provenance`).
        progress: Called as ``progress(text)`` as the run goes on.
        watch_pids: The servers' process ids when they run on this machine: the profile then says how busy the
            machine's other processes kept its cores meanwhile (``cpu_contention``).

    Raises:
        EndpointError: A server cannot be reached or fails.
        ValueError: A grid cannot be fitted.
    """
    plan = plan or ProfilePlan()
    load_before = _loadavg()
    cpu_before = cpu_times(watch_pids)
    started = dt.datetime.now(dt.UTC)
    samples = {}
    for role, endpoint in (("small", small), ("large", large)):
        samples[role] = await measure_server(
            endpoint,
            role,  # type: ignore[arg-type]
            plan,
            progress=progress,
            watch_pids=watch_pids,
        )
    extra = {
        "measured_at": started.isoformat(timespec="seconds"),
        "measure_seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
        "load_average": {"before": load_before, "after": _loadavg()},
        "plan": asdict(plan),
        **({"provenance": dict(provenance)} if provenance else {}),
    }
    contention = cpu_contention(cpu_before, cpu_times(watch_pids)) if watch_pids else None
    if contention is not None:
        extra["cpu_contention"] = contention
    return profile_from_samples(
        samples,
        name=name,
        description=description or f"small={small.model} at {small.base_url}, large={large.model} at {large.base_url}",
        models={"small": small.model, "large": large.model},
        extra=extra,
        statistic=plan.statistic,
    )


def cpu_times(pids: Sequence[int] = ()) -> dict[str, Any] | None:
    """CPU time counters (seconds) of the machine and of ``pids`` and this process (Linux ``/proc``; else ``None``).

    Returns:
        ``{"wall", "busy", "steal", "cores", "pids": {pid: seconds}, "self"}``.
    """
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        per_pid = {}
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parts = stat.rsplit(")", 1)[1].split()
            per_pid[str(pid)] = (int(parts[11]) + int(parts[12])) / tick  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = os.times()
    return {
        "wall": time.monotonic(),
        "busy": (user + nice + system + irq + softirq) / tick,
        "steal": steal / tick,
        "cores": os.cpu_count() or 1,
        "pids": per_pid,
        "self": own.user + own.system,
    }


def cpu_contention(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, float] | None:
    """How busy the cores were between two :func:`cpu_times` snapshots, and how much of it was other work.

    Returns:
        ``{"seconds", "servers_cores", "other_cores", "steal_cores", "cores"}``: mean cores busy with the
        watched processes, with everything else (other processes, not this one), and stolen by the hypervisor;
        ``None`` when a snapshot is missing or a watched process is gone.
    """
    if not before or not after or set(before["pids"]) != set(after["pids"]):
        return None
    seconds = after["wall"] - before["wall"]
    if seconds <= 0:
        return None
    servers = sum(after["pids"][p] - before["pids"][p] for p in after["pids"])
    own = after["self"] - before["self"]
    busy = after["busy"] - before["busy"]
    return {
        "seconds": round(seconds, 3),
        "servers_cores": round(servers / seconds, 3),
        "other_cores": round(max(0.0, busy - servers - own) / seconds, 3),
        "steal_cores": round((after["steal"] - before["steal"]) / seconds, 3),
        "cores": after["cores"],
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_measure_profile(small: Endpoint, large: Endpoint, **kwargs: Any) -> Profile:
    """Sync :func:`measure_profile`."""
    return asyncio.run(measure_profile(small, large, **kwargs))


# --------------------------------------------------------------------------- replaying recorded runs


@dataclass(frozen=True)
class Call:
    """One model call of a recorded run, as the replay rebuilds it.

    Attributes:
        role: The server called.
        kind: ``probe`` (GlimpRouter's glimpse), ``draft`` (a drafted step), ``judge`` (SpecReason's verdict),
            ``step`` (a step written) or ``final`` (the answer).
        new_prompt_tokens: Prompt tokens the server had not cached.
        generated_tokens: Tokens generated.
        logprobs: Whether the call asks for top-k log-probabilities.
        step: The step's index (``None`` for the final answer).
        position: Trace tokens before the end of the call's prompt (its prompt is the initial prompt and these;
            a judge's: where the judged step starts).
    """

    role: Role
    kind: CallKind
    new_prompt_tokens: int
    generated_tokens: int
    logprobs: bool
    step: int | None
    position: int = 0


class _Server:
    """A server's prefix cache during one run: how far along the trace it has read (``None``: not yet)."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.seen: int | None = None

    def new_tokens(self, position: int) -> int:
        """Prompt tokens up to trace ``position`` that the server has not read; it then holds ``position``."""
        new = (self.prompt_tokens if self.seen is None else 0) + max(0, position - (self.seen or 0))
        self.seen = position
        return new

    def read(self, position: int) -> int:
        """New prompt tokens of a call whose prompt ends at ``position`` (at least 1: the last one is read)."""
        return max(1, self.new_tokens(position))

    def keep(self, position: int) -> None:
        """The server's output up to ``position`` is the trace's (its generated tokens stay cached)."""
        self.seen = position


def _rejected_draft_tokens(record: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> list[int]:
    """Tokens of each rejected draft of a drafting strategy (the records keep only their sum).

    The small model's tokens of the run (``small_tokens``) are every draft's; the accepted ones are the small
    steps. The rest is spread evenly over the rejected (large) steps; the split does not change a prediction
    (a rejected draft's tokens are priced at one rate and leave nothing in the cache the run reuses).
    """
    rejected = [i for i, s in enumerate(steps) if s.get("model") == "large"]
    accepted = sum(int(s.get("tokens") or 0) for s in steps if s.get("model") == "small")
    final_small = int(record.get("final_tokens") or 0) if record.get("final_model") == "small" else 0
    total = max(0, int(record.get("small_tokens") or 0) - accepted - final_small)
    out = [0] * len(steps)
    for k, i in enumerate(rejected):
        out[i] = total // len(rejected) + (1 if k < total % len(rejected) else 0)
    return out


def glimpse_tokens(record: Mapping[str, Any]) -> int:
    """Tokens the probe of a GlimpRouter record glimpses (its strategy's ``glimpse``; 1 for the paper's)."""
    strategy = STRATEGIES.get(str(record.get("strategy")))
    return strategy.glimpse if strategy is not None else 1


def initial_prompt_tokens(record: Mapping[str, Any]) -> int | None:
    """The length of a run's initial prompt (system, instruction, question), from the prompt tokens it kept.

    Records written since ``RunStats`` counts them keep each model's prompt tokens summed over its calls
    (``small_prompt_tokens``, ``large_prompt_tokens``); every call's prompt is the initial prompt plus the trace
    up to the call's position, so the initial prompt is what is left over, per call. ``None`` for an older
    record (or one whose counts do not add up).
    """
    try:
        calls = _calls(record, 0)
    except ValueError:
        return None
    for role in ("small", "large"):
        total = record.get(f"{role}_prompt_tokens")
        mine = [c for c in calls if c.role == role]
        if not isinstance(total, int) or total <= 0 or not mine or any(c.kind == "judge" for c in mine):
            continue
        found = round((total - sum(c.position for c in mine)) / len(mine))
        return found if found > 0 else None
    return None


def trace_calls(
    record: Mapping[str, Any], *, prompt_tokens: int | None = None, restored: Collection[Role] = ()
) -> list[Call]:
    """Rebuild the calls of one recorded run from its steps, with each call's new prompt tokens.

    Rules (one per scorer; ``P_i`` is where step ``i`` starts in the trace, each earlier step's tokens plus a
    delimiter):

    * every server's first call in the run also reads the initial prompt (``prompt_tokens``: by default its
      length as the record keeps it, :func:`initial_prompt_tokens`, else :data:`PROMPT_TOKENS`);
    * a call reads the trace from where that server last stopped: a server that wrote the previous step reads
      only the delimiter (and always at least one token), one that did not reads what the other model wrote;
    * ``glimp``: a probe on the small server (``glimpse`` tokens, top-k log-probabilities); a small step
      continues from the glimpsed tokens, a large step writes from ``P_i``;
    * ``random`` and ``fixed`` (small-only, large-only): the chosen server writes the step from ``P_i``;
    * ``step-entropy`` / ``step-perplexity``: the small server drafts (with log-probabilities); an accepted
      draft is the step; a rejected one is rewritten by the large server;
    * ``specreason``: the small server drafts (without), the large server judges in a conversation of its own
      (the judge prompt repeats the question and the trace; each judge reads what is new since the last) with
      one token and log-probabilities, then the large server rewrites a rejected draft;
    * the final answer: the final model reads the end of the trace and the answer prefix.

    Args:
        record: An evaluation record with ``step_records``.
        prompt_tokens: The initial prompt's tokens, read by each server's first call (``None``: see above).
        restored: Servers that hold the initial prompt already when the run starts (see
            :func:`restored_prompts`): their first call reads only what follows it.

    Returns:
        The calls in order.

    Raises:
        ValueError: The record has no steps to replay or an unknown scorer.
    """
    if prompt_tokens is None:
        prompt_tokens = initial_prompt_tokens(record) or PROMPT_TOKENS
    return _calls(record, prompt_tokens, restored)


def _calls(record: Mapping[str, Any], prompt_tokens: int, restored: Collection[Role] = ()) -> list[Call]:
    steps = record.get("step_records")
    if not isinstance(steps, list):
        raise ValueError(f"record {record.get('job')!r} / {record.get('id')!r} keeps no step_records to replay")
    scorer = str(record.get("scorer") or "")
    if scorer not in ("glimp", "fixed", "random", "step-entropy", "step-perplexity", "specreason"):
        raise ValueError(f"record {record.get('job')!r} / {record.get('id')!r}: unknown scorer {scorer!r}")
    servers = {role: _Server(0 if role in restored else prompt_tokens) for role in ("small", "large")}
    # SpecReason's judge: a conversation of its own (the question again, after the judge's own header)
    judge = _Server(max(1, prompt_tokens - (PROMPT_TOKENS - QUESTION_TOKENS)) + JUDGE_HEAD_TOKENS)
    glimpse = glimpse_tokens(record)
    drafts = (
        _rejected_draft_tokens(record, steps) if scorer in ("step-entropy", "step-perplexity", "specreason") else []
    )
    calls: list[Call] = []
    start = 0
    for i, step in enumerate(steps):
        role: Role = "large" if step.get("model") == "large" else "small"
        n = int(step.get("tokens") or 0)
        small, large = servers["small"], servers["large"]
        if scorer == "glimp":
            g = min(glimpse, n) if role == "small" else glimpse
            calls.append(Call("small", "probe", small.read(start), max(1, g), True, i, start))
            if role == "small":
                small.keep(start + g)
                if n > g:
                    calls.append(Call("small", "step", small.read(start + g), n - g, False, i, start + g))
                    small.keep(start + n)
            else:
                calls.append(Call("large", "step", large.read(start), n, False, i, start))
                large.keep(start + n)
        elif scorer in ("fixed", "random"):
            server = servers[role]
            calls.append(Call(role, "step", server.read(start), n, False, i, start))
            server.keep(start + n)
        else:
            draft = n if role == "small" else drafts[i]
            calls.append(Call("small", "draft", small.read(start), draft, scorer != "specreason", i, start))
            if role == "small":
                small.keep(start + n)
            if scorer == "specreason":
                new = judge.new_tokens(start) + draft + JUDGE_TAIL_TOKENS
                calls.append(Call("large", "judge", new, 1, True, i, start))
            if role == "large":
                calls.append(Call("large", "step", large.read(start), n, False, i, start))
                large.keep(start + n)
        start += n + DELIMITER_TOKENS
    end = max(0, start - DELIMITER_TOKENS) + ANSWER_PREFIX_TOKENS
    final: Role = "small" if record.get("final_model") == "small" else "large"
    final_tokens = int(record.get("final_tokens") or 0)
    calls.append(Call(final, "final", servers[final].read(end), final_tokens, False, None, end))
    return calls


def restored_prompts(records: Sequence[Mapping[str, Any]]) -> list[frozenset[Role]]:
    """Which servers found each run's initial prompt in llama.cpp's prompt cache in RAM, record by record.

    ``bench/run_report.py`` and ``bench/cost_model.py`` run every job on a problem before the next problem and
    point both servers' caches elsewhere before each run, so a run's first call should read its whole prompt.
    But llama.cpp's server saves the state it drops into a prompt cache in RAM and restores the saved prompt that
    best matches a new one, when the new prompt keeps at least :data:`LLAMA_CPP_KEEP` of it: a later job on the
    same problem finds the prompt an earlier job left there whenever that job's context on the server was at
    most four times the prompt. This replays that rule over the records in their order (earlier runs of the
    same problem in the same block of records; the cache's size limit is not modelled).

    Returns:
        One set per record (empty for a record that cannot be replayed).
    """
    out: list[frozenset[Role]] = []
    states: dict[str, list[int]] = {"small": [], "large": []}
    last = None
    for record in records:
        if record.get("id") != last:
            states, last = {"small": [], "large": []}, record.get("id")
        if record.get("error") or not isinstance(record.get("step_records"), list):
            out.append(frozenset())
            continue
        p0 = initial_prompt_tokens(record) or PROMPT_TOKENS
        held = [role for role, lengths in states.items() if any(p0 >= LLAMA_CPP_KEEP * n for n in lengths)]
        out.append(frozenset(held))  # type: ignore[arg-type]
        try:
            calls = _calls(record, p0)
        except ValueError:
            continue
        for role in ("small", "large"):
            mine = [c for c in calls if c.role == role and c.kind != "judge"]
            if mine:  # the context the run leaves on the server, saved when the next run's flush arrives
                states[role].append(p0 + mine[-1].position + mine[-1].generated_tokens)
    return out


@dataclass(frozen=True)
class Prediction:
    """A run's predicted time, in all and by kind of call (``probe`` counts drafts and judges too)."""

    seconds: float
    probes: float
    steps: float
    final: float


def predict_calls(calls: Iterable[Call], profile: Profile, *, call_overhead_s: float = 0.0) -> Prediction:
    """Price ``calls`` under ``profile`` (``call_overhead_s`` added to every call)."""
    parts = {"probe": 0.0, "step": 0.0, "final": 0.0}
    for c in calls:
        t = profile.server(c.role).cost(logprobs=c.logprobs).seconds(c.new_prompt_tokens, c.generated_tokens)
        parts["probe" if c.kind in ("probe", "draft", "judge") else c.kind] += t + call_overhead_s
    return Prediction(math.fsum(parts.values()), parts["probe"], parts["step"], parts["final"])


def predict_record(
    record: Mapping[str, Any],
    profile: Profile,
    *,
    prompt_tokens: int | None = None,
    call_overhead_s: float = 0.0,
    restored: Collection[Role] = (),
) -> Prediction:
    """The predicted latency of a recorded run under ``profile`` (see :func:`trace_calls` for the rules)."""
    calls = trace_calls(record, prompt_tokens=prompt_tokens, restored=restored)
    return predict_calls(calls, profile, call_overhead_s=call_overhead_s)


def ideal_seconds(
    record: Mapping[str, Any],
    profile: Profile,
    *,
    prompt_tokens: int | None = None,
    call_overhead_s: float = 0.0,
) -> float:
    """The same steps at each model's standalone speed, with no probe and no switching cost.

    Each step is priced as in a run its model wrote alone (it reads only the delimiter; the first step also
    reads the initial prompt, see :func:`trace_calls`), the final answer as the final model's standalone answer.
    """
    if prompt_tokens is None:
        prompt_tokens = initial_prompt_tokens(record) or PROMPT_TOKENS
    steps = record.get("step_records") or []
    total = 0.0
    for i, step in enumerate(steps):
        role: Role = "large" if step.get("model") == "large" else "small"
        new = max(1, prompt_tokens) if i == 0 else 1
        total += profile.server(role).plain.seconds(new, int(step.get("tokens") or 0)) + call_overhead_s
    final: Role = "small" if record.get("final_model") == "small" else "large"
    new = (prompt_tokens if not steps else 0) + ANSWER_PREFIX_TOKENS
    return total + profile.server(final).plain.seconds(new, int(record.get("final_tokens") or 0)) + call_overhead_s


def replayable(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records a replay can use: no error, steps kept."""
    return [r for r in records if not r.get("error") and isinstance(r.get("step_records"), list)]


# --------------------------------------------------------------------------- validation and projection


@dataclass(frozen=True)
class JobCheck:
    """Predicted against measured latency of one job (see :func:`validate`).

    Attributes:
        job: The job's label.
        n: Runs compared.
        measured_median_s: Median measured latency per problem.
        predicted_median_s: Median predicted latency per problem.
        measured_total_s: Sum of measured latencies.
        predicted_total_s: Sum of predicted latencies.
        measured_parts_s: Measured seconds by part (``probes``, ``steps``, ``final``, ``other``), summed.
        predicted_parts_s: Predicted seconds by part, summed.
        median_abs_rel_error: Median over problems of ``|predicted - measured| / measured``.
    """

    job: str
    n: int
    measured_median_s: float
    predicted_median_s: float
    measured_total_s: float
    predicted_total_s: float
    measured_parts_s: dict[str, float]
    predicted_parts_s: dict[str, float]
    median_abs_rel_error: float

    @property
    def median_error(self) -> float:
        """``predicted / measured - 1`` of the medians."""
        return self.predicted_median_s / self.measured_median_s - 1

    @property
    def total_error(self) -> float:
        """``predicted / measured - 1`` of the totals."""
        return self.predicted_total_s / self.measured_total_s - 1


def _restored(records: Sequence[Mapping[str, Any]], prompt_cache: PromptCache) -> dict[int, frozenset[Role]]:
    if prompt_cache == "run":
        return {}
    if prompt_cache != "llama.cpp":
        raise ValueError(f"prompt_cache must be 'run' or 'llama.cpp', got {prompt_cache!r}")
    return {id(r): roles for r, roles in zip(records, restored_prompts(records), strict=True)}


def _jobs_in_order(records: Iterable[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(r["job"]) for r in records))


def validate(
    records: Iterable[Mapping[str, Any]],
    profile: Profile,
    *,
    prompt_tokens: int | None = None,
    where: Callable[[Mapping[str, Any]], bool] | None = None,
    prompt_cache: PromptCache = "run",
) -> list[JobCheck]:
    """Replay every run of every job under ``profile`` and compare with the latency the record measured.

    Args:
        records: Evaluation records, in the order they were measured (errors and records without steps are left
            out).
        profile: The profile of the machine the records were measured on.
        prompt_tokens: See :func:`trace_calls`.
        where: Only the runs it is true of (``None``: all); the others still fill the servers' caches.
        prompt_cache: ``"run"``: every run reads its whole prompt; ``"llama.cpp"``: as llama.cpp's prompt cache in
            RAM restored it for later jobs on the same problem (:func:`restored_prompts`).

    Returns:
        One :class:`JobCheck` per job, in the records' order.
    """
    records = list(records)
    restored = _restored(records, prompt_cache)
    usable = [r for r in replayable(records) if where is None or where(r)]
    out = []
    for job in _jobs_in_order(usable):
        runs = [r for r in usable if r["job"] == job]
        measured, predicted, errors = [], [], []
        m_parts = {"probes": 0.0, "steps": 0.0, "final": 0.0, "other": 0.0}
        p_parts = {"probes": 0.0, "steps": 0.0, "final": 0.0}
        for r in runs:
            p = predict_record(r, profile, prompt_tokens=prompt_tokens, restored=restored.get(id(r), ()))
            latency = float(r["latency_s"])
            measured.append(latency)
            predicted.append(p.seconds)
            errors.append(abs(p.seconds - latency) / latency)
            steps = math.fsum(float(s.get("seconds") or 0) for s in r["step_records"])
            probes, final = float(r.get("probe_seconds") or 0), float(r.get("final_seconds") or 0)
            m_parts["probes"] += probes
            m_parts["steps"] += steps
            m_parts["final"] += final
            m_parts["other"] += latency - probes - steps - final
            p_parts["probes"] += p.probes
            p_parts["steps"] += p.steps
            p_parts["final"] += p.final
        out.append(
            JobCheck(
                job=job,
                n=len(runs),
                measured_median_s=statistics.median(measured),
                predicted_median_s=statistics.median(predicted),
                measured_total_s=math.fsum(measured),
                predicted_total_s=math.fsum(predicted),
                measured_parts_s=m_parts,
                predicted_parts_s=p_parts,
                median_abs_rel_error=statistics.median(errors),
            )
        )
    return out


@dataclass(frozen=True)
class JobProjection:
    """One job's latency projected under a profile, beside large-only's and the ideal mix's.

    Attributes:
        job: The job's label.
        n: Problems projected (those large-only ran too).
        median_s: Median projected latency per problem.
        total_s: Sum of projected latencies.
        ratio_median: Median over problems of the projected latency / large-only's projected latency.
        ratio_total: Projected total / large-only's projected total.
        ideal_ratio_median: The same for the ideal mix (the job's steps at standalone speeds, no switching).
        ideal_ratio_total: Ideal total / large-only's projected total.
        recorded_ratio_median: The median ratio the records measured (on their own machine).
    """

    job: str
    n: int
    median_s: float
    total_s: float
    ratio_median: float
    ratio_total: float
    ideal_ratio_median: float
    ideal_ratio_total: float
    recorded_ratio_median: float | None


def project(
    records: Iterable[Mapping[str, Any]],
    profile: Profile,
    *,
    prompt_tokens: int | None = None,
    call_overhead_s: float = 0.0,
    prompt_cache: PromptCache = "run",
) -> list[JobProjection]:
    """Replay each job's recorded routing under ``profile``: its latency and its ratio to large-only.

    Args:
        records: Evaluation records; they must include the ``large-only`` job (the reference).
        profile: The hardware profile to project onto.
        prompt_tokens: See :func:`trace_calls`.
        call_overhead_s: Seconds added to every call (e.g. a serving engine's per-request cost that a
            kernel-floor profile leaves out).
        prompt_cache: See :func:`validate`. ``"run"`` (the default) prices every run's prompt as a new question
            would be: a deployment does not see the same question once per strategy.

    Returns:
        One :class:`JobProjection` per job (large-only's included), in the records' order.

    Raises:
        ValueError: No replayable ``large-only`` record.
    """
    records = list(records)
    restored = _restored(records, prompt_cache)
    usable = replayable(records)
    reference = {str(r["id"]): r for r in usable if r.get("strategy") == "large-only"}
    if not reference:
        raise ValueError(
            "the results have no large-only runs to compare with; run glimp eval with large-only among --strategies"
        )
    kw = {"prompt_tokens": prompt_tokens, "call_overhead_s": call_overhead_s}
    ref_seconds = {
        i: predict_record(r, profile, restored=restored.get(id(r), ()), **kw).seconds  # type: ignore[arg-type]
        for i, r in reference.items()
    }
    out = []
    for job in _jobs_in_order(usable):
        runs = [r for r in usable if r["job"] == job and str(r["id"]) in reference]
        if not runs:
            continue
        seconds = [
            predict_record(r, profile, restored=restored.get(id(r), ()), **kw).seconds  # type: ignore[arg-type]
            for r in runs
        ]
        ideal = [ideal_seconds(r, profile, **kw) for r in runs]  # type: ignore[arg-type]
        refs = [ref_seconds[str(r["id"])] for r in runs]
        recorded = [
            float(r["latency_s"]) / float(reference[str(r["id"])]["latency_s"])
            for r in runs
            if r.get("latency_s") and reference[str(r["id"])].get("latency_s")
        ]
        out.append(
            JobProjection(
                job=job,
                n=len(runs),
                median_s=statistics.median(seconds),
                total_s=math.fsum(seconds),
                ratio_median=statistics.median(s / ref for s, ref in zip(seconds, refs, strict=True)),
                ratio_total=math.fsum(seconds) / math.fsum(refs),
                ideal_ratio_median=statistics.median(s / ref for s, ref in zip(ideal, refs, strict=True)),
                ideal_ratio_total=math.fsum(ideal) / math.fsum(refs),
                recorded_ratio_median=statistics.median(recorded) if recorded else None,
            )
        )
    return out


# --------------------------------------------------------------------------- text


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def profile_table(profile: Profile) -> str:
    """A Markdown table of a profile's rates (ms) and, for a measured one, each fit's R^2 and worst residual."""
    lines = [
        "| server | model | calls | overhead (ms) | prefill (ms / new prompt token) | decode (ms / generated token) "
        "| fit R^2 | worst cell residual |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fits = profile.extra.get("fits", {})
    for role in ("small", "large"):
        server = profile.server(role)  # type: ignore[arg-type]
        for kind, cost in (("plain", server.plain), ("logprobs", server.logprobs)):
            if cost is None:
                continue
            fit = fits.get(role, {}).get(kind) if isinstance(fits.get(role), dict) else None
            r2 = f"{fit['r2']:.4f}" if isinstance(fit, dict) and "r2" in fit else "n/a"
            worst = f"{fit['max_rel_residual']:.1%}" if isinstance(fit, dict) and "max_rel_residual" in fit else "n/a"
            lines.append(
                f"| {role} | {server.model} | {kind} | {_ms(cost.overhead_s)} | {cost.prefill_s_per_token * 1000:.3f} "
                f"| {_ms(cost.decode_s_per_token)} | {r2} | {worst} |"
            )
    return "\n".join(lines) + "\n"


def validation_table(checks: Sequence[JobCheck], *, tolerance: float = 0.10) -> str:
    """A Markdown table of predicted against measured latency per job (median per problem and total)."""
    lines = [
        "| job | n | measured median (s) | predicted median (s) | error | measured total (s) | predicted total (s) "
        f"| error | within {tolerance:.0%} | per-problem error (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        ok = abs(c.median_error) <= tolerance and abs(c.total_error) <= tolerance
        lines.append(
            f"| {c.job} | {c.n} | {c.measured_median_s:.2f} | {c.predicted_median_s:.2f} | {c.median_error:+.1%} "
            f"| {c.measured_total_s:.1f} | {c.predicted_total_s:.1f} | {c.total_error:+.1%} | "
            f"{'yes' if ok else 'NO'} | {c.median_abs_rel_error:.1%} |"
        )
    return "\n".join(lines) + "\n"


def parts_table(checks: Sequence[JobCheck]) -> str:
    """A Markdown table of measured and predicted seconds by part (probes and drafts, steps, final answer)."""
    lines = [
        "| job | probes+drafts+judges measured / predicted (s) | steps measured / predicted (s) "
        "| final answer measured / predicted (s) | outside calls, measured (s) |",
        "|---|---|---|---|---|",
    ]
    for c in checks:
        m, p = c.measured_parts_s, c.predicted_parts_s
        lines.append(
            f"| {c.job} | {m['probes']:.1f} / {p['probes']:.1f} | {m['steps']:.1f} / {p['steps']:.1f} "
            f"| {m['final']:.1f} / {p['final']:.1f} | {m['other']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def projection_table(rows: Sequence[JobProjection]) -> str:
    """A Markdown table of projected latencies and ratios to large-only, the ideal mix beside them."""
    lines = [
        "| job | n | projected median (s) | projected total (s) | / large-only: median per problem | ratio of totals "
        "| ideal mix / large-only: median | ideal mix: ratio of totals | as recorded (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        recorded = f"{r.recorded_ratio_median:.2f}" if r.recorded_ratio_median is not None else "n/a"
        lines.append(
            f"| {r.job} | {r.n} | {r.median_s:.3f} | {r.total_s:.1f} | {r.ratio_median:.2f} | {r.ratio_total:.2f} "
            f"| {r.ideal_ratio_median:.2f} | {r.ideal_ratio_total:.2f} | {recorded} |"
        )
    return "\n".join(lines) + "\n"
