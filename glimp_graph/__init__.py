"""glimp-graph: GlimpRouter as a LangGraph state machine.

A small model glimps one token of each reasoning step; the entropy of that token decides whether the small
model writes the step or the large model does. The large model always writes the final answer.
"""

from typing import TYPE_CHECKING

from glimp_graph.config import GlimpConfig
from glimp_graph.endpoints import Endpoint
from glimp_graph.entropy import ESTIMATORS
from glimp_graph.errors import (
    BadResponseError,
    EndpointError,
    EstimatorError,
    GlimpError,
    InputError,
    LogprobsUnavailableError,
)
from glimp_graph.graph import create_glimp_graph
from glimp_graph.prompts import PLAIN, PRESETS, R1, STEPS, PromptTemplate
from glimp_graph.scorers import Probe, TokenEntropy
from glimp_graph.state import Decision, GlimpInput, GlimpOutput, GlimpState, RunStats, Step

if TYPE_CHECKING:
    from glimp_graph.chat_model import ChatGlimpRouter

__all__ = [
    "ESTIMATORS",
    "PLAIN",
    "PRESETS",
    "R1",
    "STEPS",
    "BadResponseError",
    "ChatGlimpRouter",
    "Decision",
    "Endpoint",
    "EndpointError",
    "EstimatorError",
    "GlimpConfig",
    "GlimpError",
    "GlimpInput",
    "GlimpOutput",
    "GlimpState",
    "InputError",
    "LogprobsUnavailableError",
    "Probe",
    "PromptTemplate",
    "RunStats",
    "Step",
    "TokenEntropy",
    "create_glimp_graph",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``ChatGlimpRouter`` is imported on first use (it registers a LangChain content-block translator)."""
    if name == "ChatGlimpRouter":
        from glimp_graph.chat_model import ChatGlimpRouter

        return ChatGlimpRouter
    raise AttributeError(f"module 'glimp_graph' has no attribute {name!r}")
