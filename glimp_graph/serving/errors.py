"""Exceptions raised by :mod:`glimp_graph.serving`."""

from __future__ import annotations

from glimp_graph.errors import GlimpError

__all__ = ["ServingError", "WeightsError"]


class ServingError(GlimpError, RuntimeError):
    """A local model server could not be prepared, built or started (weights, binary or process)."""


class WeightsError(ServingError):
    """Assembled model weights do not match the pinned size or sha256."""
