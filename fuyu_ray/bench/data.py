"""Data: a cell's samples, from the built-in synthetic rows or a real set.

Real sets load through `datasets` (hub id, `save_to_disk` directory, or parquet files) and
keep their own schema; the synthetic rows are generated in exactly that schema, so both
reach the benchmark through the task's own row-to-sample code.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from fuyu_ray.job.spec import DatasetSource
from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import Sample, synthetic_rows
from fuyu_ray.tasks.synthetic import EVAL_SPLIT


@dataclass(frozen=True)
class LoadedSamples:
    samples: list[Sample]
    skipped: list[tuple[str, str]]  # (sample_id, reason) for rows whose image could not be read
    description: str  # the source and split, as the report names it


def take_samples(task: str, rows, limit: int, scan_limit: int) -> tuple[list[Sample], list[tuple[str, str]]]:
    """The first `limit` rows that make a sample; a row whose image is missing or corrupt is
    skipped with its reason, and the next row takes its place (at most `scan_limit` rows read)."""
    to_sample = get_task(task).to_sample
    samples, skipped = [], []
    for index, row in enumerate(rows):
        if len(samples) >= limit or index >= scan_limit:
            break
        try:
            samples.append(to_sample(row, index))
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for truncated or bad files
            sample_id = str(row.get("question_id", row.get("id", index)))
            skipped.append((sample_id, f"{type(exc).__name__}: {exc}"))
    return samples, skipped


def rows_to_samples(task: str, rows) -> tuple[list[Sample], list[tuple[str, str]]]:
    return take_samples(task, rows, limit=len(rows), scan_limit=len(rows))


def load_samples(task: str, source: DatasetSource, limit: int) -> LoadedSamples:
    if source.source == "synthetic":
        rows = synthetic_rows(get_task(task), limit, EVAL_SPLIT)
        samples, skipped = rows_to_samples(task, rows)
        return LoadedSamples(samples, skipped, f"synthetic {task} (built-in, split {EVAL_SPLIT})")
    rows, description = open_dataset(task, source)
    samples, skipped = take_samples(task, rows, limit, scan_limit=max(10 * limit, 1000))
    if not samples and skipped and all("no image in the row" in reason for _, reason in skipped):
        raise ValueError(
            f"{description}: none of the {len(skipped)} rows read has an image, and Fuyu answers about images"
            f"{images_hint(task, source)}"
        )
    return LoadedSamples(samples, skipped, description)


def images_hint(task: str, source: DatasetSource) -> str:
    default = get_task(task)
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
    import datasets  # heavy: the driver imports this module for folder checks and starts without it

    default = get_task(task)
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
    import datasets  # heavy: the driver imports this module for folder checks and starts without it

    default = get_task(task)
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
    import datasets  # heavy: the driver imports this module for folder checks and starts without it

    if isinstance((dataset.features or {}).get("image"), datasets.Image):
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset
