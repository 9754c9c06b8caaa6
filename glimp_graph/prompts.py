"""Prompt templates: how a question becomes the chat messages, and how the reasoning trace is framed.

Three presets cover the two kinds of model the router is used with:

* :data:`STEPS` for plain instruction models asked to reason in blank-line separated steps (the local
  Qwen2.5-Coder pair);
* :data:`PLAIN` for the same models, asked to write each step as plain sentences: no list numbers, no
  ``Step N:`` labels, no bold or other Markdown (under :data:`STEPS` these models open most steps with such
  formatting, a first token they are sure of whatever the step holds, which leaves the probe little to read);
* :data:`R1` for R1-style reasoning models that think inside ``<think> ... </think>``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

QUESTION_SLOT = "{question}"

MATH_INSTRUCTION = (
    "Solve the following problem. Please reason step by step, separate logical reasoning steps with two newline "
    "characters (\\n\\n), and put your final answer within \\boxed{}."
)

PLAIN_INSTRUCTION = (
    "Solve the following problem. Please reason step by step in plain sentences: write each logical reasoning step "
    "as ordinary prose that starts with a word, and separate the steps with two newline characters (\\n\\n). Do "
    'not number the steps, do not label them ("Step 1:"), and do not use bullet points, bold text, headings or '
    "other Markdown. Put your final answer within \\boxed{}."
)


class PromptTemplate(BaseModel):
    r"""How the question, the reasoning trace and the final answer are laid out for the models.

    Attributes:
        name: A short name, shown in traces.
        system: System message, or ``None`` for none (servers may then inject their template's default).
        user: The user message; ``{question}`` is replaced by the question (no other braces are interpreted).
        think_prefix: Text the assistant's reasoning starts with (``"<think>\n"`` for R1-style models).
        answer_prefix: Text put after the finished reasoning, from which the large model writes the final answer.
        end_markers: A step containing one of these ends the reasoning; the step is cut before the marker
            (``"</think>"`` for R1-style models).
        answer_markers: A step containing one of these ends the reasoning; the step is kept whole
            (e.g. ``"\boxed{"``).

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    system: str | None = None
    user: str
    think_prefix: str = ""
    answer_prefix: str
    end_markers: tuple[str, ...] = ()
    answer_markers: tuple[str, ...] = ()

    @field_validator("user")
    @classmethod
    def _has_question_slot(cls, value: str) -> str:
        if QUESTION_SLOT not in value:
            raise ValueError(f"the user template must contain {QUESTION_SLOT!r}, got {value!r}")
        return value

    @field_validator("end_markers", "answer_markers")
    @classmethod
    def _markers_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not m for m in value):
            raise ValueError(f"markers must be non-empty strings, got {value!r}")
        return value

    def user_message(self, question: str) -> str:
        """Render the user message for ``question``."""
        return self.user.replace(QUESTION_SLOT, question)


STEPS = PromptTemplate(
    name="steps",
    system="You are a careful assistant who reasons step by step.",
    user=MATH_INSTRUCTION + "\n\n" + QUESTION_SLOT,
    think_prefix="",
    answer_prefix="\n\nFinal answer: ",
    answer_markers=("\\boxed{",),
)
"""Plain instruction models prompted to reason in blank-line separated steps; reasoning ends at ``\\boxed{``."""

PLAIN = PromptTemplate(
    name="plain",
    system=STEPS.system,
    user=PLAIN_INSTRUCTION + "\n\n" + QUESTION_SLOT,
    think_prefix=STEPS.think_prefix,
    answer_prefix=STEPS.answer_prefix,
    end_markers=STEPS.end_markers,
    answer_markers=STEPS.answer_markers,
)
"""As :data:`STEPS`, but each step is asked for as plain sentences (no numbering, labels, bold or Markdown), so
that a step's first token is a word rather than formatting."""

R1 = PromptTemplate(
    name="r1",
    system=None,
    user=MATH_INSTRUCTION + "\n\n" + QUESTION_SLOT,
    think_prefix="<think>\n",
    answer_prefix="\n</think>\n\n",
    end_markers=("</think>",),
)
"""R1-style reasoning models (DeepSeek-R1 distills, Qwen3 thinking): reasoning inside ``<think>``."""

PRESETS: dict[str, PromptTemplate] = {p.name: p for p in (STEPS, PLAIN, R1)}
"""The presets by name."""
