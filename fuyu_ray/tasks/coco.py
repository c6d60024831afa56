"""COCO captions: describe the image (lmms-lab/COCO-Caption2017, val; lmms-eval's prompt; CIDEr-D)."""

from __future__ import annotations

import random

from fuyu_ray.tasks import scorers, synthetic
from fuyu_ray.tasks.base import Row, Sample, Task, to_image

PROMPT = "Provide a one-sentence caption for the provided image."


def to_sample(row: Row, index: int) -> Sample:
    """The test split has no `answer`: such a sample is timed, and scored as having no reference."""
    image = to_image(row.get("image"))
    return Sample(
        sample_id=str(row.get("question_id", row.get("id", index))),
        image=image,
        question=row.get("question", ""),
        references=tuple(row.get("answer") or ()),
    )


def synthetic_row(rng: random.Random, index: int, split: str) -> Row:
    color, shape = rng.choice(list(synthetic.COLORS)), rng.choice(synthetic.SHAPES)
    background = rng.choice(list(synthetic.BACKGROUNDS))
    captions = [
        f"a {color} {shape} on a {background} background.",
        f"a {color} {shape} in front of a {background} background.",
        f"there is a {color} {shape} on {background}.",
        f"a picture of a {color} {shape}.",
        f"a {shape} colored {color} on a {background} background.",
    ]
    file_name = f"synthetic_{split}_{index:06d}.jpg"
    return {
        "question_id": file_name,
        "image": synthetic.draw_shape(shape, synthetic.COLORS[color], synthetic.BACKGROUNDS[background]),
        "question": PROMPT,
        "answer": captions,
        "id": index,
        "width": synthetic.CANVAS,
        "height": synthetic.CANVAS,
    }


TASK = Task(
    name="coco",
    title="COCO",
    source="lmms-lab/COCO-Caption2017",
    split="val",
    config=None,
    template=PROMPT,
    max_new_tokens=64,
    scoring=scorers.CAPTION,
    to_sample=to_sample,
    synthetic_row=synthetic_row,
    tiny_examples=384,
)
