"""Prompts: what each task asks, and how a prompt is capped to `seq_len`.

Prompts and generation lengths follow lmms-eval's settings for Fuyu, so that our accuracy
is the one the community reports; a job may override them per task.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable, Sequence

from fuyu_ray.data import Sample
from fuyu_ray.spec import TaskOverride

DEFAULT_TEMPLATES = {
    "textvqa": "{question}\nAnswer the question using a single word or phrase.",
    "scienceqa": "{context}{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    "coco": "Provide a one-sentence caption for the provided image.",
}
DEFAULT_MAX_NEW_TOKENS = {"textvqa": 16, "scienceqa": 16, "coco": 64}


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
            template=override.template or DEFAULT_TEMPLATES[task],
            max_new_tokens=override.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task],
        )


def option_lines(choices: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices))


def render(settings: TaskSettings, sample: Sample, context_words: list[str], question_words: list[str]) -> str:
    context = " ".join(context_words)
    question = " ".join(question_words)
    if settings.task == "textvqa":
        question = question.capitalize()
    text = settings.template.format(
        question=question,
        context=f"Context: {context}\n" if context else "",
        options=option_lines(sample.choices),
    )
    return text + "\n"


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
