"""Problem sets: JSONL files with ``question`` and ``answer`` (the benchmark files or a user's own)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

AnswerKind = Literal["integer", "latex"]


@dataclass(frozen=True)
class Problem:
    """One problem.

    Attributes:
        id: Stable identifier (the file's ``id``, or ``<file stem>-<line>``).
        question: The question.
        answer: The reference answer.
        kind: ``"integer"`` (compare numerically) or ``"latex"`` (equivalence check).
        source: Where it comes from.
        extra: Other fields of the row.
        row: Its position among the file's problems, from 0 (what ``start`` counts); ``None`` when not from a file.
    """

    id: str
    question: str
    answer: str
    kind: AnswerKind
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    row: int | None = None


def _kind_of(row: dict[str, Any], answer: str) -> AnswerKind:
    source = str(row.get("source", "")).lower()
    if "math500" in source or "math-500" in source:
        return "latex"
    if "answer_number" in row or "gsm8k" in source or "aime" in source:
        return "integer"
    try:
        float(answer.replace(",", ""))
    except ValueError:
        return "latex"
    return "integer"


def load_problems(path: str | Path, *, start: int = 0, limit: int | None = None) -> list[Problem]:
    """Read problems from a JSONL file.

    Args:
        path: A JSONL file, one ``{"question", "answer", ...}`` object per line.
        start: Index of the first problem to take.
        limit: Number of problems to take (``None``: all the rest).

    Returns:
        The problems, in file order.

    Raises:
        ValueError: A line is not JSON or lacks ``question`` / ``answer``; the message names the line.
    """
    path = Path(path)
    problems: list[Problem] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or "answer" not in row:
            raise ValueError(f"{path}:{number}: each line needs a string 'question' and an 'answer'")
        answer = str(row.get("answer_number", row["answer"]))
        problems.append(
            Problem(
                id=str(row.get("id", f"{path.stem}-{number}")),
                question=row["question"],
                answer=answer,
                kind=_kind_of(row, answer),
                source=str(row.get("source", path.stem)),
                extra={k: v for k, v in row.items() if k not in {"id", "question", "answer"}},
                row=len(problems),
            )
        )
    end = None if limit is None else start + limit
    return problems[start:end]
