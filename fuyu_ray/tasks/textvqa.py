"""TextVQA: read the text in the image (lmms-lab/textvqa, validation; lmms-eval's prompt)."""

from __future__ import annotations

import random

from fuyu_ray.tasks import scorers, synthetic
from fuyu_ray.tasks.base import Row, Sample, Task, to_image

QUESTIONS = ("what word is written in the image?", "what does the sign say?", "which word is shown?")


def to_sample(row: Row, index: int) -> Sample:
    """A test split has null `answers`: such a sample is timed, and scored as having no reference."""
    image = to_image(row.get("image"))
    return Sample(
        sample_id=str(row.get("question_id", index)),
        image=image,
        question=row["question"],
        references=tuple(row.get("answers") or ()),
    )


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
    metric=scorers.VQA_METRIC,
    legend=scorers.VQA_LEGEND,
    scale=100,
    axis_label="accuracy",
    to_sample=to_sample,
    score=scorers.vqa_accuracy,
    synthetic_row=synthetic_row,
    training_answer=scorers.first_reference,
    tiny_examples=384,
    capitalize_question=True,
)
