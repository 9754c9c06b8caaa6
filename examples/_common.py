"""What the examples share: the two endpoints (from the environment, or local models) and the router settings.

Examples (unlike the library) may read environment variables:

- ``GLIMP_SMALL_URL`` / ``GLIMP_LARGE_URL`` (both, or neither), ``GLIMP_SMALL_MODEL`` / ``GLIMP_LARGE_MODEL``,
  ``GLIMP_API_KEY``: use servers that already run;
- otherwise ``glimp_graph.serving.LocalModels()`` starts the local default pair (Qwen2.5-Coder 0.5B / 1.5B),
  or ``GLIMP_LOCAL_SMALL`` / ``GLIMP_LOCAL_LARGE`` (names from ``glimp_graph.serving.MODELS``, e.g.
  ``smollm2-135m``), cached in ``GLIMP_CACHE_DIR`` (default ``~/.cache/glimp-graph``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

from glimp_graph import Endpoint


@contextlib.contextmanager
def endpoints() -> Iterator[tuple[Endpoint, Endpoint]]:
    """The small and the large endpoint, for the duration of a ``with`` block."""
    small_url, large_url = os.environ.get("GLIMP_SMALL_URL"), os.environ.get("GLIMP_LARGE_URL")
    if bool(small_url) != bool(large_url):
        sys.exit("set both GLIMP_SMALL_URL and GLIMP_LARGE_URL, or neither (then local models are started)")
    key = {"api_key": os.environ["GLIMP_API_KEY"]} if os.environ.get("GLIMP_API_KEY") else {}
    if small_url and large_url:
        yield (
            Endpoint(base_url=small_url, model=os.environ.get("GLIMP_SMALL_MODEL", "small"), **key),
            Endpoint(base_url=large_url, model=os.environ.get("GLIMP_LARGE_MODEL", "large"), **key),
        )
        return
    from glimp_graph.serving import LocalModels

    small = os.environ.get("GLIMP_LOCAL_SMALL", "qwen2.5-coder-0.5b")
    large = os.environ.get("GLIMP_LOCAL_LARGE", "qwen2.5-coder-1.5b")
    print(f"starting local models: small={small}, large={large} (llama.cpp server)", file=sys.stderr)
    with LocalModels(small=small, large=large, cache_dir=os.environ.get("GLIMP_CACHE_DIR")) as models:
        yield (
            Endpoint(base_url=models.small.base_url, model=models.small.alias),
            Endpoint(base_url=models.large.base_url, model=models.large.alias),
        )


def router_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the router's budget options (small budgets keep a CPU run short)."""
    parser.add_argument("--tau", type=float, default=1.0, help="entropy threshold in nats (inf, -inf ok)")
    parser.add_argument("--max-step-tokens", type=int, default=128)
    parser.add_argument("--max-thinking-tokens", type=int, default=768)
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--final-max-tokens", type=int, default=128)
    return parser


def router_config(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The ``GlimpConfig`` fields from the parsed options."""
    if math.isnan(args.tau):
        sys.exit("--tau must not be nan")
    return {
        "tau": args.tau,
        "max_step_tokens": args.max_step_tokens,
        "max_thinking_tokens": args.max_thinking_tokens,
        "max_steps": args.max_steps,
        "final_max_tokens": args.final_max_tokens,
        **extra,
    }
