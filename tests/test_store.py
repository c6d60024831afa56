"""Storage: atomic cell files, half-written files never read back, local paths and file:// URIs."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table
from fuyu_ray.storage.store import TEMP_MARK, ResultStore


def record(cell_id: str, status: str = "ok") -> pa.RecordBatch:
    return cell_batch(outcome_row({"cell_id": cell_id, "device": "cpu"}, status, None))


def test_written_cells_read_back_by_id(tmp_path):
    store = ResultStore.at(str(tmp_path / "out"))
    store.ensure_dirs()
    store.write_cell(record("a"), sample_table([]))
    store.write_cell(record("b", "failed"), sample_table([]))
    assert store.done_cells() == {"a": "ok", "b": "failed"}
    assert store.read_cells({"a"}).column("cell_id").to_pylist() == ["a"]


def test_partial_and_corrupt_files_are_ignored(tmp_path):
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    (tmp_path / "cells" / f"{TEMP_MARK}123-x.parquet").write_bytes(b"PAR1 half")
    (tmp_path / "cells" / "y.parquet").write_bytes(b"not parquet at all")
    assert store.done_cells() == {}
    store.write_cell(record("y"), sample_table([]))  # the broken file is replaced
    assert store.done_cells() == {"y": "ok"}


def test_failed_write_leaves_no_file(tmp_path):
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()

    def explode(target):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        store._write_atomically(store.path("cells/z.parquet"), explode)
    assert list((tmp_path / "cells").iterdir()) == []  # neither the target nor the half-written temporary
    assert store.done_cells() == {}


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path):
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    store.write_cell(record("k"), sample_table([]))
    before = (tmp_path / "cells" / "k.parquet").read_bytes()

    def explode(target):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        store._write_atomically(store.path("cells/k.parquet"), explode)
    assert [p.name for p in (tmp_path / "cells").iterdir()] == ["k.parquet"]
    assert (tmp_path / "cells" / "k.parquet").read_bytes() == before
    assert store.done_cells() == {"k": "ok"}


def test_file_uri(tmp_path):
    store = ResultStore.at(f"file://{tmp_path}/uri-out")
    store.ensure_dirs()
    store.write_cell(record("u"), sample_table([]))
    assert (tmp_path / "uri-out" / "cells" / "u.parquet").is_file()
    assert store.done_cells() == {"u": "ok"}


def test_a_finished_cell_travels_whole(tmp_path):
    """What a worker sends the driver reads back as the record and samples it was made from, after
    the pickling a Ray call does, and writes the same files as the objects themselves would."""
    import pickle

    from fuyu_ray.storage.records import finished_cell

    row = outcome_row({"cell_id": "t", "device": "cpu"}, "ok", None, latency_batches_s=[0.5, 0.25], latency_s=0.375)
    samples = sample_table(
        [
            {"cell_id": "t", "sample_id": str(i), "prediction": f"p{i}", "references": ["a", "b"], "score": i / 2}
            for i in range(3)
        ]
    )
    travelled = pickle.loads(pickle.dumps(finished_cell(cell_batch(row), samples)))
    assert travelled.cell_id == "t" and travelled.row["latency_batches_s"] == [0.5, 0.25]
    assert travelled.record().equals(cell_batch(row))
    assert travelled.samples().equals(samples)
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    store.write_cell(travelled.record(), travelled.samples())
    assert store.read_cells({"t"}).column("latency_batches_s").to_pylist() == [[0.5, 0.25]]
    assert store.read_samples({"t"}).column("prediction").to_pylist() == ["p0", "p1", "p2"]


def test_a_cell_file_that_cannot_be_written_takes_its_samples_with_it(tmp_path):
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    written = store.write_table

    def fail_on_cells(relative, table, **options):
        if relative.startswith("cells/"):
            raise OSError("No space left on device")
        written(relative, table, **options)

    store.write_table = fail_on_cells
    with pytest.raises(OSError, match="No space"):
        store.write_cell(record("s"), sample_table([{"cell_id": "s", "sample_id": "0", "prediction": "x"}]))
    assert list((tmp_path / "samples").iterdir()) == []  # no samples without their cell
    assert store.done_cells() == {}


def test_a_rerun_runs_new_skipped_and_retryable_cells_and_keeps_the_rest():
    from fuyu_ray.job.cells import Cell
    from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride
    from fuyu_ray.storage.store import cells_to_run

    cells = [
        Cell("tiny", "random", 1, Point("cpu", "textvqa", b, 224, 200, "fp32"), DatasetSource(), TaskOverride())
        for b in range(1, 7)
    ]
    done = dict(zip([c.cell_id for c in cells], ["ok", "skipped", "failed", "oom", "timeout"]))  # the sixth is new

    def batches(run):
        return [c.point.batch_size for c in run]

    assert batches(cells_to_run(cells, done, force=False, retry_failed=True)) == [2, 3, 4, 5, 6]
    assert batches(cells_to_run(cells, done, force=False, retry_failed=False)) == [2, 6]
    assert batches(cells_to_run(cells, done, force=True, retry_failed=False)) == [1, 2, 3, 4, 5, 6]
