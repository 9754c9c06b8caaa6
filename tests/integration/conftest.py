"""Real llama.cpp servers with real models, started once per session and stopped afterwards.

The cache (weights, llama-server binary) is ``$GLIMP_CACHE_DIR`` or ``~/.cache/glimp-graph``; an empty cache is
filled on first use (about 7 minutes to build llama-server on 2 cores, plus downloads).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from glimp_graph import Endpoint
from glimp_graph.serving import LocalModels
from tests.helpers import CallRecorder

pytestmark = pytest.mark.integration


DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark problems, in ``shared/data`` beside the project's root."""
    if not (DATA_DIR / "gsm8k_dev.jsonl").exists():
        pytest.fail(f"benchmark data not found: expected {DATA_DIR}/gsm8k_dev.jsonl (shared/ beside the checkout)")
    return DATA_DIR


def cache_dir() -> Path | None:
    """The cache root the tests use: ``$GLIMP_CACHE_DIR`` or the default."""
    value = os.environ.get("GLIMP_CACHE_DIR")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def smol_pair() -> Iterator[tuple[Endpoint, Endpoint]]:
    """SmolLM2-135M as both small and large model, two separate servers (model quality does not matter)."""
    with LocalModels(small="smollm2-135m", large="smollm2-135m", cache_dir=cache_dir(), ctx_size=4096) as models:
        yield (
            Endpoint(base_url=models.small.base_url, model=models.small.alias, temperature=0.0, seed=7),
            Endpoint(base_url=models.large.base_url, model=models.large.alias, temperature=0.0, seed=7),
        )


@pytest.fixture(scope="session")
def qwen_pair() -> Iterator[tuple[Endpoint, Endpoint]]:
    """The local default pair: Qwen2.5-Coder 0.5B small, 1.5B large (where model quality matters)."""
    with LocalModels(cache_dir=cache_dir(), ctx_size=4096) as models:
        yield (
            Endpoint(base_url=models.small.base_url, model=models.small.alias, seed=7),
            Endpoint(base_url=models.large.base_url, model=models.large.alias, seed=7),
        )


@pytest.fixture
def recorder() -> CallRecorder:
    return CallRecorder()
