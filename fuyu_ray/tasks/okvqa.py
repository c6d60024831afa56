"""OK-VQA: questions that need outside knowledge (lmms-lab/OK-VQA, val2014; lmms-eval's prompt).

The hub rows hold 10 answers as plain strings; scored with VQA accuracy over the 10. lmms-eval
sets no generation length for this task (Fuyu's wrapper then allows 256 tokens); the answer
asked for is a word or phrase, so 16 tokens, as for the other short-answer tasks.
"""

from __future__ import annotations

import random

from fuyu_ray.tasks import scorers, synthetic
from fuyu_ray.tasks.base import Row, Task, question_with_answers

# What each synthetic shape is known as: a fact about the object, not read off the image.
KNOWN_AS = {"circle": "round", "square": "four sides", "triangle": "three sides"}


def synthetic_row(rng: random.Random, index: int, split: str) -> Row:
    color, shape = rng.choice(list(synthetic.COLORS)), rng.choice(synthetic.SHAPES)
    return {
        "question_id": f"{split}-{index}",
        "image": synthetic.draw_shape(shape, synthetic.COLORS[color], synthetic.BACKGROUNDS["white"]),
        "question": "How many sides does this shape have?" if shape != "circle" else "What is this shape like?",
        "answers": [KNOWN_AS[shape]] * 10,
        "question_type": "other",
        "answer_type": "other",
    }


TASK = Task(
    name="okvqa",
    title="OK-VQA",
    source="lmms-lab/OK-VQA",
    split="val2014",
    config=None,
    template=(
        "{question}\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
        "Answer the question using a single word or phrase."
    ),
    max_new_tokens=16,
    scoring=scorers.VQA,
    to_sample=question_with_answers,
    synthetic_row=synthetic_row,
)
