"""Step scorers: what the router looks at before deciding who writes a step.

The routing contract is one score and one threshold: the step goes to the small model when ``score <= tau``
(see the ``route`` node). A scorer decides how the score is obtained:

* :class:`TokenEntropy` (``"glimp"``, the method): the small model decodes ONE token; the score is that
  token's entropy H_init. The small step then continues from the probed token. ``TokenEntropy(tokens=k)``
  glimpses k tokens and scores the highest entropy among them (an extension, for step openings that are
  formatting).
* :class:`StepEntropy` (``"step-entropy"``) and :class:`StepPerplexity` (``"step-perplexity"``): the small
  model drafts the whole step; the score is its mean token entropy or its perplexity (the paper's ablations).
  An accepted draft becomes the step; a rejected one is rewritten by the large model.
* :class:`SpecReason` (``"specreason"``): the small model drafts the step, the large model judges it 0-9 from
  the log-probabilities of a one-token verdict; the score is ``9 - E[verdict]``.
* :class:`Random` (``"random"``): a uniform random score in [0, 1), so ``tau`` is the share of small steps
  (the control that shows whether a signal carries information).
* :class:`Fixed` (``"fixed"``): a constant score 0 and no model call; with ``tau=inf`` every step is the small
  model's (small-only), with ``tau=-inf`` the large model's (large-only).

A scorer is written once as a generator that yields ``(client, request)`` pairs and receives completions, so it
runs under both the sync and the async API.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from glimp_graph.endpoints import Call, Completion, ModelClient, Request, Role, StepEnd


class Probe(BaseModel):
    """What the step scorer saw of the next step before routing it.

    Attributes:
        index: The step's index.
        kind: ``"token"``: the small model decoded one token (GlimpRouter); ``"step"``: the small model drafted the
            whole step (step-entropy, step-perplexity, SpecReason); ``"none"``: no model call (random, fixed).
        token: The probed token, or the drafted step's text.
        eos: The small model ended its turn instead of writing a token.
        end: Why the draft ended (``kind == "step"`` only).
        h_init: Entropy of the first token's distribution (nats), when a token was probed.
        score: The routing score; the step goes to the small model when ``score <= tau``.
        scorer: The scorer's name.
        top_logprobs: Top log-probabilities of the first token.
        tokens: Tokens the small model generated for the glimpse.
        large_tokens: Tokens the large model generated for the glimpse (a judge).
        seconds: Wall time of the glimpse.
        signals: Every difficulty signal the glimpse could compute (``h_init``, ``step_entropy``,
            ``step_perplexity``), for analysis.
        forced: A model the step must go to whatever the score (the small model's server failed).
        note: Why the step was forced.
    """

    model_config = ConfigDict(frozen=True)

    index: int
    kind: Literal["token", "step", "none"] = "token"
    token: str
    eos: bool
    end: StepEnd | None = None
    h_init: float | None
    score: float
    scorer: str = "glimp"
    top_logprobs: list[tuple[str, float]] = []
    tokens: int
    large_tokens: int = 0
    seconds: float
    signals: dict[str, float] = {}
    forced: Role | None = None
    note: str | None = None

    @classmethod
    def no_call(
        cls, index: int, scorer: str, score: float, *, forced: Role | None = None, note: str | None = None
    ) -> Probe:
        """A probe for which no model was called (``kind="none"``: a random or fixed score, a forced step).

        Args:
            index: The step's index.
            scorer: The scorer's name.
            score: The routing score.
            forced: A model the step must go to whatever the score.
            note: Why the step was forced.

        """
        return cls(
            index=index,
            kind="none",
            token="",
            eos=False,
            h_init=None,
            score=score,
            scorer=scorer,
            tokens=0,
            seconds=0.0,
            forced=forced,
            note=note,
        )


Glimpse = Generator[Call, Completion, Probe]


@dataclass(frozen=True)
class StepContext:
    """Everything a scorer may look at for step ``index``.

    Attributes:
        index: The step's index.
        question: The question.
        messages: The conversation (system, history, user) as chat messages.
        prefix: The partial assistant message the step continues (the trace so far).
        max_tokens: Token cap for a drafted step.
        delimiter: The step delimiter.
        top_k: Log-probabilities to ask for.
        metadata: Trace metadata for the calls.
        small: The small model's client.
        large: The large model's client.
        estimate: The configured entropy estimator, applied to a list of log-probabilities.
    """

    index: int
    question: str
    messages: list[dict[str, str]]
    prefix: str
    max_tokens: int
    delimiter: str
    top_k: int
    metadata: dict[str, Any]
    small: ModelClient
    large: ModelClient
    estimate: Callable[[list[float]], float]


class Scorer(ABC):
    """Base class of step scorers (see the module docstring)."""

    name: ClassVar[str]
    kind: ClassVar[Literal["token", "step", "none"]]

    @abstractmethod
    def glimpse(self, ctx: StepContext) -> Glimpse:
        """Look at the next step and return a :class:`Probe` carrying its score."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(repr=True)
class TokenEntropy(Scorer):
    """GlimpRouter: the entropy of the small model's first token of the step.

    Attributes:
        tokens: Tokens to glimpse, decoded greedily in one request. ``1`` is the paper's method: the score is the
            first token's entropy H_init. With more, the score is the highest entropy among the glimpsed tokens of
            the step (those before the token that completes the delimiter): for instruction models whose steps
            open with formatting (a list number, ``**``) that the first token alone says nothing about. Every
            glimpsed token is reused by the small step, so a longer glimpse costs little when the small model goes
            on.

    Raises:
        ValueError: ``tokens`` is below 1.
    """

    tokens: int = 1
    name: ClassVar[str] = "glimp"
    kind: ClassVar[Literal["token", "step", "none"]] = "token"

    def __post_init__(self) -> None:
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise ValueError(f"TokenEntropy.tokens must be an integer >= 1, got {self.tokens!r}")

    def glimpse(self, ctx: StepContext) -> Glimpse:
        """Probe ``tokens`` tokens at temperature 0 and score them by their entropy."""
        done = yield (
            ctx.small,
            Request(
                messages=ctx.messages,
                prefix=ctx.prefix,
                max_tokens=min(self.tokens, max(ctx.max_tokens, 1)),
                temperature=0.0,
                top_p=1.0,
                top_logprobs=ctx.top_k,
                run_name="probe",
                metadata=ctx.metadata,
            ),
        )
        top = done.top_logprobs or []
        h = ctx.estimate([lp for _, lp in top])
        score, signals = h, {"h_init": h}
        if self.tokens > 1:
            entropies, seen = [], ""
            for t in done.logprobs:  # the tokens of this step, before the one that completes the delimiter
                seen += t.token
                if ctx.delimiter in seen:
                    break
                entropies.append(ctx.estimate([lp for _, lp in t.top]) if t.top else 0.0)
            score = max(entropies, default=h)
            signals["glimpse_max"] = score
        return Probe(
            index=ctx.index,
            kind="token",
            token=done.text,
            eos=done.end != "length",
            h_init=h,
            score=score,
            scorer=self.name,
            top_logprobs=top[:20],
            tokens=done.tokens,
            seconds=done.seconds,
            signals=signals,
        )


@dataclass(repr=True)
class Random(Scorer):
    """A reproducible uniform score in [0, 1) per (seed, question, step): ``tau`` is the share of small steps.

    Attributes:
        seed: Seed mixed with the question and the step index.
    """

    seed: int = 0
    name: ClassVar[str] = "random"
    kind: ClassVar[Literal["token", "step", "none"]] = "none"

    def glimpse(self, ctx: StepContext) -> Glimpse:
        """Draw the score; no model is called."""
        score = random.Random(f"{self.seed}|{ctx.question}|{ctx.index}").random()
        return Probe.no_call(ctx.index, self.name, score)
        yield  # pragma: no cover - makes this a generator


class Fixed(Scorer):
    """A constant score of 0 and no model call: ``tau=inf`` gives small-only, ``tau=-inf`` large-only."""

    name = "fixed"
    kind = "none"

    def glimpse(self, ctx: StepContext) -> Glimpse:
        """Return the constant score."""
        return Probe.no_call(ctx.index, self.name, 0.0)
        yield  # pragma: no cover - makes this a generator


def _draft(ctx: StepContext, *, logprobs: bool) -> Generator[Call, Completion, Completion]:
    done = yield (
        ctx.small,
        Request(
            messages=ctx.messages,
            prefix=ctx.prefix,
            max_tokens=ctx.max_tokens,
            stop=[ctx.delimiter],
            top_logprobs=ctx.top_k if logprobs else None,
            run_name="draft",
            metadata=ctx.metadata,
        ),
    )
    return done


def _draft_probe(ctx: StepContext, scorer: Scorer, done: Completion, score: float, **extra: Any) -> Probe:
    eos = done.end == "eos" or (not done.text and done.end == "stop")
    return Probe(
        index=ctx.index,
        kind="step",
        token=done.text,
        eos=eos,
        end="eos" if eos else done.end,
        h_init=None,
        score=score,
        scorer=scorer.name,
        tokens=done.tokens,
        seconds=done.seconds,
        **extra,
    )


def draft_signals(done: Completion, estimate: Callable[[list[float]], float]) -> dict[str, float]:
    """H_init (first token), mean token entropy and perplexity of a step drafted with log-probabilities."""
    entropies = [estimate([lp for _, lp in t.top]) for t in done.logprobs if t.top]
    lps = [t.logprob for t in done.logprobs]
    signals = {
        "step_entropy": sum(entropies) / len(entropies) if entropies else 0.0,
        "step_perplexity": math.exp(-sum(lps) / len(lps)) if lps else 1.0,
    }
    if entropies:
        signals["h_init"] = entropies[0]
    return signals


class _DraftSignal(Scorer):
    """The small model drafts the step with log-probabilities; one of :func:`draft_signals` is the score."""

    kind = "step"
    signal: ClassVar[str]

    def glimpse(self, ctx: StepContext) -> Glimpse:
        """Draft the step with log-probabilities and score it by the class's signal."""
        done = yield from _draft(ctx, logprobs=True)
        signals = draft_signals(done, ctx.estimate)
        return _draft_probe(ctx, self, done, signals[self.signal], signals=signals)


class StepEntropy(_DraftSignal):
    """The small model drafts the step; the score is the mean entropy of its tokens' distributions."""

    name = "step-entropy"
    signal = "step_entropy"


class StepPerplexity(_DraftSignal):
    """The small model drafts the step; the score is its perplexity ``exp(-mean log p)``."""

    name = "step-perplexity"
    signal = "step_perplexity"


JUDGE_PROMPT = (
    "You are checking one step of a solution.\n\nProblem:\n{question}\n\nSolution so far:\n{trace}\n\n"
    "New step:\n{step}\n\nIs the new step correct and useful? Rate it with a single digit from 0 (wrong or "
    "useless) to 9 (correct and useful). Answer with the digit only."
)


@dataclass(repr=True)
class SpecReason(Scorer):
    """SpecReason: the large model judges the small model's drafted step 0-9; the score is ``9 - E[verdict]``.

    Attributes:
        prompt: The judge's prompt, with ``{question}``, ``{trace}`` and ``{step}`` slots.
    """

    prompt: str = field(default=JUDGE_PROMPT)
    name: ClassVar[str] = "specreason"
    kind: ClassVar[Literal["token", "step", "none"]] = "step"

    def glimpse(self, ctx: StepContext) -> Glimpse:
        """Draft the step, then ask the large model for a one-token verdict with log-probabilities."""
        done = yield from _draft(ctx, logprobs=False)
        text = self.prompt.replace("{question}", ctx.question).replace("{trace}", ctx.prefix.strip() or "(none)")
        verdict = yield (
            ctx.large,
            Request(
                messages=[{"role": "user", "content": text.replace("{step}", done.text.strip() or "(empty)")}],
                prefix="",
                max_tokens=1,
                temperature=0.0,
                top_p=1.0,
                top_logprobs=max(ctx.top_k, 20) if ctx.top_k != -1 else 20,
                run_name="judge",
                metadata=ctx.metadata,
            ),
        )
        score = 9.0 - expected_digit(verdict.top_logprobs or [])
        probe = _draft_probe(ctx, self, done, score, large_tokens=verdict.tokens, signals={"verdict": 9.0 - score})
        return probe.model_copy(update={"seconds": done.seconds + verdict.seconds})


def expected_digit(top: list[tuple[str, float]]) -> float:
    """Expected value of a 0-9 verdict from the top log-probabilities (0 when no digit is among them)."""
    mass = total = 0.0
    for token, lp in top:
        text = token.strip()
        if len(text) == 1 and text.isdigit():
            p = math.exp(lp)
            mass += p
            total += p * int(text)
    return total / mass if mass > 0 else 0.0


SCORERS: dict[str, Callable[[], Scorer]] = {
    TokenEntropy.name: TokenEntropy,
    StepEntropy.name: StepEntropy,
    StepPerplexity.name: StepPerplexity,
    SpecReason.name: SpecReason,
    Random.name: Random,
    Fixed.name: Fixed,
}
"""Scorers by the names the configuration accepts."""
