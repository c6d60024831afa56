"""VQAv2: open questions about everyday images (lmms-lab/VQAv2, validation; lmms-eval's prompt).

The hub rows hold 10 human answers as {answer, answer_confidence, answer_id}; scored with VQA
accuracy over the 10, as EvalAI does.
"""

from __future__ import annotations

import random

from fuyu_ray.tasks import scorers, synthetic
from fuyu_ray.tasks.base import Row, Sample, Task, to_image


def to_sample(row: Row, index: int) -> Sample:
    """The test and test-dev splits have no `answers`: timed, and scored as having no reference."""
    image = to_image(row.get("image"))
    return Sample(
        sample_id=str(row.get("question_id", index)),
        image=image,
        question=row["question"],
        references=tuple(answer["answer"] for answer in row.get("answers") or ()),
    )


def synthetic_row(rng: random.Random, index: int, split: str) -> Row:
    color, shape = rng.choice(list(synthetic.COLORS)), rng.choice(synthetic.SHAPES)
    background = rng.choice(list(synthetic.BACKGROUNDS))
    ask_color = rng.random() < 0.5
    answer = color if ask_color else shape
    return {
        "question_type": "what color is the" if ask_color else "what is the",
        "multiple_choice_answer": answer,
        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": n + 1} for n in range(10)],
        "image_id": index,
        "answer_type": "other",
        "question_id": index * 1000 + 1,
        "question": "What color is the shape?" if ask_color else "What shape is this?",
        "image": synthetic.draw_shape(shape, synthetic.COLORS[color], synthetic.BACKGROUNDS[background]),
    }


TASK = Task(
    name="vqav2",
    title="VQAv2",
    source="lmms-lab/VQAv2",
    split="validation",
    config=None,
    template="{question}\nAnswer the question using a single word or phrase.",
    max_new_tokens=16,
    scoring=scorers.VQA,
    to_sample=to_sample,
    synthetic_row=synthetic_row,
)
