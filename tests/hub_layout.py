"""Local copies of the hub datasets, laid out and typed as the hub repositories are.

What a user gets by copying lmms-lab/textvqa, lmms-lab/ScienceQA or lmms-lab/COCO-Caption2017
to a disk: every split's parquet shards side by side (`data/validation-00000-of-00001.parquet`),
a folder per ScienceQA config, a README whose `configs:` block names them, and the real
features (TextVQA `question_id` int32 with null `answers` on test, ScienceQA `answer` int8
with null images in ScienceQA-FULL, COCO `answer` a list of strings). The images and
questions come from the synthetic sets, so the tiny model answers them.

Each row's id says where it came from (`<split>-<config>-<n>` or a split's own int range), so a
test can tell that every sample came from the split and config the job named.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets

from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import synthetic_rows

Image, Value, Sequence = datasets.Image, datasets.Value, datasets.Sequence
datasets.disable_progress_bars()

TEXTVQA_FEATURES = datasets.Features(
    {
        "image_id": Value("string"),
        "question_id": Value("int32"),
        "question": Value("string"),
        "question_tokens": Sequence(Value("string")),
        "image": Image(),
        "image_width": Value("int32"),
        "image_height": Value("int32"),
        "flickr_original_url": Value("string"),
        "flickr_300k_url": Value("string"),
        "answers": Sequence(Value("string")),
        "image_classes": Sequence(Value("string")),
        "set_name": Value("string"),
        "ocr_tokens": Sequence(Value("string")),
    }
)
SCIENCEQA_FEATURES = datasets.Features(
    {
        "image": Image(),
        "question": Value("string"),
        "choices": Sequence(Value("string")),
        "answer": Value("int8"),
        "hint": Value("string"),
        "task": Value("string"),
        "grade": Value("string"),
        "subject": Value("string"),
        "topic": Value("string"),
        "category": Value("string"),
        "skill": Value("string"),
        "lecture": Value("string"),
        "solution": Value("string"),
    }
)
COCO_FEATURES = datasets.Features(
    {
        "question_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answer": Sequence(Value("string")),
        "id": Value("int64"),
        "license": Value("int8"),
        "file_name": Value("string"),
        "coco_url": Value("string"),
        "height": Value("int32"),
        "width": Value("int32"),
        "date_captured": Value("string"),
    }
)
SPLIT_BASE = {"train": 100_000, "validation": 200_000, "val": 200_000, "test": 300_000}


def png(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_shards(rows: list[dict], features: datasets.Features, folder: Path, split: str, shards: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // shards)
    for index in range(shards):
        part = rows[index * size : (index + 1) * size]
        datasets.Dataset.from_list(part, features=features).to_parquet(
            str(folder / f"{split}-{index:05d}-of-{shards:05d}.parquet")
        )


def readme(configs: dict[str, dict[str, str]]) -> str:
    """The YAML header of a hub dataset card: config -> split -> file pattern."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    return "\n".join(lines + ["---", "", "A local copy of a hub dataset.", ""])


def textvqa_rows(split: str, count: int) -> list[dict]:
    rows = []
    for n, row in enumerate(synthetic_rows(get_task("textvqa"), count, f"hub-{split}")):
        rows.append(
            {
                "image_id": row["image_id"],
                "question_id": SPLIT_BASE[split] + n,
                "question": row["question"],
                "question_tokens": row["question"].split(),
                "image": png(row["image"]),
                "image_width": 224,
                "image_height": 224,
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "answers": None if split == "test" else row["answers"],  # the test split's answers are withheld
                "image_classes": ["sign"],
                "set_name": split,
                "ocr_tokens": row["ocr_tokens"],
            }
        )
    return rows


def scienceqa_rows(split: str, config: str, count: int) -> list[dict]:
    rows = []
    for n, row in enumerate(synthetic_rows(get_task("scienceqa"), count, f"hub-{split}-{config}")):
        text_only = config == "ScienceQA-FULL" and n % 2 == 0  # FULL mixes in questions with no image
        rows.append(
            {
                **row,
                "image": None if text_only else png(row["image"]),
                "question": f"{row['question']}",
                "solution": f"{split}-{config}-{n}",
            }
        )
    return rows


def coco_rows(split: str, count: int) -> list[dict]:
    rows = []
    for n, row in enumerate(synthetic_rows(get_task("coco"), count, f"hub-{split}")):
        rows.append(
            {
                "question_id": f"{split}-{n:06d}.jpg",
                "image": png(row["image"]),
                "question": row["question"],
                "answer": [] if split == "test" else row["answer"],  # no captions published for test
                "id": SPLIT_BASE[split] + n,
                "license": 1,
                "file_name": f"{split}-{n:06d}.jpg",
                "coco_url": "",
                "height": 224,
                "width": 224,
                "date_captured": "2017-01-01",
            }
        )
    return rows


def make_textvqa(root: Path, count: int = 8, with_readme: bool = True) -> Path:
    folder = root / "textvqa"
    for split in ("train", "validation", "test"):
        write_shards(textvqa_rows(split, count), TEXTVQA_FEATURES, folder / "data", split)
    if with_readme:
        (folder / "README.md").write_text(
            readme({"default": {s: f"data/{s}-*" for s in ("train", "validation", "test")}})
        )
    return folder


def make_scienceqa(root: Path, count: int = 8, with_readme: bool = True) -> Path:
    folder = root / "ScienceQA"
    configs = ("ScienceQA-FULL", "ScienceQA-IMG")
    for config in configs:
        for split in ("train", "validation", "test"):
            write_shards(scienceqa_rows(split, config, count), SCIENCEQA_FEATURES, folder / config, split, shards=1)
    if with_readme:
        (folder / "README.md").write_text(
            readme({c: {s: f"{c}/{s}-*" for s in ("train", "validation", "test")} for c in configs})
        )
    return folder


def make_coco(root: Path, count: int = 8, with_readme: bool = True) -> Path:
    folder = root / "COCO-Caption2017"
    for split in ("val", "test"):
        write_shards(coco_rows(split, count), COCO_FEATURES, folder / "data", split)
    if with_readme:
        (folder / "README.md").write_text(readme({"default": {s: f"data/{s}-*" for s in ("val", "test")}}))
    return folder
