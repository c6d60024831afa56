"""Prompts: a task's template, or the job's override of it, capped to `seq_len` tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fuyu_ray.job.spec import TaskOverride
from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import Sample


@dataclass(frozen=True)
class Prompt:
    text: str  # exactly what goes to the processor, trailing newline included (Fuyu's format)
    text_tokens: int
    truncated: bool


@dataclass(frozen=True)
class TaskSettings:
    task: str
    template: str
    max_new_tokens: int

    @classmethod
    def for_task(cls, task: str, override: TaskOverride) -> "TaskSettings":
        return cls(
            task=task,
            template=override.template or get_task(task).template,
            max_new_tokens=override.max_new_tokens or get_task(task).max_new_tokens,
        )


def render(settings: TaskSettings, sample: Sample, context_words: list[str], question_words: list[str]) -> str:
    return get_task(settings.task).render(settings.template, sample, context_words, question_words)


def build_prompt(settings: TaskSettings, sample: Sample, seq_len: int, count_tokens: Callable[[str], int]) -> Prompt:
    """Cap the prompt text at `seq_len` tokens: drop the context's start first, then the question's start.

    The question's end is what is asked, so it is the last thing to go; the template and
    options are never cut, since a prompt without them is a different task.
    """
    context_words = sample.hint.split()
    question_words = sample.question.split()
    text = render(settings, sample, context_words, question_words)
    tokens = count_tokens(text)
    truncated = False
    for words in (context_words, question_words):
        while tokens > seq_len and words:
            del words[0]
            truncated = True
            text = render(settings, sample, context_words, question_words)
            tokens = count_tokens(text)
    return Prompt(text=text, text_tokens=tokens, truncated=truncated)
