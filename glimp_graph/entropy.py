"""Entropy estimators over the (top-k) log-probabilities of the probe token.

An OpenAI-compatible server returns the k most likely next tokens with their log-probabilities. With
``P`` the probability mass of those k tokens and ``r = 1 - P`` the mass of the tail:

* ``renormalized``: entropy of the top-k renormalized to sum to one (the GlimpRouter authors' choice;
  bounded by ``ln k``);
* ``lower``: ``-sum p ln p - r ln r``, a lower bound on the true entropy (tail in one token);
* ``upper``: ``-sum p ln p - r ln(r / (V - k))``, an upper bound (tail spread over the rest of a vocabulary
  of size ``V``);
* ``exact``: the true entropy; needs the whole distribution (the tail mass must be ~0).

All values are in nats. Thresholds are only comparable under the same estimator and k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from glimp_graph.errors import EstimatorError

#: Tail mass below which a distribution counts as complete for the ``exact`` estimator.
EXACT_TAIL_TOLERANCE = 1e-3


class Estimator(Protocol):
    """An entropy estimator: log-probabilities (natural log) of the top tokens -> entropy in nats."""

    def __call__(self, logprobs: Sequence[float], *, vocab_size: int | None = None) -> float:
        """Return the entropy estimate in nats."""
        ...


def _probs(logprobs: Sequence[float]) -> list[float]:
    if not logprobs:
        raise EstimatorError("no log-probabilities to estimate an entropy from (got an empty list)")
    probs = []
    for lp in logprobs:
        if math.isnan(lp) or lp > 1e-6:
            raise EstimatorError(f"invalid log-probability {lp!r}: must be a number <= 0")
        probs.append(math.exp(min(lp, 0.0)))
    return probs


def _plogp(probs: Sequence[float]) -> float:
    return -math.fsum(p * math.log(p) for p in probs if p > 0.0)


def _tail(probs: Sequence[float]) -> float:
    return max(0.0, 1.0 - math.fsum(probs))


def renormalized(logprobs: Sequence[float], *, vocab_size: int | None = None) -> float:
    """Entropy of the top-k distribution renormalized to sum to one.

    Args:
        logprobs: Natural-log probabilities of the top-k tokens.
        vocab_size: Unused; accepted for a uniform signature.

    Returns:
        The entropy in nats, between 0 and ``ln k``.

    """
    probs = _probs(logprobs)
    total = math.fsum(probs)
    if total <= 0.0:
        raise EstimatorError("the top-k log-probabilities carry no probability mass")
    return max(0.0, _plogp([p / total for p in probs]))


def lower_bound(logprobs: Sequence[float], *, vocab_size: int | None = None) -> float:
    """Lower bound on the true entropy: the tail mass counted as a single token.

    Args:
        logprobs: Natural-log probabilities of the top-k tokens.
        vocab_size: Unused; accepted for a uniform signature.

    Returns:
        The bound in nats.

    """
    probs = _probs(logprobs)
    r = _tail(probs)
    return _plogp(probs) + (-r * math.log(r) if r > 0.0 else 0.0)


def upper_bound(logprobs: Sequence[float], *, vocab_size: int | None = None) -> float:
    """Upper bound on the true entropy: the tail mass spread evenly over the rest of the vocabulary.

    Args:
        logprobs: Natural-log probabilities of the top-k tokens.
        vocab_size: The model's vocabulary size V (required, and larger than k).

    Returns:
        The bound in nats.

    """
    probs = _probs(logprobs)
    if vocab_size is None or vocab_size <= len(probs):
        raise EstimatorError(
            f"the upper-bound estimator needs vocab_size larger than k={len(probs)}, got vocab_size={vocab_size!r}"
        )
    r = _tail(probs)
    return _plogp(probs) + (-r * math.log(r / (vocab_size - len(probs))) if r > 0.0 else 0.0)


def exact(logprobs: Sequence[float], *, vocab_size: int | None = None) -> float:
    """The true entropy of a complete distribution.

    Args:
        logprobs: Natural-log probabilities of (almost) every token of the vocabulary.
        vocab_size: Unused; accepted for a uniform signature.

    Returns:
        The entropy in nats.

    Raises:
        EstimatorError: The log-probabilities miss more than ``EXACT_TAIL_TOLERANCE`` of the mass, i.e. the server
            did not return the whole vocabulary.

    """
    probs = _probs(logprobs)
    r = _tail(probs)
    if r > EXACT_TAIL_TOLERANCE:
        raise EstimatorError(
            f"the exact estimator needs the whole distribution, but the {len(probs)} returned tokens miss "
            f"{r:.4f} of the probability mass: use top_k=-1 with a vLLM server started with --max-logprobs -1, "
            "or top_k=<vocabulary size> with llama.cpp's server"
        )
    return _plogp(probs)


ESTIMATORS: dict[str, Callable[..., float]] = {
    "renormalized": renormalized,
    "lower": lower_bound,
    "upper": upper_bound,
    "exact": exact,
}
"""The estimators by the names the configuration accepts."""
