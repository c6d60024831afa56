"""An --out that fills up, or turns read-only, mid-run: one line, no traceback, nothing half-written,
and a rerun after space is freed finishes the rest. The disk is a real 90 KB tmpfs."""

from __future__ import annotations

import subprocess

import pyarrow.parquet as pq
import pytest
from conftest import run_grid, write_job

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=90k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount(mount_point, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)


def assert_nothing_half_written(out) -> None:
    cells = {p.stem for p in (out / "cells").glob("*.parquet")}
    samples = {p.stem for p in (out / "samples").glob("*.parquet")}
    assert samples <= cells, f"samples without their cell: {samples - cells}"
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    for path in (out / "cells").glob("*.parquet"):
        assert pq.read_table(path).num_rows == 1  # every kept file reads back whole


def one_error_line(result) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("fuyu_ray:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_a_full_disk_is_one_line_keeps_finished_cells_and_a_rerun_finishes(tiny_disk, tmp_path):
    job = write_job(
        tmp_path,
        "full",
        "standin:sleep=0.05",
        "  batch: {batch_size: [1, 2, 3, 4, 5, 6]}\n",
        "weights: random\nlimit: 1\n",
    )
    out = tiny_disk / "out"
    result = run_grid("--job", str(job), "--out", str(out))
    assert result.returncode == 1
    line = one_error_line(result)
    assert str(out) in line and "No space left on device" in line and "rerun" in line
    kept = len(list((out / "cells").glob("*.parquet")))
    assert 0 < kept < 6
    assert_nothing_half_written(out)

    remount(tiny_disk, "size=4m")
    rerun = run_grid("--job", str(job), "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"6 cells, {6 - kept} to run" in rerun.stdout
    assert pq.read_table(out / "cells.parquet").column("status").to_pylist() == ["ok"] * 6


def test_an_out_that_turns_read_only_is_one_line_and_loses_nothing(tiny_disk, tmp_path):
    remount(tiny_disk, "size=4m")
    job = write_job(
        tmp_path, "readonly", "standin:sleep=0.05", "  batch: {batch_size: [1, 2]}\n", "weights: random\nlimit: 1\n"
    )
    out = tiny_disk / "out"
    assert run_grid("--job", str(job), "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.parquet")}

    remount(tiny_disk, "ro")
    result = run_grid("--job", str(job), "--out", str(out), "--force")
    assert result.returncode == 1
    line = one_error_line(result)
    assert str(out) in line and "Read-only file system" in line
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.parquet")} == before
