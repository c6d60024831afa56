"""Storage: atomic cell files, half-written files never read back, local paths and file:// URIs."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fuyu_ray.records import cell_batch, outcome_row, sample_table
from fuyu_ray.store import TEMP_MARK, ResultStore


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
