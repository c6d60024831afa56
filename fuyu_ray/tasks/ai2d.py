"""AI2D: questions about science diagrams, answered with an option letter (lmms-lab/ai2d, test;
lmms-eval's prompt). The hub's `answer` is the correct option's index, as a string."""

from __future__ import annotations

import random

from fuyu_ray.tasks import scorers, synthetic
from fuyu_ray.tasks.base import Row, Sample, Task, to_image


def to_sample(row: Row, index: int) -> Sample:
    image = to_image(row.get("image"))
    answer = row.get("answer")
    return Sample(
        sample_id=str(row.get("question_id", index)),
        image=image,
        question=row["question"],
        choices=tuple(row["options"]),
        answer_index=None if answer in (None, "") else int(answer),
    )


def synthetic_row(rng: random.Random, index: int, split: str) -> Row:
    color, shape = rng.choice(list(synthetic.COLORS)), rng.choice(synthetic.SHAPES)
    options = list(synthetic.SHAPES) + ["line"]
    rng.shuffle(options)
    return {
        "question": "Which shape does the diagram show?",
        "options": options,
        "answer": str(options.index(shape)),
        "image": synthetic.draw_shape(shape, synthetic.COLORS[color], synthetic.BACKGROUNDS["white"]),
    }


TASK = Task(
    name="ai2d",
    title="AI2D",
    source="lmms-lab/ai2d",
    split="test",
    config=None,
    template="{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    max_new_tokens=16,
    scoring=scorers.OPTION_LETTER,
    to_sample=to_sample,
    synthetic_row=synthetic_row,
)
