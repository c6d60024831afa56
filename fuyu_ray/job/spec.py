"""Job spec: the YAML job file, parsed into typed, validated dataclasses.

Everything a run depends on is decided here, before Ray starts or any file is written,
so bad input is one line naming the file and the key, and nothing else happens.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from fuyu_ray.job.presets import DEVICES, PRESET_NAMES
from fuyu_ray.job.prices import Prices, parse_prices
from fuyu_ray.job.quality import QualityThresholds
from fuyu_ray.tasks import TASKS as task_registry

TASKS = tuple(task_registry)
WEIGHTS = ("pretrained", "random")
AXES = ("device", "dataset", "batch_size", "image_size", "seq_len", "optimization")
POSITIVE_INT_AXES = ("batch_size", "seq_len")
_WIDTH_BY_HEIGHT = re.compile(r"(\d+)\s*[xX]\s*(\d+)")


class JobError(ValueError):
    """A job file that cannot be run: one line per problem, each naming the file and the key."""

    @property
    def lines(self) -> list[str]:
        return str(self).splitlines()


@dataclass(frozen=True)
class DatasetSource:
    """Where one task's samples come from: `synthetic`, a hub id or a local path."""

    source: str = "synthetic"
    split: str | None = None
    config: str | None = None


@dataclass(frozen=True)
class TaskOverride:
    """Per-task prompt template and generation length, when the job overrides the defaults."""

    template: str | None = None
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class ImageSize:
    """An image size, parsed once from the job (S for S x S pixels, also written "SxS"; or "WxH"), and the one
    value everything downstream reads: its width, height and label."""

    width: int
    height: int

    @classmethod
    def parse(cls, value: Any) -> "ImageSize":
        if isinstance(value, ImageSize):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return cls(value, value)
        match = _WIDTH_BY_HEIGHT.fullmatch(value.strip()) if isinstance(value, str) else None
        width, height = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        if width <= 0 or height <= 0:
            raise ValueError(f"must be a positive integer S (S x S pixels) or 'WxH' such as '1920x1080', got {value!r}")
        return cls(width, height)

    @classmethod
    def of_record(cls, row: dict) -> "ImageSize":
        """A cell record's image: its width and height columns (image_size alone in older records)."""
        return cls(row.get("image_width") or row["image_size"], row.get("image_height") or row["image_size"])

    @property
    def square(self) -> bool:
        return self.width == self.height

    @property
    def label(self) -> str:
        return str(self.width) if self.square else f"{self.width}x{self.height}"

    @property
    def side(self) -> int | None:
        """What a record keeps as `image_size`: S for a square, null for "WxH"."""
        return self.width if self.square else None

    @property
    def job_value(self) -> int | str:
        """As a job writes it, and as a cell's id hashes it: S, or "WxH"."""
        return self.width if self.square else self.label

    def __str__(self) -> str:
        return self.label


PATCH = 30  # Fuyu's image patch side in pixels


def padded_side(pixels: int) -> int:
    return math.ceil(pixels / PATCH) * PATCH


def padded_dims(image: ImageSize) -> tuple[int, int]:
    """(width, height) of the canvas the processor pads the image to: whole patches."""
    return padded_side(image.width), padded_side(image.height)


def image_token_count(image: ImageSize) -> int:
    """rows * (cols + 1), rows = ceil(H / 30), cols = ceil(W / 30): each row of patches ends with a |NEWLINE| token.
    Exact, so the cost model can predict an image size that was not run."""
    width, height = padded_dims(image)
    return (height // PATCH) * (width // PATCH + 1)


def decode_context(prompt_tokens, generated_tokens):
    """The context a decode step reads on average: the prompt plus half the generated tokens. For
    figures or Polars expressions alike: the worker records it, the cost model fits and predicts with it."""
    return prompt_tokens + generated_tokens / 2


@dataclass(frozen=True)
class Point:
    """One setting of every axis: the base of all sweeps, or one grid cell's settings."""

    device: str
    dataset: str
    batch_size: int
    image_size: ImageSize
    seq_len: int
    optimization: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", ImageSize.parse(self.image_size))  # S, "WxH" or an ImageSize


@dataclass(frozen=True)
class PublishedFigures:
    """Figures someone published for this model, to be shown beside ours: in the unit papers use
    (percent; CIDEr x 100), from `source`, with what is known to differ in `note`."""

    source: str
    figures: dict[str, float]
    note: str | None = None


@dataclass(frozen=True)
class JobSpec:
    name: str
    model: str
    base: Point
    sweeps: dict[str, dict[str, list[Any]]]
    weights: str = "pretrained"
    limit: int = 16  # samples per cell
    datasets: dict[str, DatasetSource] = field(default_factory=dict)
    tasks: dict[str, TaskOverride] = field(default_factory=dict)
    cpus_per_actor: int | None = None
    cell_timeout_s: float = 1800.0
    max_actors_per_variant: int | None = 1  # None: as many as the cluster has room for
    min_energy_window_s: float = 1.0
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    remeasure_disturbed: int = 0  # measure a disturbed cell again up to this many times, keeping the cleanest
    published: PublishedFigures | None = None
    prices: Prices | None = None  # what a worker's hour and a kWh cost: the report's cost per 1,000 answers
    # sweep -> the optimization its other presets' answers are paired with (`reference:` in the sweep;
    # by default the first listed)
    references: dict[str, str] = field(default_factory=dict)
    source_path: str = ""

    def dataset_source(self, task: str) -> DatasetSource:
        return self.datasets.get(task, DatasetSource())

    def runner_options(self) -> dict[str, Any]:
        """What every worker's CellRunner is built with."""
        return {
            "min_energy_window_s": self.min_energy_window_s,
            "quality": self.quality,
            "remeasure_disturbed": self.remeasure_disturbed,
        }


DEFAULTS = {f.name: f.default for f in fields(JobSpec) if f.default is not MISSING}  # what a job may leave out
TOP_KEYS = {
    "name",
    "model",
    "weights",
    "limit",
    "datasets",
    "tasks",
    "base",
    "sweeps",
    "cpus_per_actor",
    "cell_timeout_s",
    "max_actors_per_variant",
    "min_energy_window_s",
    "quality",
    "remeasure_disturbed",
    "published",
    "prices",
}
REQUIRED_TOP_KEYS = ("name", "model", "base", "sweeps")


def load_job(path: str | Path) -> JobSpec:
    import yaml  # here, not at the top: the per-cell core imports this module on bare GPU boxes without PyYAML

    path = Path(path)
    if not path.is_file():
        raise JobError(f"{path}: job file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise JobError(f"{path}: broken YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_job(raw, str(path))


def parse_job(raw: Any, origin: str) -> JobSpec:
    def fail(key: str, problem: str) -> JobError:
        return JobError(f"{origin}: {key}: {problem}")

    if not isinstance(raw, dict):
        raise JobError(f"{origin}: the job must be a YAML mapping")
    for key in raw:
        if key not in TOP_KEYS:
            raise fail(str(key), f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    for key in REQUIRED_TOP_KEYS:
        if key not in raw:
            raise fail(key, "missing")

    problems: list[str] = []

    def checked(parse, *args):
        """Each part of the job is checked on its own, so one run names every broken part, not just the first."""
        try:
            return parse(*args)
        except JobError as exc:
            problems.append(str(exc))
            return None

    name = checked(_string, raw["name"], "name", fail)
    model = checked(_model, raw["model"], fail)
    weights = checked(_choice, raw.get("weights", DEFAULTS["weights"]), "weights", WEIGHTS, fail)
    limit = checked(_positive_int, raw.get("limit", DEFAULTS["limit"]), "limit", fail)
    base = checked(_parse_point, raw["base"], "base", fail)
    sweeps = checked(_parse_sweeps, raw["sweeps"], fail)
    references = checked(_parse_references, raw["sweeps"], sweeps, fail) if sweeps else {}
    # Absent or empty means none; any other non-mapping, `datasets: []` or `tasks: 0` included, is a mistake.
    datasets = checked(lambda: _parse_datasets(_mapping(raw.get("datasets"), "datasets", fail), fail))
    tasks = checked(lambda: _parse_tasks(_mapping(raw.get("tasks"), "tasks", fail), fail))
    cpus = raw.get("cpus_per_actor")
    cpus_per_actor = None if cpus is None else checked(_positive_int, cpus, "cpus_per_actor", fail)
    cell_timeout_s = checked(
        _positive_number, raw.get("cell_timeout_s", DEFAULTS["cell_timeout_s"]), "cell_timeout_s", fail
    )
    max_actors = checked(_actor_cap, raw.get("max_actors_per_variant", DEFAULTS["max_actors_per_variant"]), fail)
    min_energy_window_s = checked(
        _positive_number, raw.get("min_energy_window_s", DEFAULTS["min_energy_window_s"]), "min_energy_window_s", fail
    )
    quality = checked(_quality, raw.get("quality"), fail)
    remeasure = checked(
        _count, raw.get("remeasure_disturbed", DEFAULTS["remeasure_disturbed"]), "remeasure_disturbed", fail
    )
    published = checked(_published, raw.get("published"), fail)
    prices = checked(parse_prices, raw.get("prices"), fail)
    if problems:
        raise JobError("\n".join(problems))
    return JobSpec(
        name=name,
        model=model,
        weights=weights,
        limit=limit,
        base=base,
        sweeps=sweeps,
        datasets=datasets,
        tasks=tasks,
        cpus_per_actor=cpus_per_actor,
        cell_timeout_s=cell_timeout_s,
        max_actors_per_variant=max_actors,
        min_energy_window_s=min_energy_window_s,
        quality=quality,
        remeasure_disturbed=remeasure,
        published=published,
        prices=prices,
        references=references,
        source_path=origin,
    )


BUILT_IN_MODELS = ("tiny", "standin")  # names that are neither a hub id nor a path


def is_stand_in(model: str) -> bool:
    """`standin` or `standin:options`: the model that sleeps instead of computing (bench/standin.py)."""
    return model == "standin" or model.startswith("standin:")


def is_built_in(model: str) -> bool:
    """Built-in models ship with the package: they resolve on every worker that runs it."""
    return model == "tiny" or is_stand_in(model)


def _model(value: Any, fail) -> str:
    """A hub id (owner/name), a local path, or a built-in name; a near miss of a built-in name is a typo,
    not a hub id: a bare hub name without an owner would only fail later, on a worker, offline."""
    import difflib

    model = _string(value, "model", fail)
    if "/" in model or model.startswith((".", "~")) or Path(model).expanduser().exists():
        return model
    if is_built_in(model):
        return model
    close = difflib.get_close_matches(model, BUILT_IN_MODELS, n=1, cutoff=0.6)
    if close:
        raise fail("model", f"unknown model {model!r}: did you mean {close[0]!r}?")
    return model


def _choice(value: Any, key: str, known: tuple[str, ...], fail) -> str:
    if value not in known:
        raise fail(key, f"unknown value {value!r} (known: {', '.join(known)})")
    return value


def _published(value: Any, fail) -> PublishedFigures | None:
    if value is None:
        return None
    raw = _mapping(value, "published", fail)
    unknown = set(raw) - {"source", "figures", "note"}
    if unknown:
        raise fail(f"published.{sorted(unknown)[0]}", "unknown key (known: figures, note, source)")
    if "source" not in raw or "figures" not in raw:
        raise fail("published", "needs `source` (where the figures come from) and `figures` ({task: figure})")
    figures = {}
    for task, figure in _mapping(raw["figures"], "published.figures", fail).items():
        if task not in TASKS:
            raise fail(f"published.figures.{task}", f"unknown dataset (known: {', '.join(TASKS)})")
        if isinstance(figure, bool) or not isinstance(figure, (int, float)) or not math.isfinite(figure):
            raise fail(f"published.figures.{task}", f"must be a number, got {figure!r}")
        figures[task] = float(figure)
    note = raw.get("note")
    return PublishedFigures(
        source=_string(raw["source"], "published.source", fail),
        figures=figures,
        note=None if note is None else _string(note, "published.note", fail),
    )


def _string(value: Any, key: str, fail) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


TEMPLATE_FIELDS = ("question", "context", "options")


def _template(value: Any, key: str, fail) -> str:
    """A prompt template may use {question}, {context} and {options}, nothing else."""
    text = _string(value, key, fail)
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise fail(key, f"not a valid template ({exc})") from None
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise fail(
            key, f"unknown field {{{sorted(unknown)[0]}}} (known: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})"
        )
    return text


def _positive_int(value: Any, key: str, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(key, f"must be a positive integer, got {value!r}")
    return value


def _actor_cap(value: Any, fail) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail("max_actors_per_variant", f"must be a positive integer or 'auto', got {value!r}")
    return value


def _quality(value: Any, fail) -> QualityThresholds:
    try:
        return QualityThresholds.from_mapping(_mapping(value, "quality", fail))
    except ValueError as exc:
        raise fail("quality", str(exc)) from None


def _count(value: Any, key: str, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(key, f"must be a whole number >= 0, got {value!r}")
    return value


def _mapping(value: Any, key: str, fail) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(key, f"must be a mapping, got {value!r}")
    return value


def _positive_number(value: Any, key: str, fail) -> float:
    # NaN compares false with everything, and infinity would switch a limit off: both are refused.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise fail(key, f"must be a positive finite number, got {value!r}")
    return float(value)


def check_axis_value(axis: str, value: Any, key: str, fail) -> Any:
    """Validate one value of one axis; `key` is the dotted path shown to the user."""
    if axis == "device":
        if value not in DEVICES:
            raise fail(key, f"unknown device {value!r} (known: {', '.join(DEVICES)})")
    elif axis == "dataset":
        if value not in TASKS:
            raise fail(key, f"unknown dataset {value!r} (known: {', '.join(TASKS)})")
    elif axis == "optimization":
        if value not in PRESET_NAMES:
            raise fail(key, f"unknown optimization {value!r} (known: {', '.join(PRESET_NAMES)})")
    elif axis == "image_size":
        try:
            return ImageSize.parse(value)
        except ValueError as exc:
            raise fail(key, str(exc)) from None
    elif axis in POSITIVE_INT_AXES:
        _positive_int(value, key, fail)
    return value


def _parse_point(raw: Any, key: str, fail) -> Point:
    if not isinstance(raw, dict):
        raise fail(key, "must be a mapping of axis: value")
    for axis in raw:
        if axis not in AXES:
            raise fail(f"{key}.{axis}", f"unknown axis (known: {', '.join(AXES)})")
    for axis in AXES:
        if axis not in raw:
            raise fail(f"{key}.{axis}", "missing")
    return Point(**{axis: check_axis_value(axis, raw[axis], f"{key}.{axis}", fail) for axis in AXES})


def _parse_sweeps(raw: Any, fail) -> dict[str, dict[str, list[Any]]]:
    if not isinstance(raw, dict) or not raw:
        raise fail("sweeps", "must be a non-empty mapping of sweep name: {axis: [values]}")
    sweeps: dict[str, dict[str, list[Any]]] = {}
    for sweep_name, axes in raw.items():
        where = f"sweeps.{sweep_name}"
        if not isinstance(axes, dict) or not axes:
            raise fail(where, "empty sweep: give at least one axis with a list of values")
        parsed: dict[str, list[Any]] = {}
        for axis, values in axes.items():
            if axis == REFERENCE_KEY:
                continue
            if axis not in AXES:
                raise fail(f"{where}.{axis}", f"unknown axis (known: {', '.join(AXES)})")
            if not isinstance(values, list):
                raise fail(f"{where}.{axis}", f"must be a list of values, got {values!r}; write [{values}] for one")
            if not values:
                raise fail(f"{where}.{axis}", "empty sweep: give a non-empty list of values")
            parsed[axis] = [check_axis_value(axis, v, f"{where}.{axis}", fail) for v in values]
        sweeps[str(sweep_name)] = parsed
    return sweeps


REFERENCE_KEY = "reference"  # in a sweep: the optimization the others' answers are paired with


def _parse_references(raw: dict, sweeps: dict[str, dict[str, list[Any]]], fail) -> dict[str, str]:
    references = {}
    for sweep_name, axes in raw.items():
        if REFERENCE_KEY not in axes:
            continue
        listed = sweeps[str(sweep_name)].get("optimization", [])
        if axes[REFERENCE_KEY] not in listed:
            raise fail(
                f"sweeps.{sweep_name}.{REFERENCE_KEY}",
                f"must be one of the sweep's optimization values ({', '.join(listed) or 'it lists none'}), "
                f"got {axes[REFERENCE_KEY]!r}",
            )
        references[str(sweep_name)] = axes[REFERENCE_KEY]
    return references


def _parse_datasets(raw: Any, fail) -> dict[str, DatasetSource]:
    if not isinstance(raw, dict):
        raise fail("datasets", "must be a mapping of dataset: source")
    parsed = {}
    for task, value in raw.items():
        if task not in TASKS:
            raise fail(f"datasets.{task}", f"unknown dataset (known: {', '.join(TASKS)})")
        if isinstance(value, str) and value.strip():
            parsed[task] = DatasetSource(source=value.strip())
        elif isinstance(value, dict):
            unknown = set(value) - {"source", "split", "config"}
            if unknown:
                raise fail(f"datasets.{task}.{sorted(unknown)[0]}", "unknown key (known: source, split, config)")
            parsed[task] = DatasetSource(
                source=_string(value.get("source"), f"datasets.{task}.source", fail),
                split=None if value.get("split") is None else _string(value["split"], f"datasets.{task}.split", fail),
                config=None
                if value.get("config") is None
                else _string(value["config"], f"datasets.{task}.config", fail),
            )
        else:
            raise fail(f"datasets.{task}", f"must be 'synthetic', a hub id or a path, got {value!r}")
    return parsed


def _parse_tasks(raw: Any, fail) -> dict[str, TaskOverride]:
    if not isinstance(raw, dict):
        raise fail("tasks", "must be a mapping of dataset: {template, max_new_tokens}")
    parsed = {}
    for task, value in raw.items():
        if task not in TASKS:
            raise fail(f"tasks.{task}", f"unknown dataset (known: {', '.join(TASKS)})")
        if not isinstance(value, dict):
            raise fail(f"tasks.{task}", "must be a mapping with template and/or max_new_tokens")
        unknown = set(value) - {"template", "max_new_tokens"}
        if unknown:
            raise fail(f"tasks.{task}.{sorted(unknown)[0]}", "unknown key (known: template, max_new_tokens)")
        max_new = value.get("max_new_tokens")
        parsed[task] = TaskOverride(
            template=None
            if value.get("template") is None
            else _template(value["template"], f"tasks.{task}.template", fail),
            max_new_tokens=None if max_new is None else _positive_int(max_new, f"tasks.{task}.max_new_tokens", fail),
        )
    return parsed
