"""Data: samples for the three tasks, from the built-in synthetic sets or the real ones.

Real sets load through `datasets` (hub id, `save_to_disk` directory, or parquet files) and
keep their own schema; the synthetic sets are generated in exactly that schema, so both
reach the benchmark through the same row-to-sample code.
"""

from __future__ import annotations

import io
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from fuyu_ray.spec import DatasetSource

DEFAULT_SOURCES = {
    "textvqa": DatasetSource("lmms-lab/textvqa", split="validation"),
    "scienceqa": DatasetSource("lmms-lab/ScienceQA", split="test", config="ScienceQA-IMG"),
    "coco": DatasetSource("lmms-lab/COCO-Caption2017", split="val"),
}
SYNTHETIC_EVAL_SPLIT = "eval"
SYNTHETIC_TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class Sample:
    """One question about one image, whatever task it came from."""

    sample_id: str
    image: Image.Image = field(repr=False)
    question: str
    hint: str = ""
    choices: tuple[str, ...] = ()
    answer_index: int | None = None
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedSamples:
    samples: list[Sample]
    skipped: list[tuple[str, str]]  # (sample_id, reason) for rows whose image could not be read
    description: str  # the source and split, as the report names it


# --- synthetic sets -------------------------------------------------------------------------
# Small, closed vocabularies so that the built-in tiny model can learn them in a couple of
# minutes; each set tests what its name says (reading, naming a colour or shape, describing).

WORDS = ("cat", "sun", "tree", "boat", "milk", "star", "road", "fish")
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (250, 250, 250), "gray": (128, 128, 128), "black": (10, 10, 10)}
TEXTVQA_QUESTIONS = ("what word is written in the image?", "what does the sign say?", "which word is shown?")
SCIENCEQA_HINTS = ("", "The figure shows one shape.", "Look at the figure.")
CANVAS = 224


def synthetic_rows(task: str, count: int, split: str = SYNTHETIC_EVAL_SPLIT) -> list[dict[str, Any]]:
    """Deterministic rows in the real dataset's schema; `split` picks a disjoint seed stream."""
    make_row = {"textvqa": _textvqa_row, "scienceqa": _scienceqa_row, "coco": _coco_row}[task]
    rng = random.Random(f"{task}/{split}")
    return [make_row(rng, index, split) for index in range(count)]


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _textvqa_row(rng: random.Random, index: int, split: str) -> dict[str, Any]:
    word = rng.choice(WORDS)
    image = Image.new("RGB", (CANVAS, CANVAS), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    font = _font(64)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text(
        ((CANVAS - (right - left)) / 2 - left, (CANVAS - (bottom - top)) / 2 - top), word, font=font, fill=(0, 0, 0)
    )
    return {
        "question_id": f"{split}-{index}",
        "question": rng.choice(TEXTVQA_QUESTIONS),
        "image": image,
        "answers": [word] * 10,
        "image_id": f"synthetic-textvqa-{split}-{index}",
        "ocr_tokens": [word],
    }


def _draw_shape(shape: str, color: tuple[int, int, int], background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), background)
    draw = ImageDraw.Draw(image)
    box = (42, 42, CANVAS - 42, CANVAS - 42)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(CANVAS / 2, 42), (CANVAS - 42, CANVAS - 42), (42, CANVAS - 42)], fill=color)
    return image


def _scienceqa_row(rng: random.Random, index: int, split: str) -> dict[str, Any]:
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    ask_color = rng.random() < 0.5
    options = list(COLORS) if ask_color else list(SHAPES)
    correct = color if ask_color else shape
    choices = rng.sample(options, k=min(len(options), rng.choice((3, 4))))
    if correct not in choices:
        choices[rng.randrange(len(choices))] = correct
    return {
        "image": _draw_shape(shape, COLORS[color], BACKGROUNDS["white"]),
        "question": "What color is the shape?" if ask_color else "Which shape is shown?",
        "choices": choices,
        "answer": choices.index(correct),
        "hint": rng.choice(SCIENCEQA_HINTS),
        "task": "closed choice",
        "grade": "grade1",
        "subject": "natural science",
        "topic": "colors" if ask_color else "shapes",
        "category": "Identify colors" if ask_color else "Identify shapes",
        "skill": "synthetic",
        "lecture": "",
        "solution": "",
    }


def _coco_row(rng: random.Random, index: int, split: str) -> dict[str, Any]:
    color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
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
        "image": _draw_shape(shape, COLORS[color], BACKGROUNDS[background]),
        "question": "Provide a one-sentence caption for the provided image.",
        "answer": captions,
        "id": index,
        "width": CANVAS,
        "height": CANVAS,
    }


# --- rows to samples ------------------------------------------------------------------------


def to_image(value: Any) -> Image.Image:
    """Accept what `datasets` and parquet hand back: a PIL image, {'bytes', 'path'}, or bytes."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and value.get("bytes"):
        image = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = Image.open(value["path"])
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    else:
        raise ValueError("no image in the row")
    image.load()
    return image.convert("RGB")


def row_to_sample(task: str, row: dict[str, Any], index: int) -> Sample:
    """A test split may have no reference answers (null `answers`, no `answer`): such a sample
    is still timed, and scored as having no reference."""
    image = to_image(row.get("image"))
    if task == "textvqa":
        return Sample(
            sample_id=str(row.get("question_id", index)),
            image=image,
            question=row["question"],
            references=tuple(row.get("answers") or ()),
        )
    if task == "scienceqa":
        return Sample(
            sample_id=str(row.get("id", index)),
            image=image,
            question=row["question"],
            hint=row.get("hint") or "",
            choices=tuple(row["choices"]),
            answer_index=None if row.get("answer") is None else int(row["answer"]),
        )
    return Sample(
        sample_id=str(row.get("question_id", row.get("id", index))),
        image=image,
        question=row.get("question", ""),
        references=tuple(row.get("answer") or ()),
    )


def take_samples(task: str, rows, limit: int, scan_limit: int) -> tuple[list[Sample], list[tuple[str, str]]]:
    """The first `limit` rows that make a sample; a row whose image is missing or corrupt is
    skipped with its reason, and the next row takes its place (at most `scan_limit` rows read)."""
    samples, skipped = [], []
    for index, row in enumerate(rows):
        if len(samples) >= limit or index >= scan_limit:
            break
        try:
            samples.append(row_to_sample(task, row, index))
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for truncated or bad files
            sample_id = str(row.get("question_id", row.get("id", index)))
            skipped.append((sample_id, f"{type(exc).__name__}: {exc}"))
    return samples, skipped


def rows_to_samples(task: str, rows) -> tuple[list[Sample], list[tuple[str, str]]]:
    return take_samples(task, rows, limit=len(rows), scan_limit=len(rows))


def load_samples(task: str, source: DatasetSource, limit: int) -> LoadedSamples:
    if source.source == "synthetic":
        rows = synthetic_rows(task, limit)
        samples, skipped = rows_to_samples(task, rows)
        return LoadedSamples(samples, skipped, f"synthetic {task} (built-in, split {SYNTHETIC_EVAL_SPLIT})")
    rows, description = open_dataset(task, source)
    samples, skipped = take_samples(task, rows, limit, scan_limit=max(10 * limit, 1000))
    if not samples and skipped and all("no image in the row" in reason for _, reason in skipped):
        raise ValueError(
            f"{description}: none of the {len(skipped)} rows read has an image, and Fuyu answers about images"
            f"{images_hint(task, source)}"
        )
    return LoadedSamples(samples, skipped, description)


def images_hint(task: str, source: DatasetSource) -> str:
    default = DEFAULT_SOURCES[task]
    if default.config and source.config and source.config != default.config:
        return f"; config {source.config} holds text-only questions: use config {default.config}"
    return "; choose a config or split whose rows have images"


# --- opening real sets ----------------------------------------------------------------------


class DatasetNotFound(ValueError):
    """A split or config that the source does not have: bad input, named with what it does have."""


@dataclass(frozen=True)
class LocalLayout:
    """How `datasets` will read a local folder laid out like a hub repository."""

    config: str | None
    data_dir: str | None
    split: str
    files: tuple[str, ...]


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in ("dataset_info.json", "dataset_dict.json"))


def is_local_folder(source: DatasetSource) -> bool:
    path = Path(source.source)
    return path.is_dir() and not is_saved_dataset(path)


def resolve_local_folder(task: str, source: DatasetSource) -> LocalLayout:
    """The config, split and files that `datasets`' own loader reads from a folder copied from the
    hub: split files side by side (`data/validation-*.parquet`), a folder per config, or a README
    `configs:` block. Raises DatasetNotFound naming what exists."""
    import datasets

    default = DEFAULT_SOURCES[task]
    path = str(Path(source.source))
    split = source.split or default.split
    configs = datasets.get_dataset_config_names(path)
    config, data_dir = source.config, None
    if config is None and default.config in configs:
        config = default.config
    elif config is None and len(configs) > 1:
        raise DatasetNotFound(f"{path}: has configs {configs}; name one with `config:`")
    elif config is not None and config not in configs:
        if not (Path(path) / config).is_dir():  # no README block: a folder per config, read as a data_dir
            folders = sorted(p.name for p in Path(path).iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DatasetNotFound(
                f"{path}: no config {config!r}; it has configs {configs}"
                + (f" and folders {folders}" if folders else "")
            )
        config, data_dir = None, config
    builder = datasets.load_dataset_builder(path, name=config, data_dir=data_dir)
    splits = {str(name): files for name, files in (builder.config.data_files or {}).items()}
    if source.split is None and len(splits) == 1:
        split = next(iter(splits))  # files with no split in their names: `datasets` calls them train
    if split not in splits:
        where = f"config {config or data_dir}" if (config or data_dir) else path
        raise DatasetNotFound(f"{path}: no split {split!r} in {where}; it has splits {sorted(splits)}")
    return LocalLayout(config, data_dir, split, tuple(str(f) for f in splits[split]))


def describe_files(root: str, files: tuple[str, ...]) -> str:
    names = [str(Path(f).relative_to(root)) if Path(f).is_relative_to(root) else f for f in files]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"files {shown}"


def open_dataset(task: str, source: DatasetSource):
    """Rows from a save_to_disk folder, a parquet file, a folder copied from the hub, or a hub id
    (HF_HUB_OFFLINE is honoured), and a description that says which split, config and files."""
    import datasets

    default = DEFAULT_SOURCES[task]
    split = source.split or default.split
    path = Path(source.source)
    if source.source.startswith((".", "/", "~")) and not path.exists():
        raise FileNotFoundError(
            f"dataset folder {source.source} does not exist on this worker ({socket.gethostname()})"
        )
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        description = f"{path} (save_to_disk, split {split})"
    elif path.is_file() and path.suffix == ".parquet":
        dataset = datasets.load_dataset("parquet", data_files=[str(path)], split="train")
        description = f"{path} (one parquet file)"
    elif path.is_dir():
        layout = resolve_local_folder(task, source)
        # Streaming reads only the rows a cell takes, and writes no Arrow copy of the whole split.
        dataset = datasets.load_dataset(
            str(path), name=layout.config, data_dir=layout.data_dir, split=layout.split, streaming=True
        )
        config = layout.config or layout.data_dir
        description = (
            f"{path}{f' [{config}]' if config else ''}, split {split}, {describe_files(str(path), layout.files)}"
        )
    else:
        config = source.config or (default.config if source.source == default.source else None)
        dataset = datasets.load_dataset(source.source, name=config, split=split)
        description = f"{source.source}{f' [{config}]' if config else ''}, split {split}"
    return _undecoded_images(dataset), description


def _undecoded_images(dataset):
    """Decode images ourselves, per row, so that one corrupt file skips one sample, not the cell."""
    import datasets

    if isinstance((dataset.features or {}).get("image"), datasets.Image):
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset
