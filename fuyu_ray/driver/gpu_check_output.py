"""What the GPU check leaves behind, rewritten after every cell so that a run stopped from outside still
has it, in few files no deeper than `--out` itself (a lent GPU machine returns at most eight):

- `summary.md`: the table, the speed-ups and the target lines (fuyu_ray.presentation.gpu_check_summary);
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

import pyarrow as pa

from fuyu_ray.storage.records import CELL_SCHEMA, SAMPLE_SCHEMA
from fuyu_ray.storage.store import ResultStore

LOG_NAME = "gpu_check.log"


ARCHIVE_NAME = "cell-files.tar"


OUTPUT_FILES = ("summary.md", "cells.parquet", "samples.parquet", LOG_NAME, ARCHIVE_NAME)


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
