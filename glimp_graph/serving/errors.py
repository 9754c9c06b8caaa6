"""Exceptions raised by :mod:`glimp_graph.serving`."""

from __future__ import annotations

from glimp_graph.errors import GlimpError

__all__ = ["ServerCrashedError", "ServingError", "WeightsError"]


class ServingError(GlimpError, RuntimeError):
    """A local model server could not be prepared, built or started (weights, binary or process)."""


class WeightsError(ServingError):
    """Assembled model weights do not match the pinned size or sha256."""


class ServerCrashedError(ServingError):
    """A server process was killed by a signal before it was ready (SIGILL: an instruction this CPU lacks).

    Attributes:
        signal: The signal number that ended the process.

    """

    def __init__(self, message: str, *, signal: int) -> None:
        super().__init__(message)
        self.signal = signal
