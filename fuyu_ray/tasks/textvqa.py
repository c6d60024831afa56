"""TextVQA: read the text in the image (lmms-lab/textvqa, validation; lmms-eval's prompt)."""

from __future__ import annotations

import random

from fuyu_ray.tasks import scorers, synthetic
from fuyu_ray.tasks.base import Row, Task, question_with_answers

QUESTIONS = ("what word is written in the image?", "what does the sign say?", "which word is shown?")


def synthetic_row(rng: random.Random, index: int, split: str) -> Row:
    word = rng.choice(synthetic.WORDS)
    return {
        "question_id": f"{split}-{index}",
        "question": rng.choice(QUESTIONS),
        "image": synthetic.draw_word(word),
        "answers": [word] * 10,
        "image_id": f"synthetic-textvqa-{split}-{index}",
        "ocr_tokens": [word],
    }


TASK = Task(
    name="textvqa",
    title="TextVQA",
    source="lmms-lab/textvqa",
    split="validation",
    config=None,
    template="{question}\nAnswer the question using a single word or phrase.",
    max_new_tokens=16,
    scoring=scorers.VQA,
    to_sample=question_with_answers,
    synthetic_row=synthetic_row,
    tiny_examples=384,
    capitalize_question=True,
)
