"""Figures of an evaluation (needs matplotlib: the ``eval`` extra)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy against mean latency, one series per strategy across its thresholds, error bars = 95% Wilson."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        series[r["strategy"]].append(r)
    for strategy, rs in series.items():
        rs = sorted(rs, key=lambda r: r["latency_mean_s"])
        ax.errorbar(
            [r["latency_mean_s"] for r in rs],
            [100 * r["accuracy"] for r in rs],
            yerr=[
                [100 * (r["accuracy"] - r["accuracy_ci"][0]) for r in rs],
                [100 * (r["accuracy_ci"][1] - r["accuracy"]) for r in rs],
            ],
            marker="o",
            capsize=3,
            label=strategy,
        )
    ax.set_xlabel("mean latency per problem (s)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_signals(records: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Histograms of the step difficulty signals (H_init, step entropy, step perplexity) on the same steps."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for step in r.get("step_records", []):
            signals = step.get("signals") or {}
            if {"h_init", "step_entropy", "step_perplexity"} <= signals.keys():
                for name in ("h_init", "step_entropy", "step_perplexity"):
                    values[name].append(signals[name])
    if not values:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    titles = {"h_init": "H_init (nats)", "step_entropy": "mean step entropy (nats)", "step_perplexity": "step PPL"}
    for ax, name in zip(axes, ("h_init", "step_entropy", "step_perplexity"), strict=True):
        ax.hist(values[name], bins=30, color="#5b6abf")
        ax.set_title(f"{titles[name]}, n={len(values[name])}")
        ax.grid(alpha=0.3)
    fig.suptitle("Difficulty signals of the same steps (small model's drafts)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
