"""Helpers both test tiers share: a callback that records chat-model runs, the calculator tool's schema, and a
loader for the scripts in bench/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

CALCULATOR: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression and return the number.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 3*4-5"}},
            "required": ["expression"],
        },
    },
}
"""An OpenAI-format tool: one required string argument, as the tool tests and examples use."""


class CallRecorder(BaseCallbackHandler):
    """Every chat-model run: its name, tags and metadata (what LangSmith would show), and the tools it carried."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Record the run's name, tags, metadata and the names of the tools in its request."""
        params = kwargs.get("invocation_params") or {}
        tools = [t.get("function", {}).get("name") for t in params.get("tools") or []]
        self.calls.append({"name": name, "tags": tags or [], "metadata": metadata or {}, "tools": tools})


def load_bench(name: str, *, as_name: str | None = None) -> ModuleType:
    """Import ``bench/<name>.py`` (bench/ is not a package) as the module ``as_name`` (default ``name``).

    The module goes into ``sys.modules`` first: dataclasses resolve their module by name.
    """
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(as_name or name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
