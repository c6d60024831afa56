"""What a task is: where its rows come from, how a row becomes a sample, what is asked, and how
an answer is scored. Each task module defines one `Task`; nothing outside `fuyu_ray.tasks`
knows one task from another.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One question about one image, whatever task it came from."""

    sample_id: str
    image: Image.Image = field(repr=False)
    question: str
    hint: str = ""
    choices: tuple[str, ...] = ()
    answer_index: int | None = None
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskScore:
    accuracy: float | None
    metric: str
    ci_low: float | None
    ci_high: float | None
    n: int
    per_sample: list[float | None]
    lenient: float | None = None
    per_sample_lenient: list[float] | None = None
    bleu4: float | None = None
    note: str | None = None
    tokenizer: str | None = None


Row = dict[str, Any]


@dataclass(frozen=True)
class Scoring:
    """How a kind of task is scored and shown; tasks of a kind share one (see scorers.py)."""

    metric: str  # what `accuracy` is, in cells.parquet
    legend: str  # what the report's accuracy column holds
    scale: float  # the report shows accuracy x scale: 100 for proportions, 1 for CIDEr
    axis_label: str  # a plot's accuracy axis
    score: Callable[[Sequence[Sample], Sequence[str]], TaskScore]  # samples with references only
    training_answer: Callable[[Sample], str]  # what the built-in tiny model learns to answer
    paired: bool = False  # each sample right (1) or wrong (0): two runs compare by counting what changed (McNemar)

    @property
    def proportion(self) -> bool:
        """Scores in [0, 1], shown in percent and their differences in points; else shown as they are (CIDEr)."""
        return self.scale == 100


@dataclass(frozen=True)
class Task:
    name: str  # as jobs and cells.parquet name it
    title: str  # as the report names it
    source: str  # the hub dataset it is read from unless a job says otherwise
    split: str
    config: str | None
    template: str  # {question}, {context} and {options} are filled in; a job may override it
    max_new_tokens: int
    scoring: Scoring
    to_sample: Callable[[Row, int], Sample]  # a row of the dataset, in its real schema
    synthetic_row: Callable[[random.Random, int, str], Row]  # a built-in row in the real schema
    tiny_examples: int = 0  # training examples for tiny; 0 leaves the task out of its training
    capitalize_question: bool = False

    def render(self, template: str, sample: Sample, context_words: list[str], question_words: list[str]) -> str:
        """The prompt text, Fuyu's trailing newline included, from the words of context and question kept."""
        context = " ".join(context_words)
        question = " ".join(question_words)
        if self.capitalize_question:
            question = question.capitalize()
        text = template.format(
            question=question,
            context=f"Context: {context}\n" if context else "",
            options=option_lines(sample.choices),
        )
        return text + "\n"


def option_lines(choices: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", choices))


def question_with_answers(row: Row, index: int) -> Sample:
    """A question and its answers as a list of strings, as TextVQA and OK-VQA keep them; a test
    split's null `answers` make a sample that is timed, and scored as having no reference."""
    image = to_image(row.get("image"))
    return Sample(
        sample_id=str(row.get("question_id", index)),
        image=image,
        question=row["question"],
        references=tuple(row.get("answers") or ()),
    )


def to_image(value: Any) -> Image.Image:
    """Accept what `datasets` and parquet hand back: a PIL image, {'bytes', 'path'}, or bytes."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and value.get("bytes"):
        image = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    else:
        raise ValueError("no image in the row")
    image.load()
    return image.convert("RGB")


NO_REFERENCES = "this split has no reference answers (a test split often has none): timed, not scored"


def has_reference(sample: Sample) -> bool:
    return bool(sample.references) or sample.answer_index is not None


def unscored(task: Task, n: int) -> TaskScore:
    return TaskScore(None, task.scoring.metric, None, None, n, [None] * n)


def score_answers(task: Task, samples: Sequence[Sample], predictions: Sequence[str]) -> TaskScore:
    """The task's metric over a cell's answers; a cell with no samples or no references is not scored."""
    if not samples:
        return TaskScore(None, task.scoring.metric, None, None, 0, [], note="no samples could be scored")
    if not any(has_reference(s) for s in samples):
        return TaskScore(None, task.scoring.metric, None, None, 0, [None] * len(samples), note=NO_REFERENCES)
    return task.scoring.score(samples, predictions)


def synthetic_rows(task: Task, count: int, split: str) -> list[Row]:
    """Deterministic rows in the real dataset's schema; `split` picks a disjoint seed stream."""
    rng = random.Random(f"{task.name}/{split}")
    return [task.synthetic_row(rng, index, split) for index in range(count)]
