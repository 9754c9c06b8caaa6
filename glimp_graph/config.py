"""Settings: the router's own settings (a server is described by :class:`~glimp_graph.endpoints.Endpoint`).

Everything is a frozen pydantic model validated when the graph is built, so a bad value fails early with a
message naming it. Nothing here reads environment variables: the CLI and the examples do that.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import TypedDict

from glimp_graph.endpoints import Role
from glimp_graph.entropy import ESTIMATORS
from glimp_graph.prompts import PRESETS, PromptTemplate
from glimp_graph.scorers import SCORERS, Scorer
from glimp_graph.tool_calls import check_tools


class GlimpConfig(BaseModel):
    """The router's settings (defaults follow the GlimpRouter authors' code).

    Attributes:
        tau: Entropy threshold in nats; a step whose probe entropy is ``<= tau`` is written by the small model.
            ``inf`` sends every step to the small model, ``-inf`` every step to the large one.
        top_k: Log-probabilities asked for the probe token (``-1``: the whole vocabulary, vLLM only).
        estimator: Entropy estimator: a name from :data:`glimp_graph.entropy.ESTIMATORS` or a callable
            ``(logprobs, *, vocab_size) -> float``.
        vocab_size: The small model's vocabulary size (needed by the ``upper`` estimator).
        delimiter: The text that ends a step.
        max_step_tokens: Token cap of one step.
        max_thinking_tokens: Token budget of the reasoning: the tokens of the steps in the trace (a reused probe
            token counts; probes thrown away do not).
        max_steps: Step budget of the reasoning.
        final_max_tokens: Token cap of the final answer.
        stop_on_repeat: End the reasoning when a step repeats the previous one.
        reuse_probe_token: The small step continues from the probed token instead of decoding it again.
        prompt: A :class:`~glimp_graph.prompts.PromptTemplate` or a preset name (``"steps"``, ``"plain"``,
            ``"r1"``).
        scorer: The step scorer: a name from :data:`glimp_graph.scorers.SCORERS` or a :class:`Scorer`.
        final_model: Which model writes the final answer.
        on_small_failure: ``"fallback"``: a dead small server hands the rest of the run to the large model.
        tools: Tools the final answer may call, as OpenAI tool dicts (``{"type": "function", "function":
            {"name", "description", "parameters"}}``); the reasoning steps never carry them.
        tool_choice: ``"auto"``, ``"required"``, ``"none"`` or ``{"type": "function", "function": {"name": ...}}``
            (``None``: the server's default, ``"auto"`` when tools are given).

    Every setting in :data:`RUN_SETTINGS` can also be set for one run through the graph's runtime context
    (:class:`GlimpContext`); :meth:`for_run` applies such overrides.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    tau: float = 1.0
    top_k: int = 20
    estimator: str | Callable[..., float] = "renormalized"
    vocab_size: int | None = Field(default=None, gt=1)
    delimiter: str = "\n\n"
    max_step_tokens: int = Field(default=512, ge=1)
    max_thinking_tokens: int = Field(default=8192, ge=1)
    max_steps: int = Field(default=256, ge=1)
    final_max_tokens: int = Field(default=2048, ge=1)
    stop_on_repeat: bool = True
    reuse_probe_token: bool = True
    prompt: PromptTemplate = Field(default_factory=lambda: PRESETS["steps"])
    scorer: str | Scorer = "glimp"
    final_model: Role = "large"
    on_small_failure: Literal["fallback", "raise"] = "fallback"
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @field_validator("tau")
    @classmethod
    def _tau_number(cls, value: float) -> float:
        return check_tau(value)

    @field_validator("top_k")
    @classmethod
    def _top_k_range(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"top_k must be >= 1, or -1 for the whole vocabulary, got {value}")
        return value

    @field_validator("delimiter")
    @classmethod
    def _delimiter_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("delimiter must be a non-empty string, got ''")
        return value

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, value: str | Callable[..., float]) -> str | Callable[..., float]:
        if isinstance(value, str) and value not in ESTIMATORS:
            raise ValueError(f"unknown estimator {value!r}; choose one of {sorted(ESTIMATORS)} or pass a callable")
        return value

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, value: str | Scorer) -> str | Scorer:
        if isinstance(value, str) and value not in SCORERS:
            raise ValueError(f"unknown scorer {value!r}; choose one of {sorted(SCORERS)} or pass a Scorer")
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"unknown prompt preset {value!r}; choose one of {sorted(PRESETS)}")
            return PRESETS[value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GlimpConfig:
        too_small = self.vocab_size is None or (self.top_k != -1 and self.vocab_size <= self.top_k)
        if self.estimator == "upper" and too_small:
            raise ValueError(
                f"estimator 'upper' needs vocab_size larger than top_k={self.top_k}, got vocab_size={self.vocab_size!r}"
            )
        if self.tools is not None or self.tool_choice is not None:
            tools, choice = check_tools(self.tools, self.tool_choice)
            object.__setattr__(self, "tools", tuple(tools) if tools else None)
            object.__setattr__(self, "tool_choice", choice)
        if self.max_step_tokens > self.max_thinking_tokens:
            raise ValueError(
                f"max_step_tokens={self.max_step_tokens} exceeds max_thinking_tokens={self.max_thinking_tokens}"
            )
        return self

    def for_run(self, overrides: Mapping[str, Any] | None) -> GlimpConfig:
        """These settings with one run's ``overrides`` applied (the names in :data:`RUN_SETTINGS`), validated.

        Args:
            overrides: Setting name to value, e.g. ``{"tau": 0.5, "final_max_tokens": 64}``; ``None`` or ``{}``
                returns these settings.

        Returns:
            The run's settings.

        Raises:
            ValueError: An unknown or not run-scoped name, or a value the setting refuses; the message names it.

        """
        if not overrides:
            return self
        unknown = sorted(set(overrides) - RUN_SETTINGS)
        if unknown:
            raise ValueError(
                f"unknown run setting(s) {', '.join(map(repr, unknown))}; a run may set {sorted(RUN_SETTINGS)}"
            )
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(overrides)
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']} (got {e.get('input')!r:.80})"
                for e in exc.errors()
            )
            raise ValueError(f"bad run setting: {problems}") from None

    def estimate(self, logprobs: list[float]) -> float:
        """Apply the configured estimator to the probe's log-probabilities."""
        fn = ESTIMATORS[self.estimator] if isinstance(self.estimator, str) else self.estimator
        return float(fn(logprobs, vocab_size=self.vocab_size))

    def make_scorer(self) -> Scorer:
        """The configured scorer as an object."""
        return SCORERS[self.scorer]() if isinstance(self.scorer, str) else self.scorer

    @property
    def estimator_name(self) -> str:
        """The estimator's name, for traces."""
        if isinstance(self.estimator, str):
            return self.estimator
        return getattr(self.estimator, "__name__", type(self.estimator).__name__)


RUN_SETTINGS = frozenset(
    {
        "tau",
        "top_k",
        "max_step_tokens",
        "max_thinking_tokens",
        "max_steps",
        "final_max_tokens",
        "prompt",
        "tools",
        "tool_choice",
    }
)
"""The settings one run may override through the graph's runtime context (:class:`GlimpContext`)."""


class GlimpContext(TypedDict, total=False):
    """The graph's runtime context: settings for one run, over the graph's :class:`GlimpConfig`.

    Pass it as ``graph.invoke(inputs, context={"tau": 0.5})``; a LangGraph Server assistant can carry it, so one
    deployed graph serves several thresholds. Every key is optional; the values are validated like the
    :class:`GlimpConfig` fields of the same names, and a bad one fails the run before any model call.
    """

    tau: float
    top_k: int
    max_step_tokens: int
    max_thinking_tokens: int
    max_steps: int
    final_max_tokens: int
    prompt: str | dict[str, Any]
    """A preset name (``"steps"``, ``"plain"``, ``"r1"``) or the fields of a
    :class:`~glimp_graph.prompts.PromptTemplate`."""
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]


_NOT_PER_RUN = {
    **{
        name: "it is fixed when the graph is built (GlimpConfig)"
        for name in ("estimator", "vocab_size", "delimiter", "stop_on_repeat", "reuse_probe_token", "scorer")
    },
    **{name: "it is the endpoint's (Endpoint)" for name in ("temperature", "top_p", "seed", "base_url", "model")},
}


def run_settings(context: object, tau: object = None) -> dict[str, Any]:
    """A run's overrides as plain data (stored in the run's state, so a resumed run keeps them).

    The graph's own context is a mapping with at least one name of :data:`RUN_SETTINGS`; its other keys are
    refused by :meth:`GlimpConfig.for_run`. A nested graph inherits its host's context when it is given none
    (a ``create_agent`` agent's, say): a context that is not a mapping, or a mapping with none of those names,
    is the host's and is ignored, unless one of its keys looks like a misspelt setting.

    Args:
        context: The runtime context (:class:`GlimpContext`), a host graph's context, or ``None``.
        tau: The input's ``glimp_tau``; it wins over the context's ``tau``.

    Returns:
        The overrides, JSON-serialisable (a prompt template becomes its fields; ``None`` values are dropped).

    Raises:
        ValueError: A key of a foreign-looking context is close to a setting's name (``"tua"``).

    """
    settings: dict[str, Any] = {}
    if isinstance(context, Mapping):
        keys = [str(k) for k in context]
        if RUN_SETTINGS.intersection(keys):
            settings = {k: v for k, v in context.items() if v is not None}
        else:
            for key in keys:
                if key in _NOT_PER_RUN:
                    raise ValueError(f"{key!r} cannot be set per run: {_NOT_PER_RUN[key]}")
                close = difflib.get_close_matches(key, RUN_SETTINGS, n=1, cutoff=0.6)
                if close and abs(len(close[0]) - len(key)) <= 2:
                    raise ValueError(f"unknown run setting {key!r}: did you mean {close[0]!r}?")
    if tau is not None:
        settings["tau"] = tau
    if isinstance(settings.get("prompt"), BaseModel):
        settings["prompt"] = settings["prompt"].model_dump()
    if "tools" in settings and isinstance(settings["tools"], tuple):
        settings["tools"] = list(settings["tools"])
    return settings


def settings_key(settings: Mapping[str, Any]) -> str:
    """A stable key for a run's overrides (to cache the settings built from them)."""
    return json.dumps(settings, sort_keys=True, default=repr)


def check_tau(value: object, *, name: str = "tau") -> float:
    """The one rule for an entropy threshold: a number of nats, ``inf`` and ``-inf`` included, never NaN.

    Used by :class:`GlimpConfig` (``tau``), the ``prepare`` node (``glimp_tau``), the OpenAI face (``glimp_tau``)
    and the CLI (``--tau``, ``--threshold``); each turns the ``ValueError`` into its own kind of error.

    Args:
        value: The threshold as given (a bool or a string is not a number).
        name: The setting's name, for the message.

    Returns:
        The threshold as a float.

    Raises:
        ValueError: ``value`` is not a number or is NaN; the message names ``name`` and ``value``.

    """
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number of nats or +/-inf, got {value!r}")
    return float(value)
