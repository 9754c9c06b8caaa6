"""What a face reports about its runs: Prometheus metrics and one structured log line per run.

The graph-level numbers (steps by model, H_init, probe time, tokens, the large-step share) are read from the
graph's own records, here and nowhere else: a :class:`~glimp_graph.state.Step` (``glimp_steps``, or a
``{"type": "step"}`` custom event) and a :class:`~glimp_graph.state.RunStats` (``glimp_stats``, or the
``{"type": "final"}`` event). A face makes one :class:`RunObserver` per request, feeds it the graph's output
(:meth:`RunObserver.output`) or its stream events (:meth:`RunObserver.event`) and a failure if there is one, and
calls :meth:`RunObserver.finish` once: the run's metrics are counted and its log line is written to the logger
``glimp_graph.access`` (:data:`ACCESS_LOGGER`; :class:`JsonFormatter` writes it as one JSON object).

The metric families (:class:`GlimpMetrics`), all prefixed ``glimp_``:

========================================  =========  ===================================================
name                                      type       labels / unit
========================================  =========  ===================================================
``glimp_http_requests_total``             counter    ``endpoint`` (route path), ``status`` (HTTP)
``glimp_errors_total``                    counter    ``kind`` (input, auth, upstream, timeout, internal,
                                                     cancelled), ``role`` (small, large, "")
``glimp_steps_total``                     counter    ``model`` (small, large)
``glimp_tokens_total``                    counter    ``model``, ``kind`` (completion, prompt)
``glimp_small_fallbacks_total``           counter    runs that dropped the small model and went on
``glimp_h_init_nats``                     histogram  entropy of each step's probe, nats
``glimp_probe_seconds``                   histogram  each probe that called a model
``glimp_run_large_share``                 histogram  share of a run's steps written by the large model
``glimp_run_seconds``                     histogram  ``mode`` (plain, stream), ``outcome`` (ok, error,
                                                     cancelled): request received to last byte
``glimp_first_token_seconds``             histogram  streams: request received to the first answer text
========================================  =========  ===================================================

Several processes (uvicorn workers) write one set of metrics with prometheus-client's multiprocess mode: set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before ``prometheus_client`` is first imported, and give the
same folder to :class:`GlimpMetrics` (``multiprocess_dir``), which then reports the sum over every process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

from glimp_graph.errors import EndpointError, InputError
from glimp_graph.state import RunStats, Step

ACCESS_LOGGER = "glimp_graph.access"
"""The logger that gets one record per run (level INFO); its fields are the record's ``glimp_run`` attribute."""

H_INIT_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
"""Buckets of ``glimp_h_init_nats``: the entropy of a top-20 distribution is at most ln 20 = 3.0 nats."""
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SHARE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RUN_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

ERROR_KINDS = ("input", "auth", "upstream", "timeout", "internal", "cancelled")
"""The ``kind`` label of ``glimp_errors_total``."""

CANCELLED = 499
"""The status a run ends with when its client went away (nginx's convention; never sent)."""


def multiprocess_mode() -> bool:
    """Whether prometheus-client keeps its values in ``PROMETHEUS_MULTIPROC_DIR`` (chosen when it was imported)."""
    return bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))


class GlimpMetrics:
    """The Prometheus metric families of GlimpRouter runs, in one registry (see the module docstring).

    Args:
        registry: Where the families are registered (default: a new registry, so two apps in one process count
            apart).
        multiprocess_dir: The ``PROMETHEUS_MULTIPROC_DIR`` of a multi-process server: :meth:`render` then
            reports the sum over every process that writes there.

    Raises:
        ValueError: ``multiprocess_dir`` is given but prometheus-client is not in multiprocess mode.

    """

    def __init__(self, registry: CollectorRegistry | None = None, *, multiprocess_dir: str | Path | None = None):
        if multiprocess_dir is not None and not multiprocess_mode():
            raise ValueError(
                f"multiprocess_dir={str(multiprocess_dir)!r}, but prometheus_client is not in multiprocess mode: "
                "set PROMETHEUS_MULTIPROC_DIR to that folder before prometheus_client is first imported"
            )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = Path(multiprocess_dir) if multiprocess_dir is not None else None
        into = {"registry": self.registry}
        self.requests = Counter(
            "glimp_http_requests", "HTTP requests by route and status.", ["endpoint", "status"], **into
        )
        self.errors = Counter(
            "glimp_errors", "Failed or refused runs by kind, and the model endpoint at fault.", ["kind", "role"], **into
        )
        self.steps = Counter("glimp_steps", "Reasoning steps by the model that wrote them.", ["model"], **into)
        self.tokens = Counter(
            "glimp_tokens", "Tokens by model: completion (generated) and prompt.", ["model", "kind"], **into
        )
        self.small_fallbacks = Counter(
            "glimp_small_fallbacks", "Runs that dropped the failing small model and went on with the large one.", **into
        )
        self.h_init = Histogram(
            "glimp_h_init_nats", "Entropy of each step's probe (H_init), nats.", buckets=H_INIT_BUCKETS, **into
        )
        self.probe_seconds = Histogram(
            "glimp_probe_seconds", "Wall time of each probe that called a model.", buckets=PROBE_BUCKETS, **into
        )
        self.large_share = Histogram(
            "glimp_run_large_share", "Share of a run's steps written by the large model.", buckets=SHARE_BUCKETS, **into
        )
        self.run_seconds = Histogram(
            "glimp_run_seconds",
            "Run latency: request received to last byte sent.",
            ["mode", "outcome"],
            buckets=RUN_BUCKETS,
            **into,
        )
        self.first_token_seconds = Histogram(
            "glimp_first_token_seconds",
            "Streams: request received to the first text (or tool call) of the answer.",
            buckets=FIRST_TOKEN_BUCKETS,
            **into,
        )

    def request(self, endpoint: str, status: int) -> None:
        """Count one HTTP request to ``endpoint`` (a route path, never a raw URL) answered with ``status``."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type (all processes in multiprocess mode)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- errors


def _timed_out(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError | httpx.TimeoutException | openai.APITimeoutError):
            return True
        current = current.__cause__ or current.__context__
    return False


def error_kind(exc: BaseException) -> tuple[str, str]:
    """The ``kind`` and ``role`` labels of a failure.

    ``input`` for a bad input (the prompt too long for a model's context included: its role is named), ``timeout``
    for a model endpoint that did not answer in time, ``upstream`` for any other endpoint failure, ``internal``
    for anything else.

    Args:
        exc: What the run raised.

    Returns:
        ``(kind, role)``; ``role`` is ``"small"`` / ``"large"`` for an endpoint's failure, else ``""``.

    """
    role = str(getattr(exc, "role", "") or "") if isinstance(exc, EndpointError) else ""
    if isinstance(exc, InputError):
        return "input", role
    if isinstance(exc, EndpointError):
        return ("timeout" if _timed_out(exc) else "upstream"), role
    if isinstance(exc, TimeoutError):
        return "timeout", ""
    return "internal", ""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (a token, an API key) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# --------------------------------------------------------------------------- one run


def _finite(value: float | None) -> float | str | None:
    """A float for JSON: non-finite values (``tau=inf``) as the strings "inf", "-inf", "nan"."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


class RunObserver:
    """One request's run as a face sees it: its steps and statistics, its failure, its timing.

    Feed it the graph's records, then call :meth:`finish` once (a ``finally`` is the place): the run's metrics are
    counted and its log line written. Only this class reads :class:`~glimp_graph.state.Step` and
    :class:`~glimp_graph.state.RunStats` for metrics and logs.

    Args:
        metrics: Where to count (``None``: only the log line).
        request_id: The request's id (the completion's ``id``).
        thread_id: The conversation the request belongs to, as its client names it (``None``: not given).
        secrets: Strings that must never appear in a log line (tokens, API keys); replaced by ``***``.
        logger: Where the log line goes (default :data:`ACCESS_LOGGER`).

    """

    def __init__(
        self,
        metrics: GlimpMetrics | None,
        *,
        request_id: str,
        thread_id: str | None = None,
        secrets: Iterable[str] = (),
        logger: logging.Logger | None = None,
    ) -> None:
        self.metrics = metrics
        self.request_id = request_id
        self.thread_id = thread_id
        self.secrets = tuple(s for s in secrets if s)
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self.started = time.monotonic()
        self.began = False
        self.model: str | None = None
        self.stream = False
        self.tau: float | None = None
        self.steps: list[Step] = []
        self.stats: RunStats | None = None
        self.first_token: float | None = None
        self.status: int | None = None
        self.error: tuple[str, str, str] | None = None
        self.finished: dict[str, Any] | None = None

    # -- the run's settings -------------------------------------------------------------------------------
    def begin(self, *, model: str, stream: bool, tau: float | None = None) -> None:
        """The request was accepted and the graph runs: ``model`` as the answer names it, its threshold if set."""
        self.began, self.model, self.stream, self.tau = True, model, stream, tau

    # -- the graph's records ------------------------------------------------------------------------------
    def step(self, step: Step | Mapping[str, Any]) -> None:
        """A step the graph wrote (a :class:`Step`, or a ``{"type": "step"}`` event)."""
        step = step if isinstance(step, Step) else Step.model_validate(step)
        self.steps.append(step)
        if self.metrics is None:
            return
        self.metrics.steps.labels(model=step.model).inc()
        if step.h_init is not None and math.isfinite(step.h_init):
            self.metrics.h_init.observe(step.h_init)
        if step.probe_seconds > 0:
            self.metrics.probe_seconds.observe(step.probe_seconds)

    def final(self, stats: RunStats | Mapping[str, Any]) -> None:
        """The run's statistics (a :class:`RunStats`, or the ``stats`` of the ``{"type": "final"}`` event)."""
        stats = stats if isinstance(stats, RunStats) else RunStats.model_validate(stats)
        self.stats = stats
        if self.metrics is None:
            return
        if stats.steps:
            self.metrics.large_share.observe(stats.large_share)
        for role in ("small", "large"):
            completion = stats.small_tokens if role == "small" else stats.large_tokens
            prompt = stats.small_prompt_tokens if role == "small" else stats.large_prompt_tokens
            self.metrics.tokens.labels(model=role, kind="completion").inc(completion)
            self.metrics.tokens.labels(model=role, kind="prompt").inc(prompt)
        if stats.small_failure:
            self.metrics.small_fallbacks.inc()

    def output(self, result: Mapping[str, Any]) -> None:
        """The graph's output (``glimp_steps`` and ``glimp_stats``)."""
        for step in result.get("glimp_steps") or []:
            self.step(step)
        if result.get("glimp_stats") is not None:
            self.final(result["glimp_stats"])

    def event(self, event: Mapping[str, Any]) -> None:
        """A custom stream event of the graph (``stream_mode="custom"``): steps, answer text, the final record."""
        kind = event.get("type")
        if kind == "step":
            self.step(event)
        elif kind == "answer" and str(event.get("delta") or "").strip():
            self.answer_started()
        elif kind == "final":
            if event.get("answer") or event.get("tool_calls") or event.get("invalid_tool_calls"):
                self.answer_started()
            self.final(event["stats"])

    def answer_started(self) -> None:
        """The first text of the answer is out (kept once; a stream's time to first token)."""
        if self.first_token is None:
            self.first_token = time.monotonic() - self.started
            if self.metrics is not None and self.stream:
                self.metrics.first_token_seconds.observe(self.first_token)

    # -- how it ended -------------------------------------------------------------------------------------
    def fail(self, exc: BaseException | None, status: int, *, kind: str | None = None, message: str = "") -> None:
        """The run failed (or the request was refused) with HTTP ``status``.

        Args:
            exc: What was raised (its kind is :func:`error_kind`'s), or ``None`` with ``kind``.
            status: The HTTP status the client got (in a stream: the error event's code).
            kind: The error kind when there is no exception (a refused request: ``input``, ``auth``).
            message: The error's message (default: the exception's), redacted in the log line.

        """
        found, role = error_kind(exc) if exc is not None else ("internal", "")
        self.status = status
        self.error = (kind or found, role, message or (str(exc) if exc is not None else ""))

    def finish(self) -> dict[str, Any]:
        """Count the run and write its log line, once; later calls return the same record.

        The outcome: the failure given to :meth:`fail`, else ``ok`` (200) when the final record came, else
        ``cancelled`` (status 499: the client went away, or the server stopped, before the answer).

        Returns:
            The log line's fields.

        """
        if self.finished is not None:
            return self.finished
        latency = time.monotonic() - self.started
        if self.error is None and self.stats is None:
            self.fail(None, CANCELLED, kind="cancelled", message="the run ended before its answer")
        outcome = "ok" if self.error is None else ("cancelled" if self.error[0] == "cancelled" else "error")
        if self.metrics is not None:
            if self.began:
                mode = "stream" if self.stream else "plain"
                self.metrics.run_seconds.labels(mode=mode, outcome=outcome).observe(latency)
            if self.error is not None:
                self.metrics.errors.labels(kind=self.error[0], role=self.error[1]).inc()
        self.finished = self._record(latency, outcome)
        self.logger.info(_text_line(self.finished), extra={"glimp_run": self.finished})
        return self.finished

    def _record(self, latency: float, outcome: str) -> dict[str, Any]:
        stats, steps = self.stats, self.steps
        tau = stats.tau if stats is not None else (steps[-1].tau if steps else self.tau)
        kind, role, message = self.error or (None, None, None)
        record: dict[str, Any] = {
            "event": "run",
            "request_id": self.request_id,
            "thread_id": self.thread_id,
            "pid": os.getpid(),
            "model": self.model,
            "stream": self.stream,
            "tau": _finite(tau),
            "status": self.status or 200,
            "outcome": outcome,
            "error_kind": kind,
            "error_role": role or None,
            "error": redact(message, self.secrets)[:500] if message else None,
            "steps": stats.steps if stats is not None else len(steps),
            "small_steps": stats.small_steps if stats is not None else sum(s.model == "small" for s in steps),
            "large_steps": stats.large_steps if stats is not None else sum(s.model == "large" for s in steps),
            "small_tokens": stats.small_tokens if stats is not None else None,
            "large_tokens": stats.large_tokens if stats is not None else None,
            "prompt_tokens": stats.small_prompt_tokens + stats.large_prompt_tokens if stats is not None else None,
            "final_tokens": stats.final_tokens if stats is not None else None,
            "tool_calls": stats.tool_calls if stats is not None else None,
            "stop_reason": stats.stop_reason if stats is not None else None,
            "small_failure": redact(stats.small_failure, self.secrets) if stats and stats.small_failure else None,
            "probe_seconds": round(stats.probe_seconds, 6) if stats is not None else None,
            "latency_seconds": round(latency, 6),
            "first_token_seconds": round(self.first_token, 6) if self.first_token is not None else None,
        }
        return record


def _text_line(record: Mapping[str, Any]) -> str:
    """The run's log line for people: ``run <id> <status> <outcome> key=value ...`` (no secrets: see redact)."""
    head = f"run {record['request_id']} {record['status']} {record['outcome']}"
    keys = ("thread_id", "model", "tau", "steps", "small_steps", "large_steps", "latency_seconds", "error_kind")
    fields = " ".join(f"{k}={record[k]!r}" if isinstance(record[k], str) else f"{k}={record[k]}" for k in keys)
    error = f" error={record['error']!r}" if record.get("error") else ""
    return f"{head} {fields}{error}"


# --------------------------------------------------------------------------- logs


class JsonFormatter(logging.Formatter):
    """Each log record as one JSON object on one line.

    The keys: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, then either the run's fields (a record of
    :data:`ACCESS_LOGGER`) or ``message`` (and ``exc``, a traceback, when there is one). Non-finite floats are
    written as strings (``"inf"``), so every line is strict JSON.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "glimp_run", None)
        if isinstance(fields, Mapping):
            payload.update(fields)
        else:
            payload["message"] = record.getMessage()
            if record.exc_info:
                payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(_json_safe(payload), ensure_ascii=False, allow_nan=False, default=str)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def log_config(log_format: str, *, level: str = "WARNING") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for a server: the run lines and the server's messages, on stderr.

    The lines of :data:`ACCESS_LOGGER`, plus ``glimp_graph``'s and uvicorn's messages at ``level`` or above, all
    in one format.

    Args:
        log_format: ``"json"`` (:class:`JsonFormatter`, one object a line) or ``"text"``.
        level: The level of every logger but the access logger (INFO).

    Returns:
        The configuration (uvicorn's ``log_config`` takes it; each worker applies it).

    Raises:
        ValueError: ``log_format`` is neither.

    """
    if log_format == "json":
        formatter: dict[str, Any] = {"()": f"{__name__}.JsonFormatter"}
    elif log_format == "text":
        formatter = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    else:
        raise ValueError(f"log_format must be 'json' or 'text', got {log_format!r}")
    handler = {"class": "logging.StreamHandler", "formatter": "glimp", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["glimp"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"glimp": formatter},
        "handlers": {"glimp": handler},
        "loggers": {
            "glimp_graph": quiet,
            ACCESS_LOGGER: {"handlers": ["glimp"], "level": "INFO", "propagate": False},
            "uvicorn": quiet,
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": False},
        },
    }
