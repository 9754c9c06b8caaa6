"""Evaluation: problem sets, grading, strategies, the runner, calibration and figures."""

from glimp_graph.eval.calibrate import Calibration, calibrate, quantile
from glimp_graph.eval.compare import Paired, paired, routing_profile, sign_test
from glimp_graph.eval.data import Problem, load_problems
from glimp_graph.eval.grading import extract_answer, grade, grade_integer
from glimp_graph.eval.runner import Job, load_records, markdown_table, run_eval, summarize
from glimp_graph.eval.strategies import STRATEGIES, Strategy

__all__ = [
    "STRATEGIES",
    "Calibration",
    "Job",
    "Paired",
    "Problem",
    "Strategy",
    "calibrate",
    "extract_answer",
    "grade",
    "grade_integer",
    "load_problems",
    "load_records",
    "markdown_table",
    "paired",
    "quantile",
    "routing_profile",
    "run_eval",
    "sign_test",
    "summarize",
]
