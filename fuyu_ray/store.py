"""Storage: each finished cell is written atomically, as soon as it arrives, to a local path or a URI.

A cell is done when `cells/<cell_id>.parquet` exists. Its samples file is written first, so
a done cell always has its samples; a crash mid-write leaves only a temporary name that
is never read back and is replaced by the next write.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fuyu_ray.cells import Cell
from fuyu_ray.records import CELL_SCHEMA, SAMPLE_SCHEMA

TEMP_MARK = ".tmp-"
RETRYABLE = ("failed", "oom", "timeout")  # statuses a rerun computes again, unless told not to


def open_location(out: str) -> tuple[pafs.FileSystem, str]:
    """A local path, or any URI that pyarrow.fs understands (file://, s3://, gs://, ...)."""
    if "://" in out:
        filesystem, path = pafs.FileSystem.from_uri(out)
        return filesystem, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(out)


@dataclass
class ResultStore:
    filesystem: pafs.FileSystem
    root: str

    @classmethod
    def at(cls, out: str) -> "ResultStore":
        return cls(*open_location(out))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def ensure_dirs(self) -> None:
        for sub in ("cells", "samples", "plots"):
            self.filesystem.create_dir(self.path(sub), recursive=True)

    # --- atomic writes ----------------------------------------------------------------------

    def _write_atomically(self, final: str, write) -> None:
        """Write beside the target, then rename: readers see the old file or the new one, never half."""
        directory, name = final.rsplit("/", 1)
        temporary = f"{directory}/{TEMP_MARK}{uuid.uuid4().hex}-{name}"
        try:
            write(temporary)
            self.filesystem.move(temporary, final)
        except BaseException:
            try:
                self.filesystem.delete_file(temporary)
            except (OSError, FileNotFoundError):
                pass
            raise

    def write_table(self, relative: str, table: pa.Table) -> None:
        def write(target: str) -> None:
            with self.filesystem.open_output_stream(target) as stream:
                pq.write_table(table, stream)

        self._write_atomically(self.path(relative), write)

    def write_bytes(self, relative: str, payload: bytes) -> None:
        def write(target: str) -> None:
            with self.filesystem.open_output_stream(target) as stream:
                stream.write(payload)

        self._write_atomically(self.path(relative), write)

    def write_json(self, relative: str, payload: dict) -> None:
        self.write_bytes(relative, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def write_cell(self, record: pa.RecordBatch, samples: pa.Table) -> None:
        cell_id = record.column("cell_id")[0].as_py()
        self.write_table(f"samples/{cell_id}.parquet", samples)
        try:
            self.write_table(f"cells/{cell_id}.parquet", pa.Table.from_batches([record]))
        except BaseException:
            # Samples without their cell are half a result: the rerun that recomputes the cell writes both.
            with contextlib.suppress(OSError):
                if self.filesystem.get_file_info(self.path(f"cells/{cell_id}.parquet")).type == pafs.FileType.NotFound:
                    self.filesystem.delete_file(self.path(f"samples/{cell_id}.parquet"))
            raise

    # --- reading back -----------------------------------------------------------------------

    def _listing(self, sub: str) -> list[str]:
        selector = pafs.FileSelector(self.path(sub), allow_not_found=True)
        return [
            info.path for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(TEMP_MARK)
        ]

    def done_cells(self) -> dict[str, str]:
        """cell_id -> status of every cell already on disk."""
        done = {}
        for path in self._listing("cells"):
            table = self._read(path, CELL_SCHEMA)
            if table is not None and table.num_rows:
                done[table.column("cell_id")[0].as_py()] = table.column("status")[0].as_py()
        return done

    def read_cells(self, cell_ids: set[str]) -> pa.Table:
        return self._read_many("cells", cell_ids, CELL_SCHEMA)

    def read_samples(self, cell_ids: set[str]) -> pa.Table:
        return self._read_many("samples", cell_ids, SAMPLE_SCHEMA)

    def _read_many(self, sub: str, cell_ids: set[str], schema: pa.Schema) -> pa.Table:
        tables = []
        for path in self._listing(sub):
            if path.rsplit("/", 1)[-1].removesuffix(".parquet") in cell_ids:
                table = self._read(path, schema)
                if table is not None:
                    tables.append(table)
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def _read(self, path: str, schema: pa.Schema) -> pa.Table | None:
        """A file that does not read back whole is treated as absent, so the cell runs again."""
        try:
            with self.filesystem.open_input_file(path) as handle:
                table = pq.read_table(handle)
        except (OSError, pa.ArrowInvalid):
            return None
        # Older files may lack newer columns; give them nulls rather than failing the report.
        columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
        return pa.Table.from_arrays(columns, schema=schema)


def cells_to_run(cells: Sequence[Cell], done: dict[str, str], force: bool, retry_failed: bool) -> list[Cell]:
    """Skipped cells are always looked at again: a GPU node may have joined since, and a skip is cheap."""
    def wanted(cell: Cell) -> bool:
        status = done.get(cell.cell_id)
        return force or status in (None, "skipped") or (retry_failed and status in RETRYABLE)

    return [cell for cell in cells if wanted(cell)]
