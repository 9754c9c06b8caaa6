"""Settings: the router's own settings (a server is described by :class:`~glimp_graph.endpoints.Endpoint`).

Everything is a frozen pydantic model validated when the graph is built, so a bad value fails early with a
message naming it. Nothing here reads environment variables: the CLI and the examples do that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glimp_graph.endpoints import Role
from glimp_graph.entropy import ESTIMATORS
from glimp_graph.prompts import PRESETS, PromptTemplate
from glimp_graph.scorers import SCORERS, Scorer


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
        prompt: A :class:`~glimp_graph.prompts.PromptTemplate` or a preset name (``"steps"``, ``"r1"``).

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
        if self.max_step_tokens > self.max_thinking_tokens:
            raise ValueError(
                f"max_step_tokens={self.max_step_tokens} exceeds max_thinking_tokens={self.max_thinking_tokens}"
            )
        return self

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
