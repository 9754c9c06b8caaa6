r"""Answer extraction and grading: integer answers (GSM8K, AIME) numerically, LaTeX answers with math-verify.

The answer is read from the last ``\boxed{...}``, else from "the answer is ..." / "Final answer: ...", else the
last number in the text.
"""

from __future__ import annotations

import re
from fractions import Fraction

from glimp_graph.eval.data import Problem

_ANSWER_IS = re.compile(r"(?:final answer|the answer is)\s*[:=]?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return text[i:].strip() or None


def extract_answer(text: str) -> str | None:
    r"""Pull the final answer out of a model's text.

    Args:
        text: The model's answer (or the whole reasoning).

    Returns:
        The answer text (``\boxed`` content, or what follows "the answer is", or the last number), or ``None``.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS.findall(text)
    if matches:
        return matches[-1].strip().rstrip(".").strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> Fraction | None:
    numbers = _NUMBER.findall(text.replace("$", "").replace("\\!", ""))
    if not numbers:
        return None
    try:
        return Fraction(numbers[-1].replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def grade_integer(prediction: str | None, gold: str | int) -> bool:
    """Compare a predicted answer with an integer gold answer numerically.

    Args:
        prediction: Text holding the predicted answer (e.g. the output of :func:`extract_answer`).
        gold: The reference answer (``"1,234"`` and ``1234`` are the same).

    Returns:
        True when the last number in ``prediction`` equals ``gold``.
    """
    if prediction is None:
        return False
    want = _as_number(str(gold))
    got = _as_number(prediction)
    return want is not None and got is not None and got == want


def grade(problem: Problem, text: str) -> tuple[str | None, bool]:
    """Extract the answer from ``text`` and grade it against the problem's reference.

    Integer answers are compared numerically; LaTeX answers with ``math-verify`` (the ``eval`` extra).

    Args:
        problem: The problem.
        text: The model's final answer (falls back to the whole text's last answer form).

    Returns:
        ``(extracted answer, correct)``.
    """
    predicted = extract_answer(text)
    if problem.kind == "integer":
        return predicted, grade_integer(predicted, problem.answer)
    if predicted is None:
        return None, False
    from math_verify import parse, verify

    gold = parse(f"${problem.answer}$")
    return predicted, bool(verify(gold, parse(f"${predicted}$")))
