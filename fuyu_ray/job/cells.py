"""Grid expansion: a job becomes a de-duplicated list of cells, grouped into model variants.

Each sweep crosses the axes it lists and takes every other axis from `base`. A cell that
two sweeps share is one cell (same settings, same `cell_id`) shown in both tables.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, replace

from fuyu_ray.job.spec import AXES, DatasetSource, JobSpec, Point, TaskOverride


@dataclass(frozen=True)
class Variant:
    """What one warm model is: everything that forces a separate model load."""

    model: str
    weights: str
    device: str
    optimization: str

    @property
    def label(self) -> str:
        """Readable, Ray-safe name: the dashboard's actor list reads as the grid."""
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model.rstrip("/").split("/")[-1])
        return f"{model}-{self.weights}-{self.device}-{self.optimization}"

    @property
    def variant_hash(self) -> str:
        return _short_hash(asdict(self))


@dataclass(frozen=True)
class Cell:
    model: str
    weights: str
    limit: int
    point: Point
    source: DatasetSource
    task_override: TaskOverride

    @property
    def variant(self) -> Variant:
        return Variant(self.model, self.weights, self.point.device, self.point.optimization)

    @functools.cached_property  # hashed once per cell, not at each of the driver's ~9 look-ups (0.03 ms each)
    def cell_id(self) -> str:
        """Stable across runs and machines: a hash of everything that changes the cell's result (the image
        size as the job writes it, so that ids stay those of earlier versions)."""
        identity = asdict(self)
        identity["point"]["image_size"] = self.point.image_size.job_value
        return _short_hash(identity)

    @property
    def description(self) -> str:
        """How progress lines and the dashboard's task list name the cell."""
        p = self.point
        return f"{p.device} {p.optimization} {p.dataset} batch={p.batch_size} image={p.image_size} seq_len={p.seq_len}"

    def settings(self) -> dict:
        """The flat identity columns of a record. `image_size` is S for an S x S image and null for
        a "WxH" one; `image_width` and `image_height` are always set."""
        image = self.point.image_size
        return {
            "cell_id": self.cell_id,
            "model": self.model,
            "weights": self.weights,
            **asdict(self.point),
            "image_size": image.side,
            "image_width": image.width,
            "image_height": image.height,
            "limit": self.limit,
            "dataset_source": self.source.source,
            "dataset_split": self.source.split,
        }


@dataclass(frozen=True)
class Grid:
    cells: tuple[Cell, ...]
    sections: dict[str, tuple[str, ...]]  # sweep name -> cell_ids in the sweep's order

    def by_variant(self) -> dict[Variant, list[Cell]]:
        groups: dict[Variant, list[Cell]] = {}
        for cell in self.cells:
            groups.setdefault(cell.variant, []).append(cell)
        return groups


def expand(job: JobSpec) -> Grid:
    cells: dict[str, Cell] = {}
    sections: dict[str, tuple[str, ...]] = {}
    for sweep_name, axes in job.sweeps.items():
        ids: dict[str, None] = {}
        for point in sweep_points(job.base, axes):
            cell = Cell(
                model=job.model,
                weights=job.weights,
                limit=job.limit,
                point=point,
                source=job.dataset_source(point.dataset),
                task_override=job.tasks.get(point.dataset, TaskOverride()),
            )
            cells.setdefault(cell.cell_id, cell)
            ids[cell.cell_id] = None  # an ordered set: a sweep lists a cell once
        sections[sweep_name] = tuple(ids)
    return Grid(cells=tuple(cells.values()), sections=sections)


def sweep_points(base: Point, axes: dict[str, list]) -> list[Point]:
    names = [axis for axis in AXES if axis in axes]
    return [replace(base, **dict(zip(names, values))) for values in itertools.product(*(axes[n] for n in names))]


def _short_hash(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
