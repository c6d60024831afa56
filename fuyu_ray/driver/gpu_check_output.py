"""What the GPU check leaves behind, rewritten after every cell so that a run stopped from outside still
has it, in few files no deeper than `--out` itself (a lent GPU machine returns at most eight):

- `summary.md`: the table, the speed-ups and the target lines;
- `cells.parquet` and `samples.parquet`: every cell's record and scored samples so far;
- `gpu_check.log`: every line the check printed;
- `cell-files.tar`: the per-cell files `python -m fuyu_ray.report` reads (`tar -xf` it into `--out`).

The target lines (`target: ...`) are printed too, after each target cell and at the end, so that a
terminal's last lines carry the verdicts even when no file comes back.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from fuyu_ray.bench import hardware
from fuyu_ray.bench.records import CELL_SCHEMA, SAMPLE_SCHEMA
from fuyu_ray.driver.store import ResultStore
from fuyu_ray.job.spec import image_dims

LOG_NAME = "gpu_check.log"
ARCHIVE_NAME = "cell-files.tar"
OUTPUT_FILES = ("summary.md", "cells.parquet", "samples.parquet", LOG_NAME, ARCHIVE_NAME)
TARGET_DATASET = "textvqa"  # the task the targets are measured on, as jobs/gpu-check.json runs it
HD_IMAGE = (1920, 1080)


@dataclass(frozen=True)
class Target:
    point: str  # as the target line names it
    batch_size: int
    image: tuple[int, int]
    column: str  # the figure judged
    limit: float
    lower_is_better: bool
    show: Callable[[float], str]  # the figure in the target's unit


TARGETS = (
    Target("b1 224 px latency", 1, (224, 224), "latency_s", 0.066, True, lambda v: f"{v * 1000:.1f} ms"),
    Target("b16 224 px energy", 16, (224, 224), "energy_j_per_sample", 3.0, True, lambda v: f"{v:.2f} J/sample"),
    Target("b16 224 px prefill", 16, (224, 224), "prefill_roofline_ratio", 0.70, False, lambda v: f"{v:.0%}"),
    # Judged with the processor's time, since that is what a user waits for.
    Target(
        "b1 1920x1080 time to first token",
        1,
        HD_IMAGE,
        "ttft_with_preprocess_s",
        0.100,
        True,
        lambda v: f"{v * 1000:.1f} ms",
    ),
)
ENERGY_TARGET_WINDOW_S = 3.0  # NVML's counter steps every 20-100 ms: a 1 s window leaves +-10% near 3 J


def image_of(row: dict) -> tuple[int, int]:
    return row.get("image_width") or row["image_size"], row.get("image_height") or row["image_size"]


def at_point(row: dict, batch: int, image: tuple[int, int]) -> bool:
    return (
        row["dataset"] == TARGET_DATASET
        and image_of(row) == image
        and row["seq_len"] == 200
        and row["batch_size"] == batch
    )


def is_target_cell(point) -> bool:
    """Whether a cell's settings are a target's point (its figure feeds a target line)."""
    width, height = image_dims(point.image_size)
    return (
        point.dataset == TARGET_DATASET
        and point.seq_len == 200
        and any((point.batch_size, (width, height)) == (t.batch_size, t.image) for t in TARGETS)
    )


def target_lines(rows: list[dict], mode: str) -> list[str]:
    """One line per target, always: the best preset's figure and the verdict (`mode` "judge"), or the
    figure with `not judged (no GPU)` or `rehearsal` instead; `not measured: why` where there is none."""
    return [target_line(target, rows, mode) for target in TARGETS]


def target_line(target: Target, rows: list[dict], mode: str) -> str:
    here = [r for r in rows if at_point(r, target.batch_size, target.image)]
    measured = [r for r in here if r["status"] == "ok" and r.get(target.column) is not None]
    head = f"target: {target.point}"
    bound = f"{'<=' if target.lower_is_better else '>='} {target.show(target.limit)}"
    if not measured:
        return f"{head}: not measured: {why_not_measured(target, here)} (target {bound})"
    pick = min if target.lower_is_better else max
    best = pick(measured, key=lambda r: r[target.column])
    value = best[target.column]
    figure = f"{target.show(value)} ({best['optimization']}){extra_figures(target, best)}"
    if mode != "judge":
        return f"{head}: {figure}; target {bound}: {mode}"
    met = value <= target.limit if target.lower_is_better else value >= target.limit
    verdict = "met" if met else f"missed by {target.show(abs(value - target.limit))}"
    return f"{head}: {figure}; target {bound}: {verdict}"


def why_not_measured(target: Target, here: list[dict]) -> str:
    if not here:
        return "no cell at this point ran"
    ok = [r for r in here if r["status"] == "ok"]
    if not ok:
        return "; ".join(sorted({f"{r['optimization']} {r['status']}: {r.get('error') or ''}".strip() for r in here}))
    if target.column == "energy_j_per_sample":
        return next((r["energy_note"] for r in ok if r.get("energy_note")), "no energy counter")
    if target.column == "prefill_roofline_ratio":
        return next((r["roofline_note"] for r in ok if r.get("roofline_note")), "no roofline limit for this chip")
    return f"the cells recorded no {target.column}"


def extra_figures(target: Target, row: dict) -> str:
    """What a target line shows beside its figure: both limits for prefill, both times for the HD TTFT."""
    if target.column == "ttft_with_preprocess_s":
        ttft, pre = row.get("ttft_s"), row.get("preprocess_s")
        return f", of which the processor {pre * 1000:.1f} ms and the model {ttft * 1000:.1f} ms" if ttft else ""
    if target.column == "prefill_roofline_ratio":
        measured, datasheet = measured_tflops(), datasheet_tflops(row.get("gpu_name"))
        ratio = row[target.column]
        if measured and datasheet:
            return (
                f" of the measured matrix rate ({measured:.0f} TFLOP/s); "
                f"{ratio * measured / datasheet:.0%} of the datasheet's ({datasheet:.0f} TFLOP/s)"
            )
        return " of the datasheet's matrix rate (none measured in this run)"
    return ""


def measured_tflops() -> float | None:
    value = hardware.peak_overrides_in(os.environ).get(hardware.TFLOPS_ENV)
    return float(value) if value else None


def datasheet_tflops(gpu_name: str | None) -> float | None:
    peak = hardware.datasheet_peak(gpu_name)
    return peak.fp16_tflops if peak else None


class CheckOutput:
    """The check's files in `out`, each written atomically; per-cell files are kept apart and archived."""

    def __init__(self, out: str):
        self.store = ResultStore.at(out)
        self.store.filesystem.create_dir(self.store.root, recursive=True)
        self.staging = tempfile.mkdtemp(prefix="fuyu-ray-gpu-check-")
        self.cells = ResultStore.at(self.staging)
        self.cells.ensure_dirs()
        self.rows: list[dict] = []  # each cell's record as a row, in the order they ran
        self.records: list[pa.RecordBatch] = []
        self.samples: list[pa.Table] = []
        self.log_file = open(self.store.path(LOG_NAME), "a", buffering=1)  # noqa: SIM115 - lives as long as the run

    def log(self, line: str) -> None:
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def add(self, record: pa.RecordBatch, samples: pa.Table) -> None:
        self.cells.write_cell(record, samples)
        self.records.append(record)
        self.samples.append(samples)

    def write(self, summary: str) -> None:
        self.store.write_table("cells.parquet", pa.Table.from_batches(self.records, schema=CELL_SCHEMA))
        tables = [t.cast(SAMPLE_SCHEMA) for t in self.samples]
        self.store.write_table("samples.parquet", pa.concat_tables(tables) if tables else SAMPLE_SCHEMA.empty_table())
        self.store.write_bytes(ARCHIVE_NAME, self._archive())
        self.store.write_bytes("summary.md", summary.encode())

    def _archive(self) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for sub in ("cells", "samples"):
                archive.add(os.path.join(self.staging, sub), arcname=sub)
        return buffer.getvalue()

    def close(self) -> None:
        self.log_file.close()
        shutil.rmtree(self.staging, ignore_errors=True)
