"""Evaluation helpers: answer extraction and grading."""

from glimp_graph.eval.grading import extract_answer, grade_integer

__all__ = ["extract_answer", "grade_integer"]
