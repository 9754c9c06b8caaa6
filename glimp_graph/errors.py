"""Errors raised by glimp-graph.

Every error names the value or the endpoint at fault and says what to change.
"""

from __future__ import annotations


class GlimpError(Exception):
    """Base class of every error raised by glimp-graph."""


class InputError(GlimpError, ValueError):
    """The graph's input (a question, messages, a per-run override) is unusable."""


class EstimatorError(GlimpError, ValueError):
    """The log-probabilities cannot give the entropy the chosen estimator asks for."""


class EndpointError(GlimpError):
    """A model endpoint failed: unreachable, an HTTP error, or a response that cannot be used.

    Attributes:
        role: ``"small"`` or ``"large"``.
        base_url: The endpoint's base URL.

    """

    def __init__(self, role: str, base_url: str, message: str) -> None:
        self.role = role
        self.base_url = base_url
        super().__init__(f"{role} model at {base_url}: {message}")


class EndpointUnavailableError(EndpointError):
    """The server could not be reached, timed out, or failed (HTTP 5xx), after the client's retries."""


class ContextLengthError(EndpointError, InputError):
    """The prompt does not fit the model's context window (found before sending, or reported by the server)."""


class LogprobsUnavailableError(EndpointError):
    """The small model's server answered without the log-probabilities the probe needs."""


class BadResponseError(EndpointError):
    """The server answered, but not with a usable chat completion (no choices, bad JSON, ...)."""
