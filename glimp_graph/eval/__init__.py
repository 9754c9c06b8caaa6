"""Evaluation: problem sets, grading, strategies, the runner, calibration, robust statistics and figures."""

from glimp_graph.eval.calibrate import Calibration, calibrate
from glimp_graph.eval.compare import Paired, paired, routing_profile, sign_test
from glimp_graph.eval.data import Problem, load_problems
from glimp_graph.eval.grading import extract_answer, grade, grade_integer
from glimp_graph.eval.provenance import collect_provenance, label, mixed_jobs, states_by_job
from glimp_graph.eval.runner import Job, load_records, markdown_stalls, markdown_table, run_eval, summarize
from glimp_graph.eval.stats import (
    RatioSummary,
    Stall,
    bootstrap_intervals,
    find_stalls,
    geometric_mean,
    quantile,
    ratio_summary,
    wilson_interval,
)
from glimp_graph.eval.strategies import STRATEGIES, Strategy

__all__ = [
    "STRATEGIES",
    "Calibration",
    "Job",
    "Paired",
    "Problem",
    "RatioSummary",
    "Stall",
    "Strategy",
    "bootstrap_intervals",
    "calibrate",
    "collect_provenance",
    "extract_answer",
    "find_stalls",
    "geometric_mean",
    "grade",
    "grade_integer",
    "label",
    "load_problems",
    "load_records",
    "markdown_stalls",
    "markdown_table",
    "mixed_jobs",
    "paired",
    "quantile",
    "ratio_summary",
    "routing_profile",
    "run_eval",
    "sign_test",
    "states_by_job",
    "summarize",
    "wilson_interval",
]
