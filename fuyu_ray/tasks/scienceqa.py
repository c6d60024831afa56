"""ScienceQA: pick the option (lmms-lab/ScienceQA, config ScienceQA-IMG, test; lmms-eval's prompt)."""

from __future__ import annotations

import random

from fuyu_ray.tasks import scorers, synthetic
from fuyu_ray.tasks.base import Row, Sample, Task, to_image

HINTS = ("", "The figure shows one shape.", "Look at the figure.")


def to_sample(row: Row, index: int) -> Sample:
    image = to_image(row.get("image"))
    return Sample(
        sample_id=str(row.get("id", index)),
        image=image,
        question=row["question"],
        hint=row.get("hint") or "",
        choices=tuple(row["choices"]),
        answer_index=None if row.get("answer") is None else int(row["answer"]),
    )


def synthetic_row(rng: random.Random, index: int, split: str) -> Row:
    color, shape = rng.choice(list(synthetic.COLORS)), rng.choice(synthetic.SHAPES)
    ask_color = rng.random() < 0.5
    options = list(synthetic.COLORS) if ask_color else list(synthetic.SHAPES)
    correct = color if ask_color else shape
    choices = rng.sample(options, k=min(len(options), rng.choice((3, 4))))
    if correct not in choices:
        choices[rng.randrange(len(choices))] = correct
    return {
        "image": synthetic.draw_shape(shape, synthetic.COLORS[color], synthetic.BACKGROUNDS["white"]),
        "question": "What color is the shape?" if ask_color else "Which shape is shown?",
        "choices": choices,
        "answer": choices.index(correct),
        "hint": rng.choice(HINTS),
        "task": "closed choice",
        "grade": "grade1",
        "subject": "natural science",
        "topic": "colors" if ask_color else "shapes",
        "category": "Identify colors" if ask_color else "Identify shapes",
        "skill": "synthetic",
        "lecture": "",
        "solution": "",
    }


TASK = Task(
    name="scienceqa",
    title="ScienceQA",
    source="lmms-lab/ScienceQA",
    split="test",
    config="ScienceQA-IMG",
    template="{context}{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    max_new_tokens=16,
    scoring=scorers.OPTION_LETTER,
    to_sample=to_sample,
    synthetic_row=synthetic_row,
    tiny_examples=768,  # option letters must be read off shuffled options, the hardest of the three
)
