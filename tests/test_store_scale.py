"""Reading many cell files as one dataset: missing columns as nulls, broken and temporary files
absent, the compacted index trusted only for unchanged files, samples streamed into one file;
on a local path (Polars) and on any other pyarrow.fs filesystem (a pyarrow dataset)."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from fuyu_ray.storage.records import CELL_SCHEMA, cell_batch, outcome_row, sample_table
from fuyu_ray.storage.store import INDEX, TEMP_MARK, ResultStore


def record(cell_id: str, status: str = "ok", **extra) -> pa.RecordBatch:
    return cell_batch(outcome_row({"cell_id": cell_id, "device": "cpu"}, status, None, **extra))


def samples(cell_id: str, n: int) -> pa.Table:
    return sample_table(
        [{"cell_id": cell_id, "sample_id": f"{cell_id}-{i}", "prompt": "p" * 50, "score": i / 10} for i in range(n)]
    )


@pytest.fixture(params=["local", "other"])
def store(request, tmp_path) -> ResultStore:
    """A local path (read through Polars) and the same folder behind a filesystem that is not
    pyarrow's LocalFileSystem (read through a pyarrow dataset, as s3:// or gs:// would be)."""
    (tmp_path / "out").mkdir()
    if request.param == "local":
        result = ResultStore.at(str(tmp_path / "out"))
    else:
        result = ResultStore(pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "out")
        assert not result._is_local()
    result.ensure_dirs()
    return result


def local(store: ResultStore, relative: str) -> str:
    """The file's path on this machine, for tests that age or damage it."""
    if isinstance(store.filesystem, pafs.SubTreeFileSystem):
        return f"{store.filesystem.base_path.rstrip('/')}/{store.path(relative)}"
    return store.path(relative)


def age(store: ResultStore, seconds: float = 3600) -> None:
    """Move every cell file's modification time back, as if written an hour ago."""
    for sub in ("cells", "samples"):
        folder = local(store, sub)
        for name in os.listdir(folder):
            stat = os.stat(f"{folder}/{name}")
            os.utime(f"{folder}/{name}", ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


def test_many_cells_read_back_as_one_table_with_only_the_columns_asked_for(store):
    for i in range(30):
        store.write_cell(record(f"c{i:02d}", "ok" if i % 3 else "failed", latency_s=i / 100), samples(f"c{i:02d}", 2))
    assert store.done_cells() == {f"c{i:02d}": "ok" if i % 3 else "failed" for i in range(30)}
    table = store.read_cells({f"c{i:02d}" for i in range(0, 30, 2)})
    assert table.schema == CELL_SCHEMA
    assert sorted(table.column("cell_id").to_pylist()) == [f"c{i:02d}" for i in range(0, 30, 2)]
    assert dict(zip(table.column("cell_id").to_pylist(), table.column("latency_s").to_pylist()))["c04"] == 0.04
    assert store._cells(store._files("cells"), ["cell_id", "status"]).column_names == ["cell_id", "status"]


def test_older_files_without_newer_columns_give_nulls(store):
    store.write_cell(record("new", latency_s=1.0), sample_table([]))
    old = pa.table(
        {"cell_id": ["old"], "status": ["ok"], "latency_s": [2]}
    )  # no other column, and an int where a float is now
    with store.filesystem.open_output_stream(store.path("cells/old.parquet")) as stream:
        pq.write_table(old, stream)  # as the earlier writer did: Arrow schema, statistics, dictionary pages
    table = store.read_cells({"old", "new"})
    rows = {row["cell_id"]: row for row in table.to_pylist()}
    assert rows["old"]["latency_s"] == 2.0 and rows["old"]["model"] is None and rows["old"]["latency_batches_s"] is None
    assert rows["new"]["latency_s"] == 1.0
    assert store.done_cells() == {"old": "ok", "new": "ok"}


def test_broken_and_temporary_files_are_absent_among_many(store):
    for i in range(12):
        store.write_cell(record(f"c{i:02d}"), samples(f"c{i:02d}", 1))
    with open(local(store, "cells/c05.parquet"), "r+b") as handle:  # the footer of a finished file damaged
        handle.seek(-12, os.SEEK_END)
        handle.write(b"\0" * 12)
    with open(local(store, f"cells/{TEMP_MARK}123-c99.parquet"), "wb") as handle:
        handle.write(pq_bytes(record("c99")))  # a whole file, but under a temporary name: never read
    with open(local(store, "samples/c07.parquet"), "wb") as handle:
        handle.write(b"PAR1 half")
    done = store.done_cells()
    assert "c05" not in done and "c99" not in done and len(done) == 11
    assert "c05" not in store.read_cells({f"c{i:02d}" for i in range(12)}).column("cell_id").to_pylist()
    store.write_samples([f"c{i:02d}" for i in range(12)])
    with store.filesystem.open_input_file(store.path("samples.parquet")) as handle:
        written = pq.read_table(handle)
    assert written.column("cell_id").to_pylist() == [f"c{i:02d}" for i in range(12) if i != 7]  # in the order asked


def pq_bytes(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_batches([batch]), sink)
    return sink.getvalue().to_pybytes()


def test_a_report_compacts_the_cells_and_later_reads_take_unchanged_ones_from_there(store, monkeypatch):
    for i in range(20):
        store.write_cell(record(f"c{i:02d}", latency_s=float(i)), sample_table([]))
    age(store)
    ids = {f"c{i:02d}" for i in range(20)}
    store.read_cells(ids)
    assert store.filesystem.get_file_info(store.path(INDEX)).type == pafs.FileType.File

    scanned: list[str] = []
    scan = store._scan
    monkeypatch.setattr(store, "_scan", lambda paths, *a, **k: (scanned.extend(paths), scan(paths, *a, **k))[1])
    assert store.done_cells() == {cell_id: "ok" for cell_id in ids}
    assert len(store.read_cells(ids)) == 20
    assert scanned == []  # one file read, not twenty

    store.write_cell(record("c03", "failed"), sample_table([]))  # rewritten since: read again
    (store.filesystem.delete_file(store.path("cells/c04.parquet")))  # gone: not done any more
    assert store.done_cells() == {**{cell_id: "ok" for cell_id in ids - {"c04"}}, "c03": "failed"}
    assert [p.rsplit("/", 1)[-1] for p in scanned] == ["c03.parquet"]
    rows = {row["cell_id"]: row["status"] for row in store.read_cells(ids).to_pylist()}
    assert rows["c03"] == "failed" and "c04" not in rows and len(rows) == 19


def test_a_file_written_just_before_the_index_is_read_again(store, monkeypatch):
    """A filesystem clock coarser than two writes could hide a rewrite with the same size and time:
    entries newer than INDEX_MARGIN_NS before the index are not trusted."""
    store.write_cell(record("fresh"), sample_table([]))
    store.read_cells({"fresh"})
    scanned: list[str] = []
    scan = store._scan
    monkeypatch.setattr(store, "_scan", lambda paths, *a, **k: (scanned.extend(paths), scan(paths, *a, **k))[1])
    assert store.done_cells() == {"fresh": "ok"}
    assert [p.rsplit("/", 1)[-1] for p in scanned] == ["fresh.parquet"]


def test_a_cell_rewritten_with_the_same_size_is_read_again_not_taken_from_the_index(store):
    """A --force rerun rewrites a cell file with the same columns and other figures, often to the
    byte the same size: only its modification time tells the index that the file changed."""
    for cell_id in ("a", "b"):
        store.write_cell(record(cell_id, latency_s=1.0), sample_table([]))
    age(store)
    assert store.read_cells({"a", "b"}).column("latency_s").to_pylist() == [1.0, 1.0]  # and the index written
    size = os.stat(local(store, "cells/a.parquet")).st_size

    store.write_cell(record("a", latency_s=2.0), sample_table([]))
    rewritten = local(store, "cells/a.parquet")
    assert os.stat(rewritten).st_size == size  # what the test is about: same size, other figures
    # Half an hour ago: still older than the index by far more than INDEX_MARGIN_NS, so only the
    # modification time differs from the indexed entry.
    os.utime(rewritten, ns=(time.time_ns(), time.time_ns() - 1800 * 10**9))
    rows = {row["cell_id"]: row["latency_s"] for row in store.read_cells({"a", "b"}).to_pylist()}
    assert rows == {"a": 2.0, "b": 1.0}
    with store.filesystem.open_input_file(store.path(INDEX)) as handle:  # the index now holds the new figure
        indexed = pq.read_table(handle).to_pylist()
    assert {row["cell_id"]: row["latency_s"] for row in indexed} == {"a": 2.0, "b": 1.0}


def test_an_index_of_another_schema_or_broken_is_rebuilt(store):
    for i in range(3):
        store.write_cell(record(f"c{i}"), sample_table([]))
    age(store)
    store.filesystem.create_dir(store.path(INDEX.rsplit("/", 1)[0]), recursive=True)
    with store.filesystem.open_output_stream(store.path(INDEX)) as stream:
        pq.write_table(pa.table({"cell_id": ["c0"], "status": ["failed"]}), stream)  # lacks the keys and columns
    assert store.done_cells() == {"c0": "ok", "c1": "ok", "c2": "ok"}
    assert len(store.read_cells({"c0", "c1", "c2"})) == 3
    with store.filesystem.open_input_file(store.path(INDEX)) as handle:
        assert pq.read_table(handle).num_rows == 3
    with store.filesystem.open_output_stream(store.path(INDEX)) as stream:
        stream.write(b"PAR1 broken")
    assert store.done_cells() == {"c0": "ok", "c1": "ok", "c2": "ok"}


def test_samples_are_streamed_once_and_kept_while_their_files_are_unchanged(store):
    for i in range(5):
        store.write_cell(record(f"c{i}"), samples(f"c{i}", 3))
    age(store)
    order = ["c3", "c1", "c0", "c4", "c2"]
    store.write_samples(order)
    info = store.filesystem.get_file_info(store.path("samples.parquet"))
    with store.filesystem.open_input_file(store.path("samples.parquet")) as handle:
        table = pq.read_table(handle)
    assert table.column("cell_id").to_pylist() == [c for c in order for _ in range(3)]
    assert table.column("score").to_pylist()[:3] == [0.0, 0.1, 0.2]
    assert store.read_samples(set(order)).num_rows == 15

    time.sleep(0.01)
    store.write_samples(order)  # nothing changed: the file is kept
    assert store.filesystem.get_file_info(store.path("samples.parquet")).mtime_ns == info.mtime_ns
    store.write_cell(record("c1"), samples("c1", 1))  # one cell ran again
    store.write_samples(order)
    with store.filesystem.open_input_file(store.path("samples.parquet")) as handle:
        assert pq.read_table(handle).num_rows == 13
    store.write_samples(["c0"])  # another set of cells: written again
    with store.filesystem.open_input_file(store.path("samples.parquet")) as handle:
        assert pq.read_table(handle).column("cell_id").to_pylist() == ["c0"] * 3


def test_no_samples_at_all_still_write_an_empty_file(store):
    store.write_cell(record("a"), sample_table([]))
    store.write_samples(["a", "missing"])
    with store.filesystem.open_input_file(store.path("samples.parquet")) as handle:
        assert pq.read_table(handle).num_rows == 0


def test_a_cell_file_carries_no_repeated_schema(tmp_path):
    """One row of 120 columns: the footer is the file. Without the Arrow schema copy, statistics and
    dictionary pages it is under half of what pyarrow's defaults write, and reads back the same."""
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    batch = record("small", latency_s=0.5, latency_batches_s=[0.4, 0.6], model="standin", node_id="n" * 56)
    store.write_cell(batch, sample_table([]))
    written = (tmp_path / "cells" / "small.parquet").stat().st_size
    assert written < 0.5 * len(pq_bytes(batch)) and written < 16_000
    assert b"ARROW:schema" not in (tmp_path / "cells" / "small.parquet").read_bytes()
    assert store.read_cells({"small"}).to_pylist() == pa.Table.from_batches([batch]).to_pylist()


def test_without_polars_cells_are_written_and_read_on_other_filesystems(tmp_path):
    """The GPU check's bare machine has no Polars: writing cells, and reading them through a
    pyarrow dataset, must not need it."""
    import subprocess
    import sys

    script = f"""
import sys
sys.modules["polars"] = None  # import polars fails, as where it is not installed
import pyarrow.fs as pafs
from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table
from fuyu_ray.storage.store import ResultStore
store = ResultStore(pafs.SubTreeFileSystem({str(tmp_path)!r}, pafs.LocalFileSystem()), "out")
store.ensure_dirs()
store.write_cell(cell_batch(outcome_row({{"cell_id": "a"}}, "ok", None)), sample_table([]))
assert store.done_cells() == {{"a": "ok"}}, store.done_cells()
assert store.read_cells({{"a"}}).num_rows == 1
store.write_samples(["a"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
