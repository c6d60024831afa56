"""Storage: each finished cell is written atomically, as soon as it arrives, to a local path or a URI.

A cell is done when `cells/<cell_id>.parquet` exists. Its samples file is written first, so
a done cell always has its samples; a crash mid-write leaves only a temporary name that
is never read back and is replaced by the next write.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Collection, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fuyu_ray.job.cells import Cell
from fuyu_ray.storage.records import CELL_FILE_OPTIONS, CELL_SCHEMA, RETRYABLE, SAMPLE_SCHEMA, error_line

TEMP_MARK = ".tmp-"
INDEX = ".index/cells.parquet"  # every cell file read at report time, compacted into one file; see _indexed
INDEX_MARGIN_NS = 2_000_000_000  # a cell file written this close before the index is read again next time


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

    def write_table(self, relative: str, table: pa.Table, **options) -> None:
        def write(target: str) -> None:
            with self.filesystem.open_output_stream(target) as stream:
                pq.write_table(table, stream, **options)

        self._write_atomically(self.path(relative), write)

    def write_bytes(self, relative: str, payload: bytes) -> None:
        def write(target: str) -> None:
            with self.filesystem.open_output_stream(target) as stream:
                stream.write(payload)

        self._write_atomically(self.path(relative), write)

    def write_json(self, relative: str, payload: dict) -> None:
        self.write_bytes(relative, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, relative: str) -> dict:
        """A JSON object this store wrote, or {} where there is none that reads back as one."""
        try:
            with self.filesystem.open_input_stream(self.path(relative)) as stream:
                payload = json.loads(stream.read())
        except (OSError, ValueError):
            return {}
        return payload if isinstance(payload, dict) else {}

    def write_cell(self, record: pa.RecordBatch, samples: pa.Table) -> None:
        cell_id = record.column("cell_id")[0].as_py()
        self.write_table(f"samples/{cell_id}.parquet", samples, **CELL_FILE_OPTIONS)
        try:
            self.write_table(f"cells/{cell_id}.parquet", pa.Table.from_batches([record]), **CELL_FILE_OPTIONS)
        except BaseException:
            # Samples without their cell are half a result: the rerun that recomputes the cell writes both.
            with contextlib.suppress(OSError):
                if self.filesystem.get_file_info(self.path(f"cells/{cell_id}.parquet")).type == pafs.FileType.NotFound:
                    self.filesystem.delete_file(self.path(f"samples/{cell_id}.parquet"))
            raise

    # --- reading back -----------------------------------------------------------------------
    #
    # Thousands of small files are read as one dataset, with the schema from records.py (a column
    # that an older file lacks comes back as nulls), only the columns asked for, and threads:
    # Polars' parquet reader where the files are local (file:// included), a pyarrow dataset on any
    # other pyarrow.fs filesystem. A file that does not read back whole is treated as absent. The
    # report compacts the cell files it read into one file, INDEX, so that later reads take every
    # cell file that has not changed since from there: a rerun reads one file, not one per cell.

    def _files(self, sub: str) -> dict[str, pafs.FileInfo]:
        """cell_id -> the finished file of that cell in `sub`; temporary files are never read."""
        selector = pafs.FileSelector(self.path(sub), allow_not_found=True)
        return {
            info.base_name.removesuffix(".parquet"): info
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(TEMP_MARK)
        }

    def done_cells(self) -> dict[str, str]:
        """cell_id -> status of every cell already on disk."""
        table = self._cells(self._files("cells"), ["cell_id", "status"])
        return dict(zip(table.column("cell_id").to_pylist(), table.column("status").to_pylist()))

    def disturbed_cells(self) -> set[str]:
        """The cells on disk whose figures were taken while something disturbed them."""
        table = self._cells(self._files("cells"), ["cell_id", "measurement_quality"])
        return {
            cell_id
            for cell_id, quality in zip(
                table.column("cell_id").to_pylist(), table.column("measurement_quality").to_pylist()
            )
            if (quality or "").startswith("disturbed")
        }

    def read_cells(self, cell_ids: Collection[str]) -> pa.Table:
        """The records of these cells, as far as they are on disk; refreshes INDEX when a cell file changed."""
        return self._cells(self._files("cells"), None, wanted=set(cell_ids), refresh_index=True)

    def read_samples(self, cell_ids: Collection[str]) -> pa.Table:
        """Every scored sample of these cells, in memory: for a few cells. A report streams them with write_samples."""
        files = self._files("samples")
        return self._scan([files[i].path for i in _ordered(cell_ids) if i in files], SAMPLE_SCHEMA)

    def write_samples(self, cell_ids: Collection[str], relative: str = "samples.parquet") -> None:
        """The samples of these cells (in this order), streamed from their files into one file, never all in
        memory. A file already there from the same sample files (same names, sizes and times) is kept."""
        files = self._files("samples")
        chosen = [(i, files[i]) for i in _ordered(cell_ids) if i in files]
        signature = hashlib.sha256("\n".join(f"{i} {f.size} {f.mtime_ns}" for i, f in chosen).encode()).hexdigest()
        if self._written_from(relative, signature, [f for _, f in chosen]):
            return
        paths = [f.path for _, f in chosen]
        try:
            self._write_atomically(self.path(relative), lambda target: self._stream(paths, target, signature))
        except scan_errors() as exc:
            # A sample file that does not read back whole is left out, as if it were not there;
            # when every one reads, writing failed (a full or read-only --out), and that is the error.
            readable = [path for path, table in zip(paths, self._each(paths, SAMPLE_SCHEMA)) if table is not None]
            if len(readable) == len(paths):
                if isinstance(exc, (OSError, pa.ArrowException)):
                    raise
                raise OSError(f"{self.path(relative)}: {error_line(exc, typed=False)}") from exc
            self._write_atomically(self.path(relative), lambda target: self._stream(readable, target, signature))

    # --- the index of cell files ------------------------------------------------------------

    def _cells(
        self,
        files: dict[str, pafs.FileInfo],
        columns: list[str] | None,
        wanted: set[str] | None = None,
        refresh_index: bool = False,
    ) -> pa.Table:
        """Rows of the cell files in `files` (those named in `wanted`, if given): from INDEX where a
        file is unchanged since it was indexed, else from the file."""
        schema = _projected(CELL_SCHEMA, columns)
        indexed, stale = self._indexed(files, None if refresh_index else columns)
        covered = set(indexed.column(SOURCE).to_pylist())
        fresh = [info for name, info in files.items() if name not in covered and (wanted is None or name in wanted)]
        read = self._scan([info.path for info in fresh], CELL_SCHEMA if refresh_index else schema, with_source=True)
        if refresh_index and (stale or read.num_rows):
            self._write_index(indexed, read, files)
        rows = pa.concat_tables([indexed.select([*schema.names, SOURCE]), read.select([*schema.names, SOURCE])])
        if wanted is not None:
            rows = rows.filter(pc.is_in(rows.column(SOURCE), value_set=pa.array(sorted(wanted), pa.string())))
        return rows.select(schema.names)

    def _indexed(self, files: dict[str, pafs.FileInfo], columns: list[str] | None) -> tuple[pa.Table, bool]:
        """The rows of INDEX whose cell file is still there unchanged (same size and modification time,
        older than the index by INDEX_MARGIN_NS, so that a clock coarser than the writes cannot hide a
        rewrite), and whether it held any other."""
        empty = _with_keys(_projected(CELL_SCHEMA, columns)).empty_table()
        try:
            info = self.filesystem.get_file_info(self.path(INDEX))
            if info.type != pafs.FileType.File:
                return empty, False
            with self.filesystem.open_input_file(info.path) as handle:
                index = pq.ParquetFile(handle)
                if not set(empty.schema.names) <= set(index.schema_arrow.names):
                    return empty, True  # from another version of the schema: built again
                table = index.read(columns=empty.schema.names).cast(empty.schema)
        except (OSError, pa.ArrowException, KeyError, ValueError):
            return empty, True  # unreadable, or from another version of the schema: built again
        if info.mtime_ns is None:
            return empty, True
        newest = info.mtime_ns - INDEX_MARGIN_NS
        keep = [
            name in files
            and files[name].size == size
            and files[name].mtime_ns == mtime
            and mtime is not None
            and mtime <= newest
            for name, size, mtime in zip(*(table.column(k).to_pylist() for k in INDEX_KEYS))
        ]
        return table.filter(pa.array(keep, pa.bool_())), not all(keep)

    def _write_index(self, indexed: pa.Table, read: pa.Table, files: dict[str, pafs.FileInfo]) -> None:
        names = read.column(SOURCE).to_pylist()
        read = read.append_column(INDEX_KEYS[1], pa.array([files[n].size for n in names], pa.int64()))
        read = read.append_column(INDEX_KEYS[2], pa.array([files[n].mtime_ns for n in names], pa.int64()))
        table = pa.concat_tables([indexed, read.select(indexed.schema.names).cast(indexed.schema)])
        with contextlib.suppress(OSError, pa.ArrowException):  # only a cache: the next read builds it again
            self.filesystem.create_dir(self.path(INDEX.rsplit("/", 1)[0]), recursive=True)
            self.write_table(INDEX, table)

    # --- scans ------------------------------------------------------------------------------

    def _is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def _scan(self, paths: list[str], schema: pa.Schema, with_source: bool = False) -> pa.Table:
        """The files as one table in `schema`, in order; with the cell id each row came from (SOURCE)."""
        target = _with_source(schema) if with_source else schema
        if not paths:
            return target.empty_table()
        try:
            return self._scan_all(paths, schema, with_source).cast(target)
        except scan_errors():
            pass
        # Some file does not read back whole: read them one by one and leave that one out.
        tables = [table for table in self._each(paths, schema, with_source) if table is not None]
        return pa.concat_tables(tables).cast(target) if tables else target.empty_table()

    def _scan_all(self, paths: list[str], schema: pa.Schema, with_source: bool) -> pa.Table:
        # A thousand files at a time: one scan of 10,000 one-row files of 120 columns holds 1.2 GB at
        # its peak (a chunk per file and column), a thousand at a time 0.3 GB, in the same time.
        return pa.concat_tables(
            [self._scan_some(paths[i : i + SCAN_FILES], schema, with_source) for i in range(0, len(paths), SCAN_FILES)]
        ).combine_chunks()

    def _scan_some(self, paths: list[str], schema: pa.Schema, with_source: bool) -> pa.Table:
        if self._is_local():
            frame = _polars_scan(paths, schema, with_source).collect()
            if with_source:
                frame = frame.with_columns(_polars_cell_id(SOURCE))
            return frame.rechunk().to_arrow().cast(_with_source(schema) if with_source else schema)
        import pyarrow.dataset as ds  # pulls pandas in: only for stores off the local disk

        projection = {name: ds.field(name) for name in schema.names}
        if with_source:
            projection[SOURCE] = ds.field("__filename")
        dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=self.filesystem)
        table = dataset.to_table(columns=projection, use_threads=True)
        if with_source:
            names = [path.rsplit("/", 1)[-1].removesuffix(".parquet") for path in table.column(SOURCE).to_pylist()]
            table = table.set_column(table.schema.get_field_index(SOURCE), SOURCE, pa.array(names, pa.string()))
        return table.combine_chunks()

    def _each(self, paths: list[str], schema: pa.Schema, with_source: bool = False) -> list[pa.Table | None]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda path: self._read(path, schema, with_source), paths))

    def _read(self, path: str, schema: pa.Schema, with_source: bool = False) -> pa.Table | None:
        """A file that does not read back whole is treated as absent, so the cell runs again."""
        try:
            with self.filesystem.open_input_file(path) as handle:
                table = pq.read_table(handle)
            # Older files may lack newer columns; give them nulls rather than failing the report.
            columns = [
                table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
                for f in schema
            ]
        except (OSError, pa.ArrowException):
            return None
        table = pa.Table.from_arrays(columns, schema=schema)
        if with_source:
            table = table.append_column(
                SOURCE, pa.array([path.rsplit("/", 1)[-1].removesuffix(".parquet")] * table.num_rows, pa.string())
            )
        return table

    def _stream(self, paths: list[str], target: str, signature: str) -> None:
        """Copy the sample files into one parquet file, SAMPLE_FILES files at a time (a row group each),
        tagged with the files it was made from. Memory holds one group, never all the samples."""
        schema = SAMPLE_SCHEMA.with_metadata({SOURCES_KEY: signature})
        with self.filesystem.open_output_stream(target) as stream, pq.ParquetWriter(stream, schema) as writer:
            for i in range(0, len(paths), SAMPLE_FILES):
                table = self._scan_some(paths[i : i + SAMPLE_FILES], SAMPLE_SCHEMA, False)
                if table.num_rows:  # cells without samples (failed, skipped, a stand-in) add no empty row group
                    writer.write_table(table.cast(schema))

    def _written_from(self, relative: str, signature: str, sources: list[pafs.FileInfo]) -> bool:
        """Whether `relative` was streamed from exactly these files, each older than it by INDEX_MARGIN_NS."""
        try:
            info = self.filesystem.get_file_info(self.path(relative))
            if info.type != pafs.FileType.File or info.mtime_ns is None:
                return False
            with self.filesystem.open_input_file(info.path) as handle:
                metadata = pq.read_metadata(handle).metadata or {}
        except (OSError, pa.ArrowException):
            return False
        newest = info.mtime_ns - INDEX_MARGIN_NS
        return metadata.get(SOURCES_KEY.encode()) == signature.encode() and all(
            f.mtime_ns is not None and f.mtime_ns <= newest for f in sources
        )


SCAN_FILES = 1000  # files per scan
SAMPLE_FILES = 200  # sample files per row group of samples.parquet: 32 samples each, a few MB in memory
SOURCE = "source_cell_file"  # the cell id a row was read from: the file's name
INDEX_KEYS = (SOURCE, "source_size", "source_mtime_ns")
SOURCES_KEY = "fuyu_ray.driver.sources"  # in samples.parquet's footer: a hash of the sample files it was made from


@functools.cache
def scan_errors() -> tuple[type[BaseException], ...]:
    """What a read of files that do not read back whole raises. Looked up only when something was raised,
    so that writing cells (the GPU check) never imports Polars."""
    try:
        from polars.exceptions import PolarsError  # the GPU check writes through this module where Polars is absent
    except ImportError:  # the GPU check's bare machine: no Polars, so only pyarrow reads
        return (OSError, pa.ArrowException)
    return (OSError, pa.ArrowException, PolarsError)


def _ordered(cell_ids: Collection[str]) -> list[str]:
    return sorted(cell_ids) if isinstance(cell_ids, (set, frozenset)) else list(dict.fromkeys(cell_ids))


def _projected(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    return schema if columns is None else pa.schema([schema.field(name) for name in columns])


def _with_source(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(SOURCE, pa.string()))


def _with_keys(schema: pa.Schema) -> pa.Schema:
    return _with_source(schema).append(pa.field(INDEX_KEYS[1], pa.int64())).append(pa.field(INDEX_KEYS[2], pa.int64()))


def _polars_scan(paths: list[str], schema: pa.Schema, with_source: bool):
    import polars as pl  # the GPU check writes through this module where Polars is absent

    return pl.scan_parquet(
        paths,
        schema=pl.from_arrow(schema.empty_table()).schema,
        glob=False,
        missing_columns="insert",
        extra_columns="ignore",
        include_file_paths=SOURCE if with_source else None,
        cast_options=pl.ScanCastOptions(integer_cast=["upcast", "allow-float"], float_cast="upcast"),
    )


def _polars_cell_id(column: str):
    import polars as pl  # the GPU check writes through this module where Polars is absent

    return pl.col(column).str.split("/").list.last().str.strip_suffix(".parquet")


def cells_to_run(cells: Sequence[Cell], done: dict[str, str], force: bool, retry_failed: bool) -> list[Cell]:
    """Skipped cells are always looked at again: a GPU node may have joined since, and a skip is cheap."""

    def wanted(cell: Cell) -> bool:
        status = done.get(cell.cell_id)
        return force or status in (None, "skipped") or (retry_failed and status in RETRYABLE)

    return [cell for cell in cells if wanted(cell)]
